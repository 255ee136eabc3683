"""``loramint generator``, ``loramint generate`` and ``loramint eval generators``."""

from __future__ import annotations

import functools
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from api.cli_zoo import BaseOpt, DeviceOpt, SuiteOpt, open_suite
from generator.fit.config import FinetuneConfig, GeneratorConfig

generator_app = typer.Typer(help="Generators (SG-LoRA, ICM-LoRA).", no_args_is_help=True)

out = Console(soft_wrap=True)
err = Console(stderr=True)


def _record(rec: Any, *, pinned: bool = False) -> dict[str, Any]:
    return {
        "id": rec.id,
        "name": rec.name,
        "base_model": rec.base_model,
        "method": rec.method,
        "training_adapters": len(rec.training_adapter_ids),
        "sha256": rec.sha256,
        "size_bytes": rec.size_bytes,
        "created_at": rec.created_at.isoformat(),
        "metrics": rec.metrics,
        "pinned": pinned,
    }


def with_config_options(config_type: type) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A decorator giving a command one CLI option per field of ``config_type`` (a config
    of ``generator.fit.config``: ``--select-examples`` for ``select_examples``), taken
    from the config's own declaration (help, default); the command receives them as
    ``config``, validated by the config itself."""
    from generator.fit.config import option_kind, options

    def wrap(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "config"]
        names = [f.name for f, _ in options(config_type)]
        added = []
        for f, opt in options(config_type):
            kind = option_kind(f)
            annotation = (kind | None) if f.default is None else kind
            flag = "--" + f.name.replace("_", "-")
            added.append(
                inspect.Parameter(
                    f.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=f.default,
                    annotation=Annotated[annotation, typer.Option(flag, help=opt.help)],
                )
            )

        @functools.wraps(command)
        def run(**values: Any) -> None:
            config = config_type(**{n: values.pop(n) for n in names})
            command(config=config, **values)

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + added
        run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return wrap


@generator_app.command("train")
@with_config_options(GeneratorConfig)
def generator_train(
    config: GeneratorConfig,
    base_model: BaseOpt = "smollm2-135m-instruct",
    suite: SuiteOpt = None,
    name: Annotated[str | None, typer.Option(help="Generator name.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Train a generator on the base model's registered (not held-out) adapters."""
    from tqdm import tqdm

    from generator.fit.train import train_generator
    from registry.service import Registry

    reg = Registry()
    # the experts' tasks, for choosing K and tau by accuracy (none: weight-space choice)
    tasks = list(open_suite(suite, build=False)) if suite is not None else None
    bar: dict[str, Any] = {}

    def on_step(step: int, total: int, loss: float) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, desc=f"training {config.method}", unit="step")
        bar["bar"].update(1)
        if step % 10 == 0:
            bar["bar"].set_postfix(loss=f"{loss:.4f}")

    rec, metrics = train_generator(
        reg,
        base_model,
        config,
        name=name,
        tasks=tasks,
        on_progress=lambda m: err.print(m),
        on_step=on_step,
        device=device,
    )
    if "bar" in bar:
        bar["bar"].close()
    if as_json:
        sys.stdout.write(json.dumps(_record(rec)) + "\n")
        return
    m = rec.metrics
    extra = f", k={m['k']}, tau={m['tau']} (by {m.get('k_tau_by', 'given')})" if "k" in m else ""
    if m.get("gate") is not None:
        extra += f", gate={m['gate']}"
    if "correction_kept" in m:
        extra += (
            f", correction {'kept' if m['correction_kept'] else 'dropped'} (validation tasks "
            f"{m['val_task_acc_mixture']:.3f} mixture -> {m['val_task_acc_generated']:.3f})"
        )
    val = m.get("val_rel_error")
    val_text = f"validation dW error {val:.4f}" if val is not None else "no validation split"
    out.print(
        f"generator {rec.id} ({rec.method}) for {rec.base_model}: {m['experts']} experts"
        f"{extra}, {m['parameters']:,} parameters, {val_text}, {m['train_seconds']} s"
    )


