"""The ``loramint`` command line: a thin shell over the registry's Python API.

Every command prints a one-line ``error: ...`` and exits non-zero on bad input;
nothing is changed in that case. ``--json`` gives machine-readable output.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

import api.cli_eval  # noqa: F401  (registers `eval generators` and `eval fewshot`)
from api.cli_check import check_command
from api.cli_demo import demo_command
from api.cli_generators import generate_command, generator_app
from api.cli_info import info_command
from api.cli_recipes import gc_command, generator_delete_command, materialise_command
from api.cli_service import jobs_app, keys_app, serve_command, worker_command
from api.cli_transfer import transfer_command
from api.cli_zoo import eval_app, tasks_app, zoo_app
from registry.errors import LoramintError, NotFound

app = typer.Typer(
    help="loramint: a registry of LoRA adapters and generators of new ones.", no_args_is_help=True
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
models_app = typer.Typer(help="Base models.", no_args_is_help=True)
adapters_app = typer.Typer(help="Registered LoRA adapters.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")
app.add_typer(adapters_app, name="adapters")
adapters_app.command("check")(check_command)
adapters_app.command("materialise")(materialise_command)
app.add_typer(tasks_app, name="tasks")
app.add_typer(zoo_app, name="zoo")
app.add_typer(eval_app, name="eval")
app.add_typer(generator_app, name="generator")
generator_app.command("delete")(generator_delete_command)
app.command("gc")(gc_command)
app.command("generate")(generate_command)
app.command("serve")(serve_command)
app.command("demo")(demo_command)
app.command("worker")(worker_command)
app.command("transfer")(transfer_command)
app.command("info")(info_command)
app.add_typer(keys_app, name="keys")
app.add_typer(jobs_app, name="jobs")

out = Console(soft_wrap=True)  # never wrap: output is read by scripts
err = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(_jsonable(obj), indent=2) + "\n")


def _registry() -> Any:
    from registry.service import Registry

    return Registry()


def _progress(message: str) -> None:
    err.print(f"[dim]{message}[/dim]")


# -- db ----------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Create or migrate the registry database to the latest schema."""
    from registry.db import current_revision, make_engine, upgrade
    from registry.settings import get_settings

    settings = get_settings()
    engine = make_engine(settings.database_url)
    upgrade(engine, revision)
    out.print(
        f"database {engine.url.render_as_string(hide_password=True)} "
        f"at revision {current_revision(engine)}"
    )


@db_app.command("current")
def db_current() -> None:
    """Show the schema revision of the database and of this code."""
    from registry.db import current_revision, head_revision, make_engine
    from registry.settings import get_settings

    engine = make_engine(get_settings().database_url)
    out.print(f"database: {current_revision(engine) or 'empty'}; code: {head_revision(engine)}")


# -- models ------------------------------------------------------------------


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """Offline base models this install can prepare, and registered ones."""
    from registry.base_models import OFFLINE_MODELS

    registered = {m.name: m for m in _registry().list_base_models()}
    rows = []
    for name, model in OFFLINE_MODELS.items():
        rows.append(
            {
                "name": name,
                "kind": "offline package",
                "about": model.description,
                "registered": name in registered,
            }
        )
    for name, rec in registered.items():
        if name not in OFFLINE_MODELS:
            rows.append(
                {
                    "name": name,
                    "kind": rec.source.split(":", 1)[0],
                    "about": rec.architecture,
                    "registered": True,
                }
            )
    if as_json:
        _print_json(rows)
        return
    table = Table("name", "kind", "about", "registered")
    for r in rows:
        table.add_row(
            str(r["name"]), str(r["kind"]), str(r["about"]), "yes" if r["registered"] else "no"
        )
    out.print(table)


@models_app.command("prepare")
def models_prepare(name: str, as_json: JsonOpt = False) -> None:
    """Resolve a base model (converting an offline GGUF once) and register its shapes."""
    with err.status(f"preparing {name}..."):
        rec = _registry().prepare_base_model(name, on_progress=_progress)
    if as_json:
        _print_json(rec)
        return
    out.print(
        f"{rec.name}: {rec.architecture}, {rec.num_layers} layers, hidden {rec.hidden_size}, "
        f"{rec.num_linear_layers} linear layers ({rec.source})"
    )


# -- adapters ----------------------------------------------------------------


