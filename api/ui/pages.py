"""Admin UI pages (GET): read one view from the registry, render it."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.params import FromQuery, PathParameter, QueryParameter
from litestar.response import Redirect, Template

from api.dto import JobOut
from api.handlers import AnyId
from api.ui import space_map, views
from api.ui.compare import compare_view
from api.ui.heldout_view import heldout_reports
from api.ui.render import page
from api.ui.sessions import viewer_of
from generator.hypernet.methods import METHODS
from registry.errors import LoramintError
from registry.service import Registry

READER = {"ui_role": "reader"}
ADMIN = {"ui_role": "admin"}


def _reg(state: State) -> Registry:
    reg: Registry = state.registry
    return reg


def safe_next(raw: object) -> str:
    """Where to go after logging in: a UI path on this site, nothing else."""
    if (
        isinstance(raw, str)
        and raw.startswith("/ui")
        and "\\" not in raw
        and all(c.isprintable() and not c.isspace() for c in raw)
    ):
        return raw
    return "/ui"


@get("/login", sync_to_thread=False)
def login_page(
    request: Request[Any, Any, Any],
    next_: Annotated[str | None, QueryParameter(name="next")] = None,
) -> Template | Redirect:
    if viewer_of(request).logged_in:
        return Redirect(safe_next(next_), status_code=303)
    return page(request, "login.html", nav="login", next=safe_next(next_))


@get("/", opt=READER, sync_to_thread=True)
def dashboard(request: Request[Any, Any, Any], state: State) -> Template:
    return page(request, "dashboard.html", nav="dashboard", dash=views.dashboard(_reg(state)))


@get("/adapters", opt=READER, sync_to_thread=True)
def adapters(
    request: Request[Any, Any, Any],
    state: State,
    q: FromQuery[str] = "",
    base_model: FromQuery[str] = "",
    provenance: FromQuery[str] = "",
    k: FromQuery[str] = "10",
    offset: FromQuery[str] = "0",
    sort: FromQuery[str] = "id",
    order: FromQuery[str] = "asc",
) -> Template:
    query = views.AdapterQuery(q, base_model, provenance, k, offset, sort, order)
    reg = _reg(state)
    try:
        listing = views.adapter_list(reg, query, max_k=state.api_settings.max_k)
    except LoramintError as exc:
        names = [b.name for b in reg.list_base_models()]
        empty = views.AdapterList([], None, 0, None, None, names)
        status = state.ui_status_for(exc)
        return page(
            request, "adapters.html", status=status, nav="adapters", query=query,
            listing=empty, error=str(exc),
        )  # fmt: skip
    return page(request, "adapters.html", nav="adapters", query=query, listing=listing)


@get("/compare", opt=READER, sync_to_thread=True)
def compare(
    request: Request[Any, Any, Any],
    state: State,
    ids: FromQuery[list[str] | None] = None,
    task: FromQuery[str] = "",
) -> Template:
    """Two or more adapters side by side, and their accuracy on one task."""
    try:
        view = compare_view(_reg(state), ids or [], task)
    except LoramintError as exc:
        return page(
            request, "compare.html", status=state.ui_status_for(exc), nav="adapters",
            view=None, error=str(exc),
        )  # fmt: skip
    return page(request, "compare.html", nav="adapters", view=view)


@get("/adapters/{adapter_id:int}", opt=READER, sync_to_thread=True)
def adapter_detail(request: Request[Any, Any, Any], state: State, adapter_id: AnyId) -> Template:
    view = views.adapter_page(_reg(state), adapter_id)
    return page(request, "adapter.html", nav="adapters", view=view)


@get("/adapters/{adapter_id:int}/download", opt=READER, sync_to_thread=True)
def download(state: State, adapter_id: AnyId) -> Response[bytes]:
    """The PEFT zip, as ``GET /v1/adapters/{id}/download`` serves it, for a logged-in browser."""
    reg = _reg(state)
    rec = reg.get_adapter(adapter_id)
    return Response(
        reg.adapter_zip(adapter_id),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{rec.name}.zip"'},
    )


@get("/upload", opt=ADMIN, sync_to_thread=True)
def upload_page(request: Request[Any, Any, Any], state: State) -> Template:
    return page(request, "upload.html", nav="upload", values={}, base_models=_names(state))


@get("/generate", opt=ADMIN, sync_to_thread=True)
def generate_page(request: Request[Any, Any, Any], state: State) -> Template:
    return page(
        request, "generate.html", nav="generate", values={}, base_models=_names(state),
        methods=METHODS,
    )  # fmt: skip


@get("/generators", opt=READER, sync_to_thread=True)
def generators(request: Request[Any, Any, Any], state: State) -> Template:
    reg = _reg(state)
    gens = reg.list_generators(limit=200)
    models = [b.name for b in reg.list_base_models()]
    return page(
        request, "generators.html", nav="generators", values={}, form=views.generator_form(),
        base_models=_names(state), generators=gens, roles=views.generator_roles(reg, gens),
        heldout=heldout_reports(reg.settings.results_dir, models),
    )  # fmt: skip


@get("/map", opt=READER, sync_to_thread=True)
def adapter_map(
    request: Request[Any, Any, Any], state: State, base_model: FromQuery[str] = ""
) -> Template:
    view = space_map.space_map(_reg(state), base_model)
    return page(request, "map.html", nav="map", view=view)


@get("/jobs", opt=READER, sync_to_thread=True)
def jobs(
    request: Request[Any, Any, Any],
    state: State,
    job_state: Annotated[str, QueryParameter(name="state")] = "",
    kind: FromQuery[str] = "",
) -> Template:
    try:
        listing = views.job_list(_reg(state), job_state, kind)
    except LoramintError as exc:
        return page(
            request, "jobs.html", status=state.ui_status_for(exc), nav="jobs",
            listing=views.JobList([], job_state, kind), error=str(exc),
        )  # fmt: skip
    return page(request, "jobs.html", nav="jobs", listing=listing)


@get("/jobs/{job_id:int}", opt=READER, sync_to_thread=True)
def job_detail(request: Request[Any, Any, Any], state: State, job_id: AnyId) -> Template:
    return page(request, "job.html", nav="jobs", job=_reg(state).get_job(job_id))


@get("/jobs/{job_id:int}/status", opt=READER, sync_to_thread=True)
def job_status(state: State, job_id: AnyId) -> JobOut:
    """The job as JSON for the page's live progress (``/v1/jobs/{id}`` wants a Bearer key)."""
    return JobOut.of(_reg(state).get_job(job_id))


@get(["/{rest:path}"], sync_to_thread=False, include_in_schema=False)
def no_page(rest: Annotated[str, PathParameter()]) -> None:
    """An address under /ui that no page's path starts like: the styled 404, with the
    session's navigation (the guards have run, so a logged-in visitor still sees who
    they are and can log out). An address that fails inside a page's path (a
    non-numeric id) is refused by the router before any guard, and shows the anonymous
    navigation."""
    raise NotFoundException("Not found")


def _names(state: State) -> list[str]:
    return views.base_model_names(_reg(state))


PAGES = [
    login_page,
    dashboard,
    adapters,
    compare,
    adapter_detail,
    download,
    upload_page,
    generate_page,
    generators,
    adapter_map,
    jobs,
    job_detail,
    job_status,
    no_page,
]
