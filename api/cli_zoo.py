"""``loramint tasks``, ``loramint zoo`` and ``loramint eval``: the task suite,
the zoo of trained adapters, and the evaluation harness."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

tasks_app = typer.Typer(help="Task suites (JSONL + manifest).", no_args_is_help=True)
zoo_app = typer.Typer(help="The zoo: one trained LoRA per task.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate adapters on tasks (rank-classification accuracy).")

out = Console(soft_wrap=True)  # never wrap: output is read by scripts
err = Console(stderr=True)

SuiteOpt = Annotated[
    Path | None,
    typer.Option("--suite", help="Task suite folder (default: $LORAMINT_HOME/tasks/default)."),
]
BaseOpt = Annotated[
    str, typer.Option("--base-model", "-m", help="Base model name, folder or HF id.")
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device", help="Where the base model runs: auto (a CUDA GPU if visible), cpu, cuda[:N]."
    ),
]


def open_suite(path: Path | None, *, build: bool = True) -> Any:
    from generator.tasks.task import TaskSuite
    from registry.errors import NotFound
    from registry.settings import get_settings

    if path is not None:
        suite = TaskSuite(path)
        if not suite.exists():
            raise NotFound(f"no task suite at {path} (it needs a manifest.json)")
        return suite
    suite = TaskSuite(get_settings().tasks_dir / "default")
    if not suite.exists():
        if not build:
            raise NotFound("the default task suite is not built yet: run `loramint tasks build`")
        from generator.tasks.suite import build_default_suite

        with err.status("building the default task suite from the installed corpora..."):
            build_default_suite(suite.root)
    return suite


@tasks_app.command("build")
def tasks_build(
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    dest: Annotated[
        Path | None,
        typer.Option(
            "--dest", help="Folder to write the suite to (default: $LORAMINT_HOME/tasks/SUITE)."
        ),
    ] = None,
    suite: Annotated[
        str, typer.Option("--suite", help="Which suite to build: default or v2.")
    ] = "default",
) -> None:
    """(Re)build a task suite from the corpora that ship in packages."""
    from generator.tasks.suite import build_suite
    from registry.settings import get_settings

    root = dest or get_settings().tasks_dir / suite
    with err.status(f"building the {suite} task suite..."):
        tasks = build_suite(suite, root, seed=seed)
    held = sum(t.held_out for t in tasks)
    out.print(f"wrote {len(tasks)} tasks ({held} held out) to {root}")


@tasks_app.command("list")
def tasks_list(
    suite: SuiteOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """List the tasks of a suite."""
    s = open_suite(suite)
    tasks = list(s)
    if as_json:
        sys.stdout.write(json.dumps([t.header() for t in tasks], indent=2) + "\n")
        return
    table = Table("name", "family", "format", "labels", "train", "test", "held out", "description")
    for t in tasks:
        table.add_row(
            t.name,
            t.family,
            str(t.meta.get("format", "")),
            "/".join(t.labels),
            str(len(t.train)),
            str(len(t.test)),
            str(t.meta.get("split", "yes")) if t.held_out else "",
            t.description[:60],
        )
    out.print(table)


class ZooBars:
    """Progress of a zoo build: one bar over the tasks, one over the current task's steps."""

    def __init__(self, steps: int, indent: str = "") -> None:
        self.steps, self.indent = steps, indent
        self.bars: dict[str, Any] = {}

    def on_task(self, task: Any, i: int, n: int) -> None:
        from tqdm import tqdm

        if "task" not in self.bars:
            self.bars["task"] = tqdm(total=n, desc=f"{self.indent}tasks", unit="task", position=0)
        else:
            self.bars["task"].update(1)
        if "step" in self.bars:
            self.bars["step"].close()
        self.bars["step"] = tqdm(
            total=self.steps, desc=f"{self.indent}{task.name[:28]}", unit="step", position=1,
            leave=False,
        )  # fmt: skip

    def on_step(self, step: int, loss: float) -> None:
        self.bars["step"].update(1)
        self.bars["step"].set_postfix(loss=f"{loss:.3f}")

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


