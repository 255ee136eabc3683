"""Rendering admin UI pages, and every error as a readable page (never JSON, never a 500
with a traceback): 401 on a page sends the browser to the login form."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.response import Redirect, Template

from api.ui.sessions import SAFE_METHODS, csrf_token, viewer_of
from registry.errors import LoramintError

log = logging.getLogger("loramint.ui")

# The UI loads nothing from elsewhere and runs only its own script file.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

STATUS_TITLES = {
    400: "That input was not accepted",
    401: "Please log in",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed here",
    409: "Conflict",
    413: "Too large",
    429: "Too many requests",
    500: "Something went wrong",
    503: "Not ready",
}


def flash(request: Request[Any, Any, Any], message: str) -> None:
    """A message for the next page this session sees (after a redirect)."""
    csrf_token(request)  # the session must exist to carry it
    request.set_session({**request.session, "flash": message})


def page(
    request: Request[Any, Any, Any],
    template: str,
    *,
    status: int = 200,
    **context: Any,
) -> Template:
    """A full page with what every page shows: who is logged in, the CSRF token, a flash."""
    token = csrf_token(request)
    session = dict(request.session) if "session" in request.scope else {}
    message = session.pop("flash", None)
    if message is not None:
        request.set_session(session)
    return Template(
        template_name=template,
        context={
            "viewer": viewer_of(request),
            "csrf": token,
            "flash": message,
            "open_access": request.app.state.api_settings.open_access,
            "path": request.url.path,
            "upload_limit": upload_limit(request.app.state.registry.settings.max_adapter_bytes),
            **context,
        },
        status_code=status,
    )


def upload_limit(max_bytes: int) -> str:
    return f"{max_bytes / 2**20:g} MB" if max_bytes >= 2**20 else f"{max_bytes:,} bytes"


def error_page(request: Request[Any, Any, Any], status: int, message: str) -> Template:
    """The UI's error page; an exception's response skips the router's headers, so the
    security headers are set here."""
    template = page(
        request,
        "error.html",
        status=status,
        title=STATUS_TITLES.get(status, f"Error {status}"),
        message=message,
        status_code=status,
    )
    template.headers.update(SECURITY_HEADERS)
    return template


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if exc.status_code == 401 and request.method in SAFE_METHODS:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return Redirect(f"/ui/login?next={quote(target, safe='')}", status_code=303)
    return error_page(request, exc.status_code, readable(request, exc))


def readable(request: Request[Any, Any, Any], exc: HTTPException) -> str:
    """An HTTP error's detail as a sentence for a person."""
    if exc.status_code == 413:
        limit = upload_limit(request.app.state.registry.settings.max_adapter_bytes)
        return f"The upload is larger than the {limit} limit, so nothing was stored."
    if exc.status_code == 404 and str(exc.detail).lower() == "not found":
        return "There is no page at this address."
    extra = getattr(exc, "extra", None)
    if isinstance(extra, list) and extra:
        parts = [
            f"{e.get('key', 'input')}: {e.get('message', '')}" for e in extra if isinstance(e, dict)
        ]
        return "This address has bad input: " + "; ".join(parts)
    return str(exc.detail)


def project_error_handler(
    status_for: Callable[[LoramintError], int],
) -> Callable[[Request[Any, Any, Any], LoramintError], Response[Any]]:
    """An error the registry raised on a page (an unknown adapter id, say) as a page with the
    REST API's status code for it."""

    def handle(request: Request[Any, Any, Any], exc: LoramintError) -> Response[Any]:
        return error_page(request, status_for(exc), str(exc))

    return handle


def unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    rid = request.scope.get("state", {}).get("request_id", "?")
    log.exception("unhandled error in the admin UI", extra={"request_id": rid})
    return error_page(
        request, 500, f"An internal error happened (request id {rid}); the logs have the details."
    )
