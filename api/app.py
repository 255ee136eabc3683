"""The Litestar application: REST routes, errors, auth, metrics and logs.

``create_app()`` starts on the embedded default (SQLite under
``LORAMINT_HOME``) with no configuration. Every project error maps to one 4xx
JSON body ``{"status_code", "detail"}``; anything else is a 500 whose detail
names the request id to find in the logs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, cast

import msgspec
from litestar import Litestar, MediaType, Request, Response, get
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    Components,
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Parameter,
    Schema,
    SecurityScheme,
)
from litestar.types import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from api.auth import KeyCache, TokenBuckets, guard
from api.batcher import GenerationBatcher
from api.dto import (
    DESCRIPTION_PATTERN,
    GenerateIn,
    Health,
    Ready,
    TrainGeneratorIn,
    TransferIn,
)
from api.middleware import AllowHeader, CanonicalIds
from api.routes import ROUTES
from api.routes_jobs import JOB_ROUTES
from api.routes_transfers import TRANSFER_ROUTES
from api.ui import AdminUi
from api.ui.render import http_error as ui_http_error
from registry.errors import (
    Conflict,
    CorruptBlob,
    InvalidInput,
    LoramintError,
    NotFound,
    RegistryNotReady,
    TooLarge,
)
from registry.service import Registry
from registry.settings import ApiSettings, Settings, apply_offline_environment

log = logging.getLogger("loramint.api")
_PROCESS_IDS: dict[int, str] = {}


def process_id() -> str:
    """A random id of this server process (a forked child gets its own): /health says
    which process answered, which tells the processes of ``serve --workers`` apart."""
    return _PROCESS_IDS.setdefault(os.getpid(), uuid.uuid4().hex[:12])


def _version() -> str:
    try:
        return version("loramint")
    except PackageNotFoundError:
        return "0.0.0"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "loramint_http_request_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.generation = Histogram(
            "loramint_generation_seconds",
            "Decode + register time of one generation batch",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "loramint_generation_batch_size",
            "Requests decoded together",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "loramint_generation_queue_depth", "Generation requests waiting", registry=self.registry
        )
        self.errors = Counter(
            "loramint_http_errors_total", "Error responses", ["status"], registry=self.registry
        )
        self.cache = Gauge(
            "loramint_recipe_cache",
            "Rebuilt recipe weights in memory: bytes, items, hits and misses since start",
            ["what"],
            registry=self.registry,
        )


# the project's errors as HTTP statuses, most specific first (registry/errors.py)
STATUS_OF: tuple[tuple[type[LoramintError], int], ...] = (
    (TooLarge, 413),
    (InvalidInput, 400),
    (NotFound, 404),
    (Conflict, 409),
    (RegistryNotReady, 503),
    (CorruptBlob, 500),
)


def _status_for(exc: LoramintError) -> int:
    return next((code for kind, code in STATUS_OF if isinstance(exc, kind)), 400)


def _project_error(request: Request[Any, Any, Any], exc: LoramintError) -> Response[Any]:
    status = _status_for(exc)
    return Response({"status_code": status, "detail": str(exc)}, status_code=status)


# what the body's regular expressions mean, for the error a person reads
PATTERN_MEANINGS = {
    DESCRIPTION_PATTERN: "text: not blank, and no control character other than whitespace",
}


def _readable(message: str) -> str:
    """A validation message with any regular expression it quotes said in words."""
    for pattern, meaning in PATTERN_MEANINGS.items():
        message = message.replace(f"`str` matching regex {pattern!r}", meaning)
    return message


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if request.url.path == "/ui" or request.url.path.startswith("/ui/"):
        # a /ui address no route matches never reaches the UI router's own handler:
        # a person still gets the styled page, not JSON
        return ui_http_error(request, exc)
    body: dict[str, Any] = {"status_code": exc.status_code, "detail": exc.detail}
    extra = getattr(exc, "extra", None)
    if isinstance(exc, ValidationException) and isinstance(extra, list):
        # name the fields in the one line clients show, not only in ``extra``
        named = [
            f"{e['key']}: {_readable(str(e.get('message', 'invalid')))}"
            for e in extra
            if isinstance(e, dict) and e.get("key")
        ]
        if named:
            body["detail"] = f"{exc.detail}: " + "; ".join(named)
    if extra:
        body["extra"] = extra
    return Response(body, status_code=exc.status_code, headers=exc.headers)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    rid = request.scope.get("state", {}).get("request_id", "?")
    log.exception("unhandled error", extra={"request_id": rid})
    return Response(
        {"status_code": 500, "detail": f"internal error (request id {rid})"}, status_code=500
    )


class RequestLog:
    """ASGI middleware: request id header, one structured log line, latency metrics."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        method = str(scope.get("method", ""))
        rid = dict(scope["headers"]).get(b"x-request-id", b"").decode()[:64] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        status = {"code": 500}
        t0 = time.perf_counter()

        async def send_wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapped)
        finally:
            seconds = time.perf_counter() - t0
            route = scope.get("path_template") or scope.get("path", "")
            metrics: Metrics = scope["app"].state.metrics
            metrics.requests.labels(method, route, str(status["code"])).observe(seconds)
            if status["code"] >= 400:
                metrics.errors.labels(str(status["code"])).inc()
            log.info(
                "request",
                extra={
                    "request_id": rid,
                    "method": method,
                    "path": scope.get("path"),
                    "status": status["code"],
                    "ms": round(seconds * 1000, 2),
                },
            )


