"""``loramint eval generators`` and ``loramint eval fewshot``: the quality harness
on the held-out tasks, from a description alone and with k labelled examples."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from api.cli_zoo import BaseOpt, DeviceOpt, SuiteOpt, eval_app, open_suite

out = Console(soft_wrap=True)
err = Console(stderr=True)


def evaluated_generators(reg: Any, base_model: str) -> dict[str, Any]:
    """Column -> the newest generator of each method, plain and end-to-end fine-tuned."""
    cols: dict[str, Any] = {}
    for rec in reversed(reg.list_generators(base_model=base_model, limit=1000)):
        e2e = "finetuned_from" in rec.hyperparameters
        cols[f"{rec.method}{'+e2e' if e2e else ''}"] = rec  # oldest first: newest wins
    order = ["sg-lora", "sg-lora+e2e", "icm-lora", "icm-lora+e2e"]
    return {c: cols[c] for c in order if c in cols}


def chosen_generators(reg: Any, base_model: str, ids: str | None) -> dict[str, Any]:
    """Column -> generator: ``ids`` ("3,5"; columns "sg-lora#3", ...) or the default set."""
    from registry.errors import InvalidInput

    if ids is None:
        return evaluated_generators(reg, base_model)
    cols: dict[str, Any] = {}
    for part in ids.split(","):
        try:
            gid = int(part)
        except ValueError:
            raise InvalidInput(f"--generators takes comma-separated ids, got {part!r}") from None
        rec = reg.get_generator(gid)
        if rec.base_model != base_model:
            raise InvalidInput(f"generator {gid} is for {rec.base_model}, not {base_model}")
        e2e = "+e2e" if "finetuned_from" in rec.hyperparameters else ""
        cols[f"{rec.method}{e2e}#{gid}"] = rec
    if not cols:
        raise InvalidInput("--generators names no generator")
    return cols


@eval_app.command("generators")
def eval_generators(
    base_model: BaseOpt = "smollm2-135m-instruct",
    tasks: Annotated[
        str | None,
        typer.Option("--tasks", help="Comma-separated task names (default: the held-out ones)."),
    ] = None,
    generator_ids: Annotated[
        str | None,
        typer.Option(
            "--generators",
            help="Comma-separated generator ids to score, one column each (default: the "
            "newest of each method, plain and fine-tuned).",
        ),
    ] = None,
    suite: SuiteOpt = None,
    seed: Annotated[int, typer.Option(help="Generation seed.")] = 0,
    min_gain: Annotated[
        float,
        typer.Option(
            help="Drop (and list) tasks whose oracle gains less than this over the bare model."
        ),
    ] = 0.1,
    dest: Annotated[
        Path | None, typer.Option("--out", help="Also write the markdown table here.")
    ] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Held-out accuracy of every generator and baseline, and each one's share of the
    oracle's gain over the bare model with bootstrap intervals, per split."""
    from generator.experts import ExpertBank
    from generator.quality import multitask
    from generator.quality.heldout import evaluate, sg_guidance, sg_settings, write
    from generator.serve.generator import Generator
    from generator.tasks.evaluation import Evaluator
    from registry.errors import InvalidInput
    from registry.service import Registry

    if not 0 < min_gain <= 1:
        raise InvalidInput(f"--min-gain must be in (0, 1], got {min_gain}")
    reg = Registry()
    s = open_suite(suite)
    names = [n.strip() for n in tasks.split(",") if n.strip()] if tasks else None
    selected = s.select(names) if names else [t for t in s if t.held_out]
    if not selected:
        raise InvalidInput("no tasks to evaluate")
    gens = {}
    for column, rec in chosen_generators(reg, base_model, generator_ids).items():
        gens[column] = Generator.from_registry(reg, rec)
    if not gens:
        raise InvalidInput(f"no generators for {base_model}: run `loramint generator train`")
    settings = sg_settings(gens)
    ids = next(iter(gens.values())).ckpt.expert_ids
    with err.status("loading experts and the base model..."):
        bank = ExpertBank.from_registry(reg, base_model, ids=ids)
        evaluator = Evaluator.from_path(reg.base_model_path(base_model), device=device)
    k, tau = settings if settings else (4, 0.05)
    report = evaluate(
        reg,
        evaluator,
        selected,
        base_model=base_model,
        generators=gens,
        bank=bank,
        k=k,
        tau=tau,
        guidance=sg_guidance(gens),
        multitask=multitask.load(reg, base_model),
        min_gain=min_gain,
        seed=seed,
        on_task=lambda name: err.print(f"scoring {name}"),
    )
    path = write(report, reg.settings.results_dir)
    md = report.markdown()
    if dest is not None:
        from registry.blobs import write_atomic

        write_atomic(dest, md.encode())
    sys.stdout.write(md)
    out.print(f"results: {path} (plot {path.with_suffix('.png')})")


