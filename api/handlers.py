"""What every REST handler module shares: roles, id and offset bounds, the documented
error responses, the read/write route decorators and the registry in the app state."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import get
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import PathParameter

from api.dto import MAX_JSON_INT
from registry.service import Registry

READER = {"role": "reader"}
ADMIN = {"role": "admin"}
MAX_ID = MAX_JSON_INT  # larger ids are a 400, never an overflow
MAX_OFFSET = 2**31
AnyId = Annotated[int, PathParameter(ge=0, le=MAX_ID)]


class ErrorOut(msgspec.Struct):
    status_code: int
    detail: str


def _errors(*codes: int) -> dict[int, ResponseSpec]:
    text = {
        400: "Bad input (the detail names the problem); nothing was changed",
        401: "No key, or an invalid or revoked one",
        403: "The key's role may not do this",
        404: "Unknown adapter, base model, generator or job",
        409: "Conflicts with what is registered",
        413: "Request body or adapter over the size limit",
        429: "Rate limit or job queue full (see Retry-After)",
    }
    return {
        c: ResponseSpec(data_container=ErrorOut, description=text[c], generate_examples=False)
        for c in codes
    }


READ_ERRORS = _errors(400, 401, 403, 404, 413, 429)
WRITE_ERRORS = _errors(400, 401, 403, 404, 409, 413, 429)


def reads(path: str, tag: str, **kw: Any) -> HTTPRouteHandler:
    """A GET route any key may call (a reader's), run in a worker thread, with the read
    errors documented."""
    return get(path, opt=READER, responses=READ_ERRORS, sync_to_thread=True, tags=[tag], **kw)


def writes(verb: type[HTTPRouteHandler], path: str, tag: str, **kw: Any) -> HTTPRouteHandler:
    """A changing route (``verb``: Litestar's post, put or delete) only an admin key may
    call, with the write errors documented (a sync handler says ``sync_to_thread=True``)."""
    return verb(path, opt=ADMIN, responses=WRITE_ERRORS, tags=[tag], **kw)


def registry_of(state: State) -> Registry:
    reg: Registry = state.registry
    return reg