class JsonFormatter(logging.Formatter):
    FIELDS = ("request_id", "method", "path", "status", "ms", "job_id")

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update({f: getattr(record, f) for f in self.FIELDS if hasattr(record, f)})
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("loramint")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


# the ops routes answer without a key: the OpenAPI says so (an empty requirement)
OPEN: list[dict[str, list[str]]] = [{}]


@get("/health", tags=["ops"], sync_to_thread=False, security=OPEN)
def health() -> Health:
    """Liveness: the process answers (``process``: which one, under ``serve --workers``)."""
    return Health("ok", _version(), process_id())


@get(
    "/ready",
    tags=["ops"],
    sync_to_thread=True,
    security=OPEN,
    responses={503: ResponseSpec(Ready, description="The database does not answer")},
)
def ready(state: State) -> Response[Ready]:
    """Readiness: the database answers; says which auth mode and generators are live."""
    reg: Registry = state.registry
    try:
        adapters = reg.count_adapters()
        gens: dict[str, list[str]] = {}
        for g in reg.list_generators(limit=500):
            gens.setdefault(g.base_model, [])
            if g.method not in gens[g.base_model]:
                gens[g.base_model].append(g.method)
    except Exception as exc:  # not ready: say why, with 503
        log.warning("not ready: %s", exc)
        return Response(
            Ready("unavailable", f"error: {type(exc).__name__}", "", 0, {}), status_code=503
        )
    # the backend's kind only: anonymous callers learn no path, host or user
    db = reg.engine.dialect.name
    return Response(Ready("ready", db, state.api_settings.auth_mode, adapters, gens))


@get("/metrics", tags=["ops"], sync_to_thread=False, media_type=MediaType.TEXT, security=OPEN)
def metrics(state: State) -> Response[bytes]:
    """Prometheus metrics."""
    m: Metrics = state.metrics
    m.queue_depth.set(state.batcher.queue_depth)
    reg: Registry = state.registry
    for what, value in reg.cache.describe().items():
        m.cache.labels(what).set(value)
    return Response(generate_latest(m.registry), media_type="text/plain; version=0.0.4")