@adapters_app.command("add")
def adapters_add(
    path: Annotated[Path, typer.Argument(help="PEFT adapter folder or .zip.")],
    base_model: Annotated[
        str, typer.Option("--base-model", "-m", help="Base model name, folder or HF id.")
    ],
    description: Annotated[
        str, typer.Option("--description", "-d", help="What the adapter does, as an instruction.")
    ],
    name: Annotated[
        str | None,
        typer.Option("--name", help="Unique name per base model (default: from the description)."),
    ] = None,
    seeds: Annotated[
        Path | None,
        typer.Option(
            "--seeds",
            help="JSONL of a few {input, output} examples (kept for Trans-LoRA).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    labels: Annotated[
        str | None,
        typer.Option("--labels", help="Comma-separated label set, for classification tasks."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate a PEFT LoRA adapter against its base model and register it."""
    from generator.zoo.artifacts import seed_artifacts

    artifacts, meta = seed_artifacts(
        seeds.read_bytes() if seeds is not None else None,
        [x.strip() for x in labels.split(",")] if labels is not None else None,
    )
    with err.status("validating and registering..."):
        rec = _registry().add_adapter(
            path,
            base_model=base_model,
            description=description,
            name=name,
            meta=meta,
            artifacts=artifacts,
            on_progress=_progress,
            refuse_duplicates=True,
        )
    if as_json:
        _print_json(rec)
        return
    out.print(
        f"added adapter {rec.id} [bold]{rec.name}[/bold] for {rec.base_model} "
        f"(r={rec.rank}, {rec.size_bytes:,} bytes, sha256 {rec.sha256[:12]})"
    )


@adapters_app.command("list")
def adapters_list(
    base_model: Annotated[str | None, typer.Option("--base-model", "-m")] = None,
    provenance: Annotated[
        str | None, typer.Option(help="trained | imported | generated | transferred")
    ] = None,
    limit: int = 50,
    offset: int = 0,
    sort: Annotated[
        str, typer.Option(help="id | name | rank | provenance | created | accuracy")
    ] = "id",
    desc: Annotated[bool, typer.Option("--desc", help="Largest (or newest) first.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List registered adapters (accuracy: what an evaluation measured; unmeasured last)."""
    recs = _registry().list_adapters(
        base_model=base_model, provenance=provenance, limit=limit, offset=offset,
        sort=sort, descending=desc,
    )  # fmt: skip
    if as_json:
        _print_json([_summary(r) for r in recs])
        return
    table = Table("id", "name", "base model", "r", "provenance", "accuracy", "description")
    for r in recs:
        accuracy = r.metrics.get("accuracy")
        shown = f"{accuracy:.3f}" if isinstance(accuracy, int | float) else "-"
        table.add_row(
            str(r.id), r.name, r.base_model, str(r.rank), r.provenance, shown,
            _short(r.description),
        )  # fmt: skip
    out.print(table)


@adapters_app.command("show")
def adapters_show(adapter_id: int, as_json: JsonOpt = False) -> None:
    """Everything the registry knows about one adapter."""
    rec = _registry().get_adapter(adapter_id)
    if as_json:
        _print_json(rec)
        return
    for key in (
        "id",
        "name",
        "description",
        "base_model",
        "peft_type",
        "rank",
        "alpha",
        "target_modules",
        "provenance",
        "sha256",
        "size_bytes",
        "stored",
        "layout_signature",
        "created_at",
        "metrics",
        "meta",
        "parents",
    ):
        out.print(f"[bold]{key}[/bold]: {getattr(rec, key)}")


@adapters_app.command("search")
def adapters_search(
    text: str,
    k: Annotated[int, typer.Option("-k", help="How many results.")] = 5,
    base_model: Annotated[str | None, typer.Option("--base-model", "-m")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Find adapters whose description is nearest in meaning to TEXT."""
    hits = _registry().search(text, k=k, base_model=base_model)
    if as_json:
        _print_json([{"score": h.score, **_summary(h.adapter)} for h in hits])
        return
    table = Table("score", "id", "name", "base model", "description")
    for h in hits:
        table.add_row(
            f"{h.score:.3f}",
            str(h.adapter.id),
            h.adapter.name,
            h.adapter.base_model,
            _short(h.adapter.description),
        )
    out.print(table)


@adapters_app.command("export")
def adapters_export(
    adapter_id: int,
    dest: Annotated[Path, typer.Argument(help="Folder (or .zip) to write the PEFT adapter to.")],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing adapter files.")
    ] = False,
) -> None:
    """Write an adapter as a PEFT folder or zip (PeftModel.from_pretrained loads it)."""
    path = _registry().export_adapter(adapter_id, dest, overwrite=overwrite)
    out.print(f"exported adapter {adapter_id} to {path}")


@adapters_app.command("delete")
def adapters_delete(
    adapter_id: int,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove an adapter (its row, embedding and, when unused, its blob). Adapters built
    from it keep a record of it; those kept as recipes get their weights stored first."""
    reg = _registry()
    rec = reg.get_adapter(adapter_id)
    children = reg.children(adapter_id)
    if children:
        err.print(
            f"{len(children)} adapters were built from {rec.name} "
            f"({', '.join(str(c.adapter_id) for c in children[:10])}"
            f"{', ...' if len(children) > 10 else ''}): they keep a record of it, and those "
            "kept as recipes get their weights stored first"
        )
    if not yes and sys.stdin.isatty():
        typer.confirm(f"delete adapter {rec.id} ({rec.name})?", abort=True)
    reg.delete_adapter(adapter_id)
    out.print(f"deleted adapter {adapter_id} ({rec.name})")


def _short(text: str, n: int = 70) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _summary(rec: Any) -> dict[str, Any]:
    return {
        "id": rec.id,
        "name": rec.name,
        "description": rec.description,
        "base_model": rec.base_model,
        "rank": rec.rank,
        "provenance": rec.provenance,
        "sha256": rec.sha256,
    }


def main() -> None:
    try:
        app()
    except NotFound as exc:
        _fail(exc, 3)
    except LoramintError as exc:
        _fail(exc, 2)


def _fail(exc: Exception, code: int) -> None:
    # One plain line (no wrapping or markup) so scripts can read it.
    sys.stderr.write(f"error: {exc}\n")
    raise SystemExit(code) from None


if __name__ == "__main__":
    main()
