"""The admin UI: server-rendered pages (Jinja2) under ``/ui`` of the REST app.

``AdminUi`` is a Litestar plugin: it adds the ``/ui`` router (sessions, guards,
HTML error pages, security headers, all kept out of the OpenAPI schema), the
static files, the template engine and ``/`` -> ``/ui``. The ``/v1`` API, its
Bearer keys and its JSON errors are untouched.

    pages.py     GET pages: read one view, render it
    actions.py   POST forms: check, call one use case, redirect or re-render
    views.py     what each page shows, read from the registry
    sessions.py  login sessions, roles, CSRF
    render.py    page rendering and error pages
    weight_chart.py  per-layer weight norms as an SVG bar chart
    space_map.py     the adapter-space map: PCA of descriptions and of weights, as SVG
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from litestar import Router, get
from litestar.config.app import AppConfig
from litestar.datastructures import ResponseHeader
from litestar.exceptions import HTTPException
from litestar.plugins import InitPlugin
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from api.dto import job_timing, live_text
from api.ui.actions import ACTIONS
from api.ui.pages import PAGES
from api.ui.render import SECURITY_HEADERS, http_error, project_error_handler, unexpected
from api.ui.sessions import (
    check_csrf,
    require_viewer,
    session_middleware,
    session_secret,
)
from registry.errors import LoramintError
from registry.settings import Settings

HERE = Path(__file__).parent


@get("/", include_in_schema=False, sync_to_thread=False)
def root() -> Redirect:
    return Redirect("/ui", status_code=303)


def _filters(engine: JinjaTemplateEngine) -> None:
    """Template filters: ``job | timing`` (elapsed and time left, in words)."""
    engine.engine.filters["timing"] = lambda job: job_timing(job)[2]
    engine.engine.filters["live_text"] = live_text


class AdminUi(InitPlugin):
    """Mounts the admin UI; ``status_for`` maps project errors to the API's HTTP codes."""

    def __init__(self, settings: Settings, status_for: Callable[[LoramintError], int]) -> None:
        self.settings = settings.ui
        self.secret = session_secret(settings.home, settings.ui)  # fails now, not at a login
        self.status_for = status_for

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        router = Router(
            path="/ui",
            route_handlers=[*PAGES, *ACTIONS],
            guards=[require_viewer, check_csrf],
            middleware=[session_middleware(self.secret, self.settings)],
            exception_handlers={
                HTTPException: http_error,
                LoramintError: project_error_handler(self.status_for),
                Exception: unexpected,
            },
            response_headers=[ResponseHeader(name=k, value=v) for k, v in SECURITY_HEADERS.items()],
            include_in_schema=False,
        )
        static = create_static_files_router(
            path="/ui/static", directories=[HERE / "static"], include_in_schema=False
        )
        app_config.route_handlers.extend([router, static, root])
        app_config.template_config = TemplateConfig(
            directory=HERE / "templates",
            engine=JinjaTemplateEngine,
            engine_callback=_filters,
        )
        app_config.state.update({"ui_status_for": self.status_for})
        return app_config


__all__ = ["AdminUi"]
