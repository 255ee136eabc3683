"""Admin UI sessions: login with an API key, who is looking, CSRF.

A browser logs in once with an API key; the key's id (never its secret) goes
into a session cookie that Litestar's cookie backend encrypts and
authenticates (AES-GCM) with the session secret, so the server keeps no
state for a live session and any replica that shares the secret accepts it. The cookie is
HttpOnly and SameSite=Lax. Every request re-checks the key behind the session
(one primary-key read), so revoking a key ends its sessions at once; logging
out records the session's id until the cookie expires, so a copied cookie of a
logged-out session logs nobody in.

Every state-changing UI request must carry the session's CSRF token as the
form field ``csrf_token``. The token is random per session and rotated at
login; it is compared in constant time. We check it in a guard on the UI
router instead of Litestar's app-wide ``CSRFConfig``: that one is a
double-submit cookie not bound to the session, and it would also have to be
kept off the Bearer-authenticated JSON API (``/v1``, ``/health``...), which
this way it never touches.

Settings (``registry.settings.UiSettings``, read once at start-up):

- ``LORAMINT_SESSION_SECRET``: the cookies' secret, 32+ characters; give every
  replica the same one. Unset: 32 random bytes are made once and kept in
  ``$LORAMINT_HOME/session_secret`` (mode 0600).
- ``LORAMINT_UI_SECURE_COOKIE=1``: cookies travel only over HTTPS (set it
  behind a TLS proxy); default 0, for plain http on loopback.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio.to_thread
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import DefineMiddleware
from litestar.middleware.session import SessionMiddleware
from litestar.middleware.session.client_side import ClientSideSessionBackend, CookieBackendConfig
from litestar.types import ASGIApp

from api.auth import ROLES, Principal
from registry.errors import InvalidInput, KeyNotFound
from registry.service import Registry
from registry.settings import UiSettings

SECRET_FILE = "session_secret"
SESSION_SECONDS = 12 * 3600  # a login lasts at most this long, however active
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

NOT_LOGGED_IN = "You are not logged in, or your session has expired. Log in and try again."
CSRF_FAILED = (
    "This form has expired or did not come from this site, so nothing was changed. "
    "Reload the page and submit it again."
)


def session_secret(home: Path, settings: UiSettings) -> bytes:
    """The 32-byte session key: from the configured secret, else from ``home``'s secret
    file, created (0600) on first use."""
    if settings.session_secret is not None:
        return hashlib.sha256(settings.session_secret.encode()).digest()
    path = home / SECRET_FILE
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        tmp = home / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)  # atomic, and never replaces a secret another process made
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise InvalidInput(f"{path} is readable by other users; run `chmod 600 {path}`")
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise InvalidInput(f"{path} must hold 64 hex characters; delete it to make a new one")
    return key


def session_middleware(secret: bytes, settings: UiSettings) -> DefineMiddleware:
    """Litestar's encrypted cookie sessions, for the UI router only. Litestar deep-copies a
    router's middleware and a live cipher cannot be copied, so the backend (and its
    cipher) is made when the middleware stack is built, from the plain config."""
    config = CookieBackendConfig(
        secret=secret,
        key="loramint_session",
        path="/ui",
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="lax",
        secure=settings.secure_cookie,
    )
    return DefineMiddleware(_cookie_sessions, config=config)


def _cookie_sessions(app: ASGIApp, config: CookieBackendConfig) -> ASGIApp:
    return SessionMiddleware(app=app, backend=ClientSideSessionBackend(config=config))


@dataclass(frozen=True)
class Viewer:
    """Who is looking at the UI: a logged-in key, or anonymous (role None)."""

    role: str | None
    name: str
    key_id: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def logged_in(self) -> bool:
        return self.key_id is not None

    def allows(self, needed: str) -> bool:
        return self.role is not None and ROLES[self.role] >= ROLES[needed]


ANONYMOUS = Viewer(None, "anonymous")


def csrf_token(request: Request[Any, Any, Any]) -> str:
    """The session's CSRF token, made (with an anonymous session) when there is none; ""
    outside the UI router (an error page for an address no route matches has no session)."""
    if "session" not in request.scope:
        return ""
    session = dict(request.session or {})
    token = session.get("csrf")
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        request.set_session({**session, "csrf": token})
    return token


def log_in(request: Request[Any, Any, Any], principal: Principal) -> None:
    """Start a fresh session for this key (a new id and CSRF token: nothing carries over)."""
    request.set_session(
        {
            "sid": secrets.token_urlsafe(24),
            "csrf": secrets.token_urlsafe(32),
            "key_id": principal.key_id,
            "login_at": time.time(),
        }
    )


async def log_out(request: Request[Any, Any, Any]) -> None:
    """End the session on the server too: a copy of the cookie no longer logs anyone in."""
    session = dict(request.session or {})
    sid, login_at = session.get("sid"), session.get("login_at")
    if isinstance(sid, str) and isinstance(login_at, (int, float)):
        until = datetime.fromtimestamp(login_at + SESSION_SECONDS, UTC)
        reg: Registry = request.app.state.registry
        await anyio.to_thread.run_sync(reg.end_session, sid, until)
    request.clear_session()


async def authenticate_key(request: Request[Any, Any, Any], secret: str) -> Principal | None:
    """The live key whose secret this is (the registry's own check), or None."""
    reg: Registry = request.app.state.registry
    record = await anyio.to_thread.run_sync(reg.authenticate, secret.strip())
    return None if record is None else Principal(record.role, record.id, record.name)


async def current_viewer(connection: ASGIConnection[Any, Any, Any, Any]) -> Viewer:
    """The session's key if it is still live and the session not too old, else anonymous."""
    session = connection.scope.get("session")
    if not isinstance(session, dict):
        return ANONYMOUS
    key_id, login_at, sid = session.get("key_id"), session.get("login_at"), session.get("sid")
    if not isinstance(key_id, int) or not isinstance(login_at, (int, float)):
        return ANONYMOUS
    if not isinstance(sid, str) or not 0 <= time.time() - login_at < SESSION_SECONDS:
        return ANONYMOUS
    # read on every request (two primary-key reads): a revoked key's sessions, and a
    # logged-out session's copied cookies, end at once
    principal = await anyio.to_thread.run_sync(
        _live_session, connection.app.state.registry, key_id, sid
    )
    if principal is None or principal.role is None:
        return ANONYMOUS
    return Viewer(principal.role, principal.name, principal.key_id)


def _live_session(reg: Registry, key_id: int, sid: str) -> Principal | None:
    try:
        record = reg.get_api_key(key_id)
    except KeyNotFound:
        return None
    if record.revoked_at is not None or reg.session_ended(sid):
        return None
    return Principal(record.role, record.id, record.name)


async def require_viewer(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """UI guard: resolve the viewer; enforce the handler's ``ui_role`` (``reader``/``admin``).

    In open mode (``LORAMINT_API_OPEN=1``, the API's no-key local use) anonymous visitors
    may see the read-only pages, as they may read the API without a key; every write
    control still needs a logged-in admin key, as the API's changes do. Generating is a
    write here (it registers an adapter), though the API lets reader keys generate: the
    UI's reader role is read-only.
    """
    viewer = await current_viewer(connection)
    connection.scope["state"]["viewer"] = viewer
    needed = handler.opt.get("ui_role")
    if needed is None:
        return
    if viewer.role is None:
        if needed == "reader" and connection.app.state.api_settings.open_access:
            return
        raise NotAuthorizedException(NOT_LOGGED_IN)
    if not viewer.allows(needed):
        raise PermissionDeniedException(
            f"This needs an {needed} key; you are logged in with a {viewer.role} key."
        )


async def check_csrf(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """UI guard: a state-changing request must carry its session's CSRF token."""
    if connection.scope.get("method", "GET") in SAFE_METHODS:
        return
    session = connection.scope.get("session")
    expected = session.get("csrf") if isinstance(session, dict) else None
    request = (
        connection
        if isinstance(connection, Request)
        else Request(connection.scope, connection.receive)
    )
    sent = (await request.form()).get(CSRF_FIELD)
    if (
        not isinstance(expected, str)
        or not isinstance(sent, str)
        or not hmac.compare_digest(sent.encode(), expected.encode())
    ):
        raise PermissionDeniedException(CSRF_FAILED)


def viewer_of(request: Request[Any, Any, Any]) -> Viewer:
    viewer = request.scope["state"].get("viewer")
    return viewer if isinstance(viewer, Viewer) else ANONYMOUS