@generator_app.command("finetune")
@with_config_options(FinetuneConfig)
def generator_finetune(
    config: FinetuneConfig,
    generator_id: Annotated[int, typer.Argument(help="Generator id to start from.")],
    suite: SuiteOpt = None,
    name: Annotated[str | None, typer.Option(help="Name of the new generator.")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Fine-tune a generator end to end through the base model's task loss (new generator)."""
    from tqdm import tqdm

    from generator.fit.train import finetune_generator
    from registry.service import Registry

    reg = Registry()
    tasks = list(open_suite(suite))
    bar = tqdm(total=config.steps, desc="end-to-end", unit="step")

    def on_step(step: int, total: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")

    rec = finetune_generator(
        reg, generator_id, tasks, config, name=name,
        on_progress=lambda m: err.print(m), on_step=on_step, device=device,
    )  # fmt: skip
    bar.close()
    m = rec.hyperparameters
    out.print(
        f"generator {rec.id} ({rec.name}): task loss {m['e2e_loss_first10']} -> "
        f"{m['e2e_loss_last10']} over {config.steps} steps, {m['e2e_seconds']} s"
    )
    if "e2e_val_loss_best" in m:
        out.print(
            f"validation tasks ({m['e2e_val_tasks']}, never trained on): loss "
            f"{m['e2e_val_loss_initial']} untuned -> {m['e2e_val_loss_best']} kept "
            f"(step {m['e2e_best_step']})"
        )


@generator_app.command("list")
def generator_list(
    base_model: Annotated[str | None, typer.Option("--base-model", "-m")] = None,
    method: Annotated[str | None, typer.Option("--method")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Registered generators, newest first."""
    from registry.service import Registry

    reg = Registry()
    recs = reg.list_generators(base_model=base_model, method=method)
    pinned = reg.pinned_generator_ids()
    if as_json:
        rows = [_record(r, pinned=r.id in pinned) for r in recs]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table("id", "name", "base model", "method", "experts", "val dW err", "created")
    for r in recs:
        val = r.metrics.get("val_rel_error")
        table.add_row(
            f"{r.id} (pinned)" if r.id in pinned else str(r.id),
            r.name,
            r.base_model,
            r.method,
            str(len(r.training_adapter_ids)),
            f"{val:.4f}" if isinstance(val, float) else "-",
            r.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    out.print(table)


@generator_app.command("pin")
def generator_pin(
    generator_id: Annotated[int, typer.Argument(help="Generator id.")],
) -> None:
    """Serve this generator for its method and base model (`loramint generate`, `POST
    /v1/generate`), whatever is registered later, until unpinned."""
    from registry.service import Registry

    rec = Registry().pin_generator(generator_id)
    out.print(f"generator {rec.id} ({rec.name}) now serves {rec.method} for {rec.base_model}")


@generator_app.command("unpin")
def generator_unpin(
    generator_id: Annotated[int, typer.Argument(help="Generator id.")],
) -> None:
    """Drop a generator's pin: the newest generator of its method serves again."""
    from registry.service import Registry

    rec = Registry().unpin_generator(generator_id)
    out.print(f"generator {rec.id} unpinned: the newest {rec.method} generator serves")


def read_examples(path: Path | None) -> Any:
    if path is None:
        return None
    from registry.errors import InvalidInput

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"cannot read examples from {path}: {exc}") from exc


def generate_command(
    description: Annotated[str, typer.Argument(help="What the adapter should do.")],
    base_model: BaseOpt = "smollm2-135m-instruct",
    method: Annotated[
        str | None,
        typer.Option("--method", help="sg-lora or icm-lora (default: sg-lora, or --generator's)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed (same seed, same adapter).")] = 0,
    examples: Annotated[
        Path | None,
        typer.Option(
            "--examples",
            help="JSONL of labelled {input, output} examples: the adapter is chosen among "
            "candidates by them (and ICM-LoRA reads them).",
        ),
    ] = None,
    labels: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated label set (default: the examples' outputs when they repeat)."
        ),
    ] = None,
    weighting: Annotated[
        bool,
        typer.Option(help="Fit the nearest experts' mixture weights on the examples."),
    ] = False,
    refine_steps: Annotated[
        int, typer.Option(help="Train the chosen adapter further on the examples (steps).")
    ] = 0,
    generator_id: Annotated[
        int | None,
        typer.Option("--generator", help="Generator id (default: the pinned, else the newest)."),
    ] = None,
    dest: Annotated[
        Path | None, typer.Option("--out", help="Also export the PEFT adapter here.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Generate a LoRA for DESCRIPTION, register it, and optionally export it."""
    from generator.adapt.examples import FewShot
    from generator.adapt.pipeline import AdaptConfig
    from generator.serve.generate import generate_adapters
    from generator.serve.generator import Request
    from registry.errors import InvalidInput
    from registry.service import Registry

    label_set = [x.strip() for x in labels.split(",")] if labels is not None else None
    pairs = read_examples(examples)
    if pairs is None and (weighting or refine_steps):
        raise InvalidInput("--weighting and --refine-steps learn from examples: give --examples")
    fewshot = FewShot.parse(pairs, label_set) if pairs is not None else None
    adapt = AdaptConfig(weighting=weighting, refine_steps=refine_steps)
    request = Request(description, seed=seed, fewshot=fewshot, adapt=adapt)
    reg = Registry()
    with err.status("generating...") as status:
        [(rec, made)] = generate_adapters(
            reg,
            [request],
            base_model=base_model,
            method=method,
            generator_id=generator_id,
            on_progress=lambda m: status.update(m),
        )
    path = reg.export_adapter(rec.id, dest) if dest is not None else None
    if as_json:
        payload = {
            "adapter": {"id": rec.id, "name": rec.name, "base_model": rec.base_model},
            "method": made.method,
            "generator_id": made.generator_id,
            "seed": made.seed,
            "neighbours": [n.__dict__ for n in made.neighbours],
            "fewshot": made.fewshot,
            "path": str(path) if path else None,
        }
        sys.stdout.write(json.dumps(payload) + "\n")
        return
    out.print(f"adapter {rec.id} ({rec.name}) generated by {made.method}")
    if made.fewshot is not None:
        show_fewshot(made.fewshot)
    for n in made.neighbours:
        out.print(
            f"  expert {n.adapter_id} {n.name}: similarity {n.similarity:.3f}, "
            f"weight {n.weight:.3f}"
        )
    if path:
        out.print(f"exported to {path}")


def show_fewshot(report: dict[str, Any]) -> None:
    """What a few-shot request chose, why, and how good it is expected to be."""
    estimate = report["estimate"]
    metric = report["metric"]
    out.print(
        f"  {report['method']}: chose {report['chosen']} on {report['examples']} examples "
        f"({metric}; {estimate['how']})"
    )
    for name, value in sorted(report["candidates"].items(), key=lambda kv: -kv[1]):
        out.print(f"    {name}: {value:.3f}")

    def shown(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    out.print(
        f"  held-back {metric}: this adapter {shown(estimate['adapter'])}, bare model "
        f"{shown(estimate['bare'])}, nearest expert {shown(estimate['nearest'])}"
    )
