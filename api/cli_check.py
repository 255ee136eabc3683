"""``loramint adapters check``: can PEFT, vLLM and LoRAX serve a registered adapter, and
does it change its base model's output? Exit 1 when any check finds an error."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from generator.serve.smoke import CheckReport

out = Console(soft_wrap=True)
err = Console(stderr=True)


def report_json(report: CheckReport) -> dict[str, Any]:
    """The report as plain JSON (the CLI's --json and the REST response share its fields)."""
    rules = report.rules
    return {
        "adapter_id": rules.adapter_id,
        "base_model": rules.base_model,
        "architecture": rules.architecture,
        "ok": report.ok,
        "targets": [
            {
                "target": t.target,
                "ok": t.ok,
                "findings": [dataclasses.asdict(f) for f in t.findings],
                "settings": t.settings,
            }
            for t in rules.targets
        ],
        "smoke": dataclasses.asdict(report.smoke) if report.smoke is not None else None,
    }


def check_command(
    adapter_id: Annotated[int, typer.Argument(help="Registered adapter to check.")],
    target: Annotated[
        str, typer.Option("--target", help="peft | vllm | lorax | all (default all).")
    ] = "all",
    smoke: Annotated[
        bool,
        typer.Option(
            "--smoke/--no-smoke", help="Load the base model and check the adapter changes it."
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Check a registered adapter against PEFT's, vLLM's and LoRAX's documented limits and
    (unless --no-smoke) that it changes its base model's logits. Exit 1 on any error."""
    from generator.serve.smoke import check_adapter
    from registry.service import Registry
    from registry.serving import parse_targets

    targets = parse_targets(target)  # before anything is loaded: a bad target is exit 2
    reg = Registry()
    try:
        with err.status(f"checking adapter {adapter_id}..."):
            report = check_adapter(reg, adapter_id, targets, smoke=smoke)
    finally:
        reg.close()
    if as_json:
        sys.stdout.write(json.dumps(report_json(report), indent=2) + "\n")
    else:
        _print_report(report)
    if not report.ok:
        raise typer.Exit(1)


def _print_report(report: CheckReport) -> None:
    rules = report.rules
    arch = rules.architecture or "unknown architecture"
    out.print(f"adapter {rules.adapter_id} on {rules.base_model} ({arch})")
    table = Table("target", "severity", "rule", "message")
    for t in rules.targets:
        if not t.findings:
            table.add_row(t.target, "ok", "-", "no findings")
        for f in t.findings:
            table.add_row(t.target, f.severity, f.rule, f.message)
    out.print(table)
    for t in rules.targets:
        if t.settings.get("max_lora_rank") is not None:
            out.print(f"vllm: serve with --max-lora-rank >= {t.settings['max_lora_rank']}")
    if report.smoke is not None:
        verdict = "passed" if report.smoke.passed else "FAILED"
        out.print(f"smoke test {verdict}: {report.smoke.message}")
    else:
        out.print("smoke test skipped (--no-smoke)")
    out.print("ok" if report.ok else "errors found")