@zoo_app.command("build")
def zoo_build(
    tasks: Annotated[
        str | None, typer.Option("--tasks", help="Comma-separated task names (default: all).")
    ] = None,
    base_model: BaseOpt = "smollm2-135m-instruct",
    suite: SuiteOpt = None,
    steps: Annotated[int, typer.Option(help="Training steps per task.")] = 40,
    batch_size: Annotated[int, typer.Option(help="Examples per step.")] = 16,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 2e-3,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    no_eval: Annotated[
        bool, typer.Option("--no-eval", help="Skip the base/oracle evaluation.")
    ] = False,
    as_job: Annotated[
        bool, typer.Option("--as-job", help="Queue it as a job for a worker instead.")
    ] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Train and register one LoRA per task; resumable, skips adapters already registered."""

    from generator.tasks.device import check_device_name, resolve_device
    from generator.zoo.build import build_zoo, write_report
    from generator.zoo.trainer import TrainConfig
    from registry.service import Registry

    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, rank=rank, alpha=2.0 * rank)
    s = open_suite(suite)
    names = [n.strip() for n in tasks.split(",") if n.strip()] if tasks else None
    selected = s.select(names)
    if as_job:
        device = check_device_name(device)  # the worker may have the GPU this machine lacks
    else:
        resolve_device(device)  # a missing GPU is refused before anything else
    reg = Registry()
    if as_job:
        params = {
            "tasks": [t.name for t in selected], "base_model": base_model,
            "suite": str(s.root.resolve()), "steps": steps, "batch_size": batch_size,
            "lr": lr, "rank": rank, "evaluate": not no_eval, "device": device,
        }  # fmt: skip
        job = reg.submit_job("build-zoo", params)
        out.print(f"zoo build job {job.id} queued ({len(selected)} tasks): run `loramint worker`")
        return
    bars = ZooBars(steps)

    entries = build_zoo(
        reg,
        selected,
        base_model=base_model,
        config=config,
        evaluate=not no_eval,
        on_task=bars.on_task,
        on_step=bars.on_step,
        on_progress=lambda m: err.print(m),
        device=device,
    )
    bars.close()
    trained = sum(e.trained_now for e in entries)
    out.print(
        f"zoo for {base_model}: {len(entries)} adapters ({trained} trained now, "
        f"{len(entries) - trained} already registered)"
    )
    path = write_report(reg, base_model)
    out.print(f"report: {path}")


@zoo_app.command("report")
def zoo_report(
    base_model: BaseOpt = "smollm2-135m-instruct",
    dest: Annotated[
        Path | None, typer.Option("--out", help="Also write the markdown here.")
    ] = None,
) -> None:
    """Per-task base vs oracle accuracy and training time of the registered zoo."""
    from generator.zoo.build import write_report
    from registry.service import Registry

    path = write_report(Registry(), base_model, extra=dest)
    sys.stdout.write(path.with_suffix(".md").read_text())


@zoo_app.command("multitask")
def zoo_multitask(
    base_model: BaseOpt = "smollm2-135m-instruct",
    suite: SuiteOpt = None,
    tasks: Annotated[
        str | None,
        typer.Option("--tasks", help="Comma-separated task names (default: every training task)."),
    ] = None,
    steps_per_task: Annotated[
        int | None,
        typer.Option(
            "--steps-per-task",
            help="Training steps per task, in total over the tasks (default: the zoo's, the "
            "compute of the zoo a generator learns from).",
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Register it under this name (default: baseline-multitask, the one "
            "`loramint eval generators` scores), e.g. for one of several task subsets.",
        ),
    ] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Train the multi-task LoRA baseline (one adapter on every training task, descriptions
    in the prompt); `loramint eval generators` scores it beside the generators."""
    from tqdm import tqdm

    from generator.quality.multitask import NAME, train, zoo_config
    from generator.tasks.device import resolve_device
    from registry.service import Registry

    resolve_device(device)  # a missing GPU is refused before anything else
    s = open_suite(suite)
    names = [n.strip() for n in tasks.split(",") if n.strip()] if tasks else None
    selected = s.select(names) if names else s.select(held_out=False)
    reg = Registry()
    name = name or NAME
    per_task = steps_per_task or zoo_config(reg, base_model).steps
    with tqdm(total=per_task * len(selected), desc="multi-task LoRA", unit="step") as bar:

        def on_step(step: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")

        rec, trained = train(
            reg, base_model, selected, steps_per_task=steps_per_task, name=name, device=device,
            on_step=on_step, on_progress=lambda m: err.print(m),
        )  # fmt: skip
    if not trained:
        out.print(f"{name} of {base_model} is already registered: adapter {rec.id} (delete it "
                  "to train it again)")  # fmt: skip
        return
    out.print(
        f"registered adapter {rec.id} ({name}, {len(selected)} tasks, "
        f"{rec.meta['train_config']['steps']} steps, {rec.metrics['train_seconds']:.0f} s)"
    )


@eval_app.callback(invoke_without_command=True)
def eval_adapter(
    ctx: typer.Context,
    adapter: Annotated[int | None, typer.Option("--adapter", help="Adapter id.")] = None,
    task: Annotated[str | None, typer.Option("--task", help="Task name.")] = None,
    suite: SuiteOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Accuracy of adapter ID on task NAME's test split, and of the bare base model; both
    are recorded in the adapter's metrics (its page, list row and model card show them)."""
    if ctx.invoked_subcommand is not None:
        return
    if adapter is None or task is None:
        raise typer.BadParameter("give both --adapter ID and --task NAME")
    from generator.tasks.evaluation import Evaluator
    from registry.service import Registry

    t = open_suite(suite).load(task)
    reg = Registry()
    rec = reg.get_adapter(adapter)
    adapter_weights = reg.adapter_files(adapter).parsed()

    with err.status(f"loading {rec.base_model}..."):
        evaluator = Evaluator.from_path(reg.base_model_path(rec.base_model), device=device)
    with err.status(f"scoring {len(t.test)} test examples..."):
        bare = evaluator.accuracy(t)
        tuned = evaluator.accuracy(t, adapter_weights)
    result = {
        "adapter": adapter,
        "task": task,
        "n": tuned.n,
        "accuracy": tuned.accuracy,
        "base_accuracy": bare.accuracy,
        "seconds": round(bare.seconds + tuned.seconds, 2),
    }
    reg.update_metrics(
        adapter,
        {"accuracy": round(tuned.accuracy, 4), "base_accuracy": round(bare.accuracy, 4),
         "eval_n": tuned.n, "eval_task": task},
    )  # fmt: skip
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    out.print(
        f"task {task} ({tuned.n} test examples): adapter {adapter} {tuned.accuracy:.3f}, "
        f"bare {rec.base_model} {bare.accuracy:.3f}"
    )