@eval_app.command("fewshot")
def eval_fewshot(
    base_model: BaseOpt = "smollm2-135m-instruct",
    tasks: Annotated[
        str | None,
        typer.Option(
            "--tasks",
            help="Comma-separated task names (default: the held-out tasks whose oracle "
            "gains at least --min-gain over the bare model).",
        ),
    ] = None,
    ks: Annotated[str, typer.Option(help="Comma-separated numbers of examples.")] = "4,8,16,32",
    draws: Annotated[int, typer.Option(help="Independent draws of examples per k.")] = 5,
    methods: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated few-shot methods (default: selection, weighting, refine, "
            "icm-examples, lorahub, scratch)."
        ),
    ] = None,
    min_gain: Annotated[
        float, typer.Option(help="Least oracle gain over the bare model of a scored task.")
    ] = 0.1,
    refine_steps: Annotated[int, typer.Option(help="Refinement's (and scratch's) steps.")] = 20,
    generator_id: Annotated[
        int | None,
        typer.Option("--generator", help="SG-LoRA generator (default: the one serving)."),
    ] = None,
    suite: SuiteOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the draws and the methods.")] = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Few-shot quality on the held-out tasks: every method beside the bare model, the
    nearest expert, zero-shot SG-LoRA and the oracle, for each k over several draws of
    examples from the training split. Resumes a stopped run (the cells are kept in
    $LORAMINT_HOME/results/fewshot-<base>.json)."""
    from generator.quality.fewshot import (
        METHODS,
        FewShotSettings,
        evaluate_fewshot,
        results_path,
        write,
    )
    from generator.serve.generate import generator_for
    from generator.serve.generator import Generator
    from generator.tasks.device import resolve_device
    from generator.tasks.evaluation import Evaluator
    from generator.zoo.build import adapter_name, gains_enough
    from registry.errors import GeneratorNotFound, InvalidInput
    from registry.service import Registry

    resolve_device(device)  # a missing GPU is refused before anything else
    reg = Registry()
    s = open_suite(suite)
    if tasks:
        selected = s.select([n.strip() for n in tasks.split(",") if n.strip()])
    else:
        selected = []
        for task in (t for t in s if t.held_out and t.is_classification):
            rec = reg.find_adapter(base_model, adapter_name(task))
            m = rec.metrics if rec is not None else {}
            gain = (m.get("accuracy") or 0.0) - (m.get("base_accuracy") or 0.0)
            if rec is None:
                err.print(
                    f"skipped {task.name}: no zoo adapter (`loramint zoo build --tasks "
                    f"{task.name}`)"
                )
            elif m.get("accuracy") is None or m.get("base_accuracy") is None:
                err.print(
                    f"skipped {task.name}: its zoo adapter was not evaluated (`loramint eval "
                    f"--adapter {rec.id} --task {task.name}` measures it)"
                )
            elif gains_enough(gain, min_gain):
                selected.append(task)
            else:
                err.print(f"skipped {task.name}: oracle gain {gain:+.3f} < {min_gain}")
    if not selected:
        raise InvalidInput("no tasks to evaluate: every held-out task was skipped (see above)")
    try:
        wanted = tuple(int(k) for k in ks.split(",") if k.strip())
    except ValueError:
        raise InvalidInput(f"--ks takes comma-separated numbers, got {ks!r}") from None
    chosen = tuple(m.strip() for m in methods.split(",")) if methods else METHODS
    settings = FewShotSettings(
        ks=wanted, draws=draws, methods=chosen, refine_steps=refine_steps, seed=seed
    )
    with err.status("loading the base model and the generators..."):
        evaluator = Evaluator.from_path(reg.base_model_path(base_model), device=device)
        sg_rec = generator_for(reg, base_model, "sg-lora", generator_id)
        sg = Generator.from_registry(reg, sg_rec, base=evaluator)
        try:
            icm_rec = generator_for(reg, base_model, "icm-lora")
            icm = Generator.from_registry(reg, icm_rec, base=evaluator)
        except GeneratorNotFound:
            icm = None
            err.print("no ICM-LoRA generator: its column is left out")
    path = results_path(reg.settings.results_dir, base_model)
    summary = evaluate_fewshot(
        reg, evaluator, selected, base_model=base_model, sg=sg, icm=icm, settings=settings,
        path=path, on_progress=lambda m: err.print(m),
    )  # fmt: skip
    cells = json.loads(path.read_text())["cells"]
    write(summary, cells, selected, path)
    sys.stdout.write(path.with_suffix(".md").read_text())
    out.print(f"results: {path} (table {path.with_suffix('.md')}, plot {path.with_suffix('.png')})")
