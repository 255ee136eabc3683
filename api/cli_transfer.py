"""``loramint transfer``: move an adapter to another base model (Trans-LoRA) as a job."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

out = Console(soft_wrap=True)
err = Console(stderr=True)

TERMINAL = ("succeeded", "failed", "cancelled")


def transfer_command(
    adapter_id: Annotated[int, typer.Argument(help="Registered adapter to transfer.")],
    to: Annotated[str, typer.Option("--to", help="Target base model name, folder or HF id.")],
    samples: Annotated[
        int | None, typer.Option(help="Filtered synthetic inputs to distil on (default 64).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Name of the new adapter.")] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", help="Other transfer setting, KEY=VALUE (e.g. distill_steps=30)."),
    ] = None,
    num_cpus: Annotated[float, typer.Option(help="CPUs the job asks a Ray engine for.")] = 1.0,
    num_gpus: Annotated[float, typer.Option(help="GPUs the job asks a Ray engine for.")] = 0.0,
    wait: Annotated[
        bool, typer.Option("--wait", help="Run the job here (or follow it) until it ends.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Queue a Trans-LoRA transfer of ADAPTER_ID to another base model (a job).

    Without --wait a worker runs it (`loramint worker`); with --wait this
    command runs it, or follows it when a worker has it already.
    """
    from api.engines import Resources
    from generator.transfer.config import parse_settings
    from generator.transfer.source import submit_transfer
    from registry.service import Registry

    reg = Registry()
    resources = Resources(num_cpus=num_cpus, num_gpus=num_gpus)
    job = submit_transfer(
        reg,
        adapter_id,
        to,
        samples=samples,
        config=parse_settings(settings or []),
        name=name,
        resources=resources.as_params(),
    )
    if not wait:
        if as_json:
            sys.stdout.write(json.dumps({"job_id": job.id, "state": job.state}) + "\n")
            return
        out.print(
            f"transfer job {job.id} queued: a worker runs it (`loramint worker`); "
            f"`loramint jobs show {job.id}` follows it"
        )
        return
    try:
        final = follow(reg, job.id, quiet=as_json)
    except KeyboardInterrupt:
        err.print(f"stopped; job {job.id} resumes when a worker claims it (`loramint worker`)")
        raise SystemExit(130) from None
    if as_json:
        fields = ("id", "state", "stage", "progress", "result", "error", "attempts")
        sys.stdout.write(json.dumps({k: getattr(final, k) for k in fields}) + "\n")
    else:
        show(final)
    if final.state != "succeeded":
        raise SystemExit(1)


def follow(
    reg: Any,
    job_id: int,
    *,
    quiet: bool = False,
    poll: float = 0.5,
    handlers: dict[str, Any] | None = None,
) -> Any:
    """Run job ``job_id`` in a thread of this process (unless a worker holds it) and show
    its stage and progress until it ends, or until a run here fails in a way a worker may
    retry (the job is queued again; its error says why). Ctrl-C leaves it to resume in a
    worker."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from api.worker import HANDLERS, run_one, worker_name

    failure: list[BaseException] = []
    ran: list[Any] = []  # what run_one returned: None when another worker holds the job

    def work() -> None:
        try:
            ran.append(run_one(reg, worker_name(), handlers or HANDLERS, job_id=job_id))
        except BaseException as exc:  # shown after the bar; the job itself records its error
            failure.append(exc)

    runner = threading.Thread(target=work, daemon=True, name=f"job-{job_id}")
    runner.start()
    columns = (
        TextColumn("job {task.fields[job]}"),
        TextColumn("{task.description:<14}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, disable=quiet) as bar:
        task = bar.add_task("queued", total=1.0, job=job_id)
        while True:
            job = reg.get_job(job_id)
            bar.update(task, completed=job.progress, description=job.stage or job.state)
            if job.state in TERMINAL:
                break
            if failure and not runner.is_alive():
                raise failure[0]
            if ran and ran[0] is not None:  # it ran here, failed, and waits for a retry
                job = reg.get_job(job_id)
                if job.state not in TERMINAL:
                    break
            time.sleep(poll)
    runner.join(timeout=5)
    return job


def show(job: Any) -> None:
    """A finished transfer: its result adapter and every stage's figures."""
    if job.state != "succeeded":
        retry = "" if job.state in TERMINAL else " (a worker retries it: `loramint worker`)"
        err.print(f"job {job.id} {job.state}{retry}: {job.error or ''}".rstrip())
        return
    result = job.result or {}
    out.print(
        f"job {job.id}: adapter {result.get('adapter_id')} ({result.get('adapter_name')}) "
        f"for {result.get('target_base_model')}"
    )
    table = Table("stage", "figures", "wall s")
    for stage, figures in (result.get("stages") or {}).items():
        shown = ", ".join(
            f"{k} {v}" for k, v in figures.items() if k != "wall_seconds" and v is not None
        )
        table.add_row(stage, shown, str(figures.get("wall_seconds", "")))
    out.print(table)
