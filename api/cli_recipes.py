"""Recipe adapters and storage housekeeping on the command line:
``loramint adapters materialise``, ``loramint generator delete`` and ``loramint gc``."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console

out = Console(soft_wrap=True)


def materialise_command(
    adapter_id: Annotated[int, typer.Argument(help="A generated adapter kept as a recipe.")],
) -> None:
    """Store a generated adapter's weights, so that it no longer needs its generator
    and experts (its download does not change)."""
    from registry.service import Registry

    reg = Registry()
    before = reg.get_adapter(adapter_id)
    rec = reg.materialise_adapter(adapter_id)
    if before.stored == "weights":
        out.print(f"adapter {rec.id} ({rec.name}) already has stored weights")
    else:
        out.print(f"adapter {rec.id} ({rec.name}): {rec.size_bytes:,} bytes stored")


def generator_delete_command(
    generator_id: Annotated[int, typer.Argument(help="Generator id.")],
    materialise: Annotated[
        bool,
        typer.Option(
            "--materialise",
            help="Store the weights of the adapters kept as recipes of this generator first.",
        ),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a generator. Refused while it is pinned, and while generated adapters are
    kept as its recipes, unless --materialise stores their weights first."""
    from registry.service import Registry

    reg = Registry()
    rec = reg.get_generator(generator_id)
    needed = reg.recipe_adapters(generator_id=generator_id)
    if not yes:
        extra = f" and store the weights of {len(needed)} recipe adapters" if materialise else ""
        typer.confirm(f"delete generator {rec.id} ({rec.name}){extra}?", abort=True)
    reg.delete_generator(generator_id, materialise=materialise)
    kept = f"; {len(needed)} recipe adapters now have stored weights" if materialise else ""
    out.print(f"deleted generator {rec.id} ({rec.name}){kept}")


def gc_command(
    apply: Annotated[
        bool, typer.Option("--apply", help="Delete what is found (default: only report).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Find blobs no row refers to and rows whose blob is missing; with --apply, delete
    the orphans and settle the rows (a recipe adapter goes back to its recipe)."""
    from registry import gc
    from registry.service import Registry

    report = gc.collect(Registry(), apply=apply)
    if as_json:
        sys.stdout.write(json.dumps(report.as_json(), indent=2) + "\n")
        return
    verb = "deleted" if apply else "found"
    out.print(
        f"{report.blobs} blobs; {len(report.orphans)} orphans "
        f"({report.orphan_bytes:,} bytes) {verb}"
    )
    for key in report.orphans:
        out.print(f"  orphan blob {key}")
    out.print(f"{len(report.missing)} rows whose blob is missing")
    for m in report.missing:
        out.print(f"  {m.kind} {m.ref}: blob {m.key[:12]}… missing -> {m.action}")
    if not apply and (report.orphans or report.missing):
        out.print("nothing changed: run `loramint gc --apply` to settle these")