def create_app(
    registry: Registry | None = None,
    api_settings: ApiSettings | None = None,
    *,
    batching: bool | None = None,
    worker: bool = False,
    cpus: int | None = None,
    warm: bool = False,
) -> Litestar:
    """The app; with ``worker`` it also runs jobs in a background thread. Settings: the
    registry's (``registry.settings``), ``api_settings`` standing in for its API part.
    ``cpus``: the CPUs this process generates on, one batch worker each unless
    ``LORAMINT_BATCH_WORKERS`` says (default: all of them; ``loramint serve --workers N``
    gives each process its share). ``warm``: load the
    serving generators before the first request (``GenerationBatcher.warm``), at start-up."""
    reg = registry or Registry()
    settings = api_settings or reg.settings.api
    from generator.tasks.device import resolve_device

    resolve_device(reg.settings.device)  # LORAMINT_DEVICE names a GPU this machine has
    metrics_ = Metrics()
    use_batching = settings.batch_window > 0 if batching is None else batching

    def on_batch(size: int, seconds: float) -> None:
        metrics_.batch_size.observe(size)
        metrics_.generation.observe(seconds)

    cpus = cpus or process_cpus(1)
    batcher = GenerationBatcher(
        reg,
        window=settings.batch_window,
        max_batch=settings.batch_max,
        batching=use_batching,
        on_batch=on_batch,
        threads=settings.batch_threads,
        workers=settings.generation_workers(cpus),
    )

    background: dict[str, Any] = {}

    def startup() -> None:
        log.info("auth mode: %s", settings.auth_mode)
        settled = reg.recover_blobs()  # what killed writes and deletes left behind
        if any(settled.values()):
            log.info("blob store recovered: %s", settled)
        if warm:  # before this process takes connections: none waits for the loading
            t0 = time.perf_counter()
            try:
                warmed = batcher.warm()
            except Exception:  # a request that needs it names the problem
                log.exception("warming the generators failed")
            else:
                log.info(
                    "warm in %.1f s: %s", time.perf_counter() - t0, ", ".join(warmed) or "nothing"
                )
        if worker:
            from api.worker import start_background_worker

            background["thread"], background["stop"] = start_background_worker(reg)

    async def shutdown() -> None:
        if "stop" in background:
            background["stop"].set()
        await batcher.close()

    app = Litestar(
        route_handlers=[*ROUTES, *JOB_ROUTES, *TRANSFER_ROUTES, health, ready, metrics],
        guards=[guard],
        middleware=[RequestLog, CanonicalIds, AllowHeader],
        exception_handlers={
            LoramintError: _project_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
        request_max_body_size=reg.settings.max_adapter_bytes + 2**20,
        state=State(
            {
                "registry": reg,
                "api_settings": settings,
                "batcher": batcher,
                "metrics": metrics_,
                "key_cache": KeyCache(),
                "buckets": TokenBuckets(settings.rate, settings.burst),
            }
        ),
        openapi_config=OpenAPIConfig(
            title="loramint",
            version=_version(),
            description=(
                "Generate LoRA adapters from task descriptions; manage the adapter registry. "
                "Send `Authorization: Bearer <key>`."
            ),
            components=Components(
                security_schemes={"BearerToken": SecurityScheme(type="http", scheme="bearer")}
            ),
            security=[{"BearerToken": []}],
        ),
        on_startup=[startup],
        on_shutdown=[shutdown],
        # the admin UI (/ui): its own sessions, CSRF and HTML errors; /v1 is untouched
        plugins=[AdminUi(reg.settings, _status_for)],
    )
    _finish_openapi(app, settings)
    return app


def _finish_openapi(app: Litestar, settings: ApiSettings) -> None:
    """What the OpenAPI document must say and Litestar's generator does not: the download
    route's four media types (``file=zip|safetensors|config|card``), this server's limit on
    ``k``, and the bounds of optional numbers in the request bodies (Litestar drops an
    ``exclusiveMinimum`` under ``oneOf``; msgspec's own schema keeps it). Done before the
    document is first served (it is rendered once, from this object)."""
    doc = app.openapi_schema
    paths = doc.paths or {}
    download = paths["/v1/adapters/{adapter_id}/download"].get
    listing = paths["/v1/adapters"].get
    if download is None or listing is None or doc.components.schemas is None:
        raise RuntimeError("the OpenAPI document lacks the adapter routes")
    ok = (download.responses or {})["200"]
    if isinstance(ok, OpenAPIResponse):
        ok.content = (ok.content or {}) | {
            "application/octet-stream": OpenAPIMediaType(
                schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
            ),
            "application/json": OpenAPIMediaType(schema=Schema(type=OpenAPIType.OBJECT)),
            "text/markdown": OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING)),
        }
    for param in listing.parameters or []:
        if isinstance(param, Parameter) and param.name == "k" and isinstance(param.schema, Schema):
            param.schema.maximum = settings.max_k
    for struct in (GenerateIn, TrainGeneratorIn, TransferIn):
        component = doc.components.schemas[struct.__name__]
        exact = msgspec.json.schema(struct)["$defs"][struct.__name__]["properties"]
        for name, prop in exact.items():
            if component.properties is not None and "$ref" not in json.dumps(prop):
                component.properties[name] = cast(Schema, prop)  # rendered as it is


@dataclass(frozen=True)
class ServeOptions:
    """What ``loramint serve`` hands each HTTP worker process: the settings it read
    once at start-up, whether to run jobs too, and the log level."""

    settings: Settings
    worker: bool = True
    log_level: str = "INFO"
    processes: int = 1  # HTTP worker processes: each one's batches share its part of the CPUs


def serve_app(options: ServeOptions) -> Litestar:
    """The ASGI app factory ``loramint serve`` gives uvicorn (with ``options`` bound)."""
    configure_logging(options.log_level)
    apply_offline_environment(options.settings)
    cpus = process_cpus(options.processes)
    return create_app(Registry(options.settings), worker=options.worker, cpus=cpus, warm=True)


def process_cpus(processes: int, cpus: int | None = None) -> int:
    """The CPUs each of ``processes`` server processes generates on: its share of
    ``cpus`` (default: this machine's), at least one."""
    return max(1, (cpus or os.cpu_count() or 1) // processes)
