"""``loramint serve``, ``loramint worker``, ``loramint keys`` and ``loramint jobs``."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

keys_app = typer.Typer(help="API keys for the REST API.", no_args_is_help=True)
jobs_app = typer.Typer(help="Offline jobs (generator training, transfers).", no_args_is_help=True)

out = Console(soft_wrap=True)
err = Console(stderr=True)


def serve_command(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(help="HTTP worker processes.")] = 1,
    worker: Annotated[
        bool, typer.Option("--worker/--no-worker", help="Also run jobs in this process.")
    ] = True,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Serve the REST API (and, by default, run jobs in a background thread)."""
    import functools

    import uvicorn

    from api.app import ServeOptions, serve_app
    from registry.errors import InvalidInput
    from registry.service import Registry
    from registry.settings import get_settings

    if not 0 < port < 65536:
        raise InvalidInput(f"port must be 1-65535, got {port}")
    if workers < 1:
        raise InvalidInput(f"workers must be at least 1, got {workers}")
    settings = get_settings()  # every setting read and checked once, before binding
    reg = Registry(settings)
    err.print(f"loramint on http://{host}:{port}  (database {reg.settings.database_url})")
    err.print(f"auth: {settings.api.auth_mode}")
    err.print(f"OpenAPI: http://{host}:{port}/schema  metrics: http://{host}:{port}/metrics")
    reg.close()
    # each HTTP worker process builds its app from these options (uvicorn pickles them
    # into the processes it spawns): nothing travels through the environment
    options = ServeOptions(settings, worker=worker, log_level=log_level.upper(), processes=workers)
    config = uvicorn.Config(
        functools.partial(serve_app, options),
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=False,  # the app logs each request (JSON, with its request id)
        # a worker process imports torch and the models' code before it answers the
        # supervisor's pings; on a busy machine that takes longer than uvicorn's 5 s
        timeout_worker_healthcheck=120,
    )
    if workers > 1:
        from uvicorn.supervisors import Multiprocess

        Multiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        server = uvicorn.Server(config)
        server.run()
        if not server.started:  # e.g. the port is taken: uvicorn has said why
            raise SystemExit(1)


def worker_command(
    once: Annotated[bool, typer.Option("--once", help="Exit when the queue is empty.")] = False,
    poll: Annotated[float, typer.Option(help="Seconds between polls of an empty queue.")] = 1.0,
    engine: Annotated[
        str, typer.Option(help="local: run jobs here; ray: one Ray task per job.")
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", help="Ray cluster to join (default: start a local one)."),
    ] = None,
) -> None:
    """Run jobs from the registry's queue until stopped (Ctrl-C)."""
    from api.app import configure_logging
    from api.engines import ENGINES, run_engine
    from api.worker import worker_name
    from registry.errors import InvalidInput
    from registry.service import Registry

    if engine not in ENGINES:
        raise InvalidInput(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    reg = Registry()
    if engine == "local":  # a Ray worker's node checks its own LORAMINT_DEVICE
        from generator.tasks.device import resolve_device

        resolve_device(reg.settings.device)
    configure_logging()
    name = worker_name()
    err.print(f"worker {name} ({engine} engine) polling for jobs")
    settled = reg.recover_blobs()  # what killed writes and deletes left behind
    if any(settled.values()):
        err.print(f"blob store recovered: {settled}")
    try:
        done = run_engine(engine, reg, name=name, poll=poll, once=once, ray_address=ray_address)
    except KeyboardInterrupt:
        err.print("stopped; a job in flight resumes when a worker claims it again")
        raise SystemExit(130) from None
    err.print(f"{done} jobs run")


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help="admin or reader.")] = "reader",
    name: Annotated[str, typer.Option(help="Who the key is for.")] = "default",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create an API key; the secret is printed once and stored only as a hash."""
    from registry.service import Registry

    rec, secret = Registry().create_api_key(name, role)
    if as_json:
        sys.stdout.write(json.dumps({"id": rec.id, "role": rec.role, "key": secret}) + "\n")
        return
    out.print(f"key {rec.id} ({rec.role}, {rec.name}): {secret}")
    err.print("store it now: it cannot be shown again")


@keys_app.command("list")
def keys_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """API keys (never their secrets)."""
    from registry.service import Registry

    recs = Registry().list_api_keys()
    rows = [
        {
            "id": r.id,
            "name": r.name,
            "role": r.role,
            "prefix": r.prefix,
            "created_at": r.created_at.isoformat(),
            "revoked": r.revoked_at is not None,
        }
        for r in recs
    ]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table("id", "name", "role", "prefix", "created", "revoked")
    for r in recs:
        table.add_row(
            str(r.id), r.name, r.role, r.prefix, r.created_at.isoformat()[:16],
            "yes" if r.revoked_at is not None else "",
        )  # fmt: skip
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(help="Key id.")]) -> None:
    """Revoke an API key (requests with it are refused from now on)."""
    from registry.service import Registry

    Registry().revoke_api_key(key_id)
    out.print(f"key {key_id} revoked")


def _job_row(j: Any) -> dict[str, Any]:
    from api.dto import job_timing, live_text

    return {
        "id": j.id,
        "kind": j.kind,
        "state": j.state,
        "stage": j.stage,
        "progress": round(j.progress, 3),
        "timing": job_timing(j)[2],
        "training": live_text(j.live),
        "attempts": j.attempts,
        "error": j.error,
        "result": j.result,
        "created_at": j.created_at.isoformat(),
    }


def result_summary(result: dict[str, Any] | None) -> str:
    """One line for a job's result in ``jobs list`` (``jobs show`` prints all of it)."""
    if not result:
        return ""
    if "adapter_id" in result:
        name = result.get("adapter_name")
        return f"adapter {result['adapter_id']}" + (f" ({name})" if name else "")
    if "generator_id" in result:
        return f"generator {result['generator_id']}"
    if isinstance(result.get("adapters"), dict):
        return f"{len(result['adapters'])} adapters"
    text = json.dumps(result)
    return text if len(text) <= 60 else text[:59] + "…"


@jobs_app.command("list")
def jobs_list(
    state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Jobs, newest first."""
    from registry.service import Registry

    rows = [_job_row(j) for j in Registry().list_jobs(state=state)]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table("id", "kind", "state", "stage", "progress", "attempts", "result / error")
    for r in rows:
        table.add_row(
            str(r["id"]), r["kind"], r["state"], r["stage"] or "", f"{r['progress']:.0%}",
            str(r["attempts"]), result_summary(r["result"]) or (r["error"] or "")[:60],
        )  # fmt: skip
    out.print(table)


@jobs_app.command("show")
def jobs_show(job_id: Annotated[int, typer.Argument(help="Job id.")]) -> None:
    """One job with its log."""
    from registry.service import Registry

    job = Registry().get_job(job_id)
    sys.stdout.write(json.dumps(_job_row(job) | {"params": job.params}, indent=2) + "\n")
    if job.log:
        sys.stdout.write(job.log if job.log.endswith("\n") else job.log + "\n")


@jobs_app.command("cancel")
def jobs_cancel(job_id: Annotated[int, typer.Argument(help="Job id.")]) -> None:
    """Cancel a queued or running job (a running one stops at its next progress report)."""
    from registry.service import Registry

    job = Registry().cancel_job(job_id)
    out.print(f"job {job.id}: {job.state}")
