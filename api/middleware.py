"""ASGI middleware of the REST app that routing alone does not give: one spelling per
resource id, and an ``OPTIONS`` answer that lists every method of a path."""

from __future__ import annotations

import json
import re

from litestar.enums import ScopeType
from litestar.routes import HTTPRoute
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Receive,
    Scope,
    Send,
)

CANONICAL_ID = re.compile(r"0|[1-9][0-9]*")


def _odd_number(segment: str) -> bool:
    """A path segment that Python reads as an integer but is not written as one: ``+1``,
    ``01``, ``1_0``, `` 1``, full-width digits. Each would otherwise name id 1."""
    try:
        int(segment)
    except ValueError:
        return False
    return CANONICAL_ID.fullmatch(segment) is None


class CanonicalIds:
    """ASGI middleware: one spelling per resource. A path with an id in any other spelling
    is a 404, as an unknown path is (``/v1/adapters/+1`` is not adapter 1)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == ScopeType.HTTP else ""
        if any(_odd_number(seg) for seg in str(path).split("/")):
            body = json.dumps({"status_code": 404, "detail": "Not Found"}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ]
            start: HTTPResponseStartEvent = {
                "type": "http.response.start",
                "status": 404,
                "headers": headers,
            }
            end: HTTPResponseBodyEvent = {
                "type": "http.response.body",
                "body": body,
                "more_body": False,
            }
            await send(start)
            await send(end)
            return
        await self.app(scope, receive, send)


def _untyped(path: str) -> str:
    """``/v1/jobs/{job_id:int}`` as the router's template writes it: ``/v1/jobs/{job_id}``."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


class AllowHeader:
    """ASGI middleware: ``OPTIONS`` lists every method of the path. Litestar 2.25 answers
    it from the first handler registered on a path only (``/v1/adapters`` said ``GET,
    OPTIONS`` and left out ``POST``), so the answer is made here from the app's routes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope.get("method") != "OPTIONS":
            await self.app(scope, receive, send)
            return
        template = _untyped(str(scope.get("path_template", "")))
        routes = scope["app"].routes
        methods: set[str] = set().union(
            *(
                r.methods
                for r in routes
                if isinstance(r, HTTPRoute) and _untyped(r.path) == template
            )
        )
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": 204,
            "headers": [(b"allow", ", ".join(sorted(methods | {"OPTIONS"})).encode())],
        }
        end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(start)
        await send(end)
