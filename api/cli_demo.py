"""``loramint demo``: the main job on the embedded default, from nothing to a running service.

Each step is skipped when its result is already in ``$LORAMINT_HOME``, so a
second run goes straight to the server:

1. prepare the demo's base model and the default task suite (the other offline
   models are converted when a transfer or ``loramint models prepare`` asks);
2. train a demo zoo (six WordNet topic tasks, 24 steps each, ~7 minutes on 2 CPU cores;
   ``--full`` trains and evaluates the whole suite);
3. train an SG-LoRA and an ICM-LoRA generator on it;
4. generate an adapter for a held-out task's description (no adapter of that
   task is an expert) and score it against the bare model on the task's test
   split;
5. print the admin UI's URL and an admin key, and serve.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

out = Console()
err = Console(stderr=True)

BASE_MODEL = "smollm2-135m-instruct"
# Training tasks of the demo zoo: siblings of the held-out task, so its description
# has real neighbours. At DEMO_ZOO_STEPS a task trains in ~75 s on 2 cores (the full
# zoo's 40 steps take ~120 s), which keeps a first `make demo` under 15 minutes.
DEMO_TASKS = (
    "wordnet_animal",
    "wordnet_food",
    "wordnet_body",
    "wordnet_person",
    "wordnet_location",
    "wordnet_artifact",
)
DEMO_HELD_OUT = "wordnet_plant"  # never an expert; the description the demo generates for
KEY_FILE = "demo-admin.key"
DEMO_ZOO_STEPS = 24


def demo_command(
    full: Annotated[
        bool, typer.Option("--full", help="Train and evaluate the whole suite (hours).")
    ] = False,
    serve: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Start the server at the end.")
    ] = True,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    zoo_steps: Annotated[
        int | None,
        typer.Option(help=f"Training steps per zoo task [default: {DEMO_ZOO_STEPS}; --full: 40]."),
    ] = None,
) -> None:
    """The main job: models, a demo zoo, both generators, one generated adapter scored
    against the bare model, then the server with the admin UI (each step reused when done)."""
    from api.cli_zoo import open_suite
    from generator.zoo.trainer import TrainConfig
    from registry.base_models import OFFLINE_MODELS
    from registry.errors import InvalidInput
    from registry.service import Registry

    if not 0 < port < 65536:
        raise InvalidInput(f"port must be 1-65535, got {port}")
    if zoo_steps is not None and zoo_steps < 1:
        raise InvalidInput(f"--zoo-steps must be at least 1, got {zoo_steps}")
    reg = Registry()
    started = lap = time.monotonic()

    def took(step: str) -> None:
        nonlocal lap
        now = time.monotonic()
        out.print(f"  [dim]{step} took {now - lap:.0f} s[/]")
        lap = now

    out.print(f"[bold]1/5[/] registry {reg.engine.url.render_as_string(hide_password=True)}")
    with err.status(f"preparing {BASE_MODEL} (converted once)..."):
        rec = reg.prepare_base_model(BASE_MODEL, on_progress=lambda m: err.print(f"  {m}"))
    out.print(f"  base model {rec.name}: {rec.architecture}, {rec.num_layers} layers")
    others = ", ".join(name for name in OFFLINE_MODELS if name != BASE_MODEL)
    out.print(f"  {others}: converted on first use (a transfer, `loramint models prepare`)")
    suite = open_suite(None)
    out.print(f"  task suite: {len(suite.names())} tasks in {suite.root}")
    took("models and task suite")

    tasks = list(suite) if full else suite.select(list(DEMO_TASKS))
    if not full:
        tasks = [t for t in tasks if not t.held_out]
    steps = zoo_steps or (TrainConfig().steps if full else DEMO_ZOO_STEPS)
    _zoo(reg, tasks, full=full, steps=steps)
    took("zoo")
    generators = _generators(reg)
    took("generators")
    _generated(reg, suite.load(DEMO_HELD_OUT), generators["sg-lora"])
    took("generate and score")
    secret = _admin_key(reg)
    reg.close()
    url = f"http://{host}:{port}"
    out.print(f"[bold]5/5[/] admin UI: [bold]{url}/ui[/]   admin key: [bold]{secret}[/]")
    out.print(f"  REST: {url}/v1 (OpenAPI {url}/schema); key kept in $LORAMINT_HOME/{KEY_FILE}")
    out.print(f"  [dim]ready after {time.monotonic() - started:.0f} s[/]")
    if serve:
        from api.cli_service import serve_command

        serve_command(host=host, port=port, workers=1, worker=True, log_level="warning")


def _zoo(reg: Any, tasks: list[Any], *, full: bool, steps: int) -> None:
    from api.cli_zoo import ZooBars
    from generator.zoo.build import build_zoo
    from generator.zoo.trainer import TrainConfig

    label = "full zoo" if full else f"demo zoo ({len(tasks)} tasks)"
    out.print(f"[bold]2/5[/] {label} on {BASE_MODEL}")
    bars = ZooBars(steps, indent="  ")

    entries = build_zoo(
        reg, tasks, base_model=BASE_MODEL, config=TrainConfig(steps=steps, batch_size=16),
        evaluate=full, on_task=bars.on_task, on_step=bars.on_step,
        on_progress=lambda m: err.print(f"  {m}"),
    )  # fmt: skip
    bars.close()
    trained = sum(e.trained_now for e in entries)
    out.print(f"  {len(entries)} adapters ({trained} trained now, {len(entries) - trained} reused)")


def _generators(reg: Any) -> dict[str, Any]:
    from tqdm import tqdm

    from generator.fit.config import GeneratorConfig
    from generator.fit.train import train_generator

    out.print("[bold]3/5[/] generators")
    found = {}
    for method in ("sg-lora", "icm-lora"):
        rec = reg.latest_generator(BASE_MODEL, method)
        if rec is None:
            config = GeneratorConfig(method=method)
            bar = tqdm(total=config.steps, desc=f"  {method}", unit="step", leave=False)

            def on_step(step: int, total: int, loss: float, bar: Any = bar) -> None:
                bar.update(1)

            rec, _ = train_generator(
                reg, BASE_MODEL, config, on_progress=lambda m: err.print(f"  {m}"),
                on_step=on_step,
            )  # fmt: skip
            bar.close()
            out.print(f"  {method}: generator {rec.id} trained on {len(rec.training_adapter_ids)}")
        else:
            out.print(f"  {method}: generator {rec.id} (reused)")
        found[method] = rec
    return found


def _generated(reg: Any, task: Any, generator: Any) -> None:
    """Generate for ``task``'s description and score it against the bare model (cached)."""
    from generator.serve.generate import generate_adapters

    out.print("[bold]4/5[/] a new adapter for a description no expert was trained on:")
    out.print(f"  “{task.description}”")
    (rec, made), = generate_adapters(
        reg, [_request(task.description)], base_model=BASE_MODEL, method="sg-lora",
        generator_id=generator.id,
    )  # fmt: skip
    cache = reg.settings.results_dir / "demo.json"
    scores = _cached(cache, rec.id)
    if scores is None:
        from generator.tasks.evaluation import Evaluator

        with err.status(f"  scoring on {len(task.test)} test examples of {task.name}..."):
            evaluator = Evaluator.from_path(reg.base_model_path(BASE_MODEL))
            bare = evaluator.accuracy(task).accuracy
            generated = evaluator.accuracy(task, (made.config, made.weights)).accuracy
        scores = {"adapter_id": rec.id, "task": task.name, "bare": bare, "generated": generated}
        from registry.blobs import write_atomic

        write_atomic(cache, json.dumps(scores, indent=2).encode())
    neighbours = ", ".join(f"{n.name} ({n.weight:.2f})" for n in made.neighbours)
    out.print(f"  adapter {rec.id} ({rec.name}) from experts: {neighbours}")
    out.print(
        f"  accuracy on {task.name}: bare model {scores['bare']:.3f} -> generated adapter "
        f"[bold]{scores['generated']:.3f}[/]"
    )


def _request(description: str) -> Any:
    from generator.serve.generator import Request

    return Request(description, seed=0)


def _cached(path: Path, adapter_id: int) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("adapter_id") == adapter_id else None


def _admin_key(reg: Any) -> str:
    """The demo's admin key: the one kept in $LORAMINT_HOME (0600) while it still works."""
    from registry.blobs import write_atomic

    path: Path = reg.settings.home / KEY_FILE
    try:
        secret = path.read_text().strip()
    except OSError:
        secret = ""
    if secret:
        rec = reg.authenticate(secret)
        if rec is not None and rec.role == "admin":
            return secret
    _, created = reg.create_api_key(f"demo-admin-{os.getpid()}", "admin")
    write_atomic(path, (str(created) + "\n").encode())  # mkstemp: readable by its owner only
    return str(created)
