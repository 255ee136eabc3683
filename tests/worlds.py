"""Worlds and live processes several test modules share, typed: the tiny transfer
world (one zoo adapter on a tiny Llama, a tiny Gemma3 as the target), the
environment that points a ``loramint`` subprocess at a world's registry, a real
``loramint serve`` on a free loopback port, and polling for what a process does."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bench.load import free_port, wait_serving
from generator.sandbox import tiny_task
from generator.tasks.task import Task
from generator.transfer.run import artifact_name
from generator.zoo.build import build_zoo
from generator.zoo.trainer import TrainConfig
from registry.service import Registry
from registry.settings import Settings

# small enough for 2 CPU cores, large enough that every stage does real work
FAST: dict[str, Any] = dict(
    samples=4, few_shot=3, gen_batch=4, max_new_tokens=12, max_rounds=2, min_kept=0,
    disc_negatives=4, disc_rank=4, disc_steps=8, disc_lr=2e-2,
    distill_steps=6, distill_batch=4, distill_lr=1e-2, max_answer_tokens=6,
)  # fmt: skip
T = TypeVar("T")
STAGE_ARTIFACTS = [artifact_name(s) for s in ("synthesize", "discriminator", "filter", "distill")]


@dataclass
class TransferWorld:
    registry: Registry
    settings: Settings
    source_id: int  # the zoo adapter of task "cat" (with its seeds) on ``base``
    base: str  # the tiny Llama (the source model)
    target: str  # the tiny Gemma3 (the target model)
    task: Task


def transfer_world(
    root: Path, tiny_base: Path, tiny_gemma: Path, embedder: Any, url: str | None = None
) -> TransferWorld:
    """A registry holding one tiny zoo adapter (task: "mentions a cat", with its seeds)."""
    settings = Settings(
        home=root / "home",
        database_url=url or f"sqlite:///{root}/r.db",
        model_cache=root / "models",
    )
    reg = Registry(settings, embedder=embedder)
    task = tiny_task("cat", "cat")
    config = TrainConfig(rank=4, alpha=8, steps=6, batch_size=8, lr=1e-2, snapshots=2)
    [entry] = build_zoo(reg, [task], base_model=str(tiny_base), config=config, evaluate=False)
    return TransferWorld(reg, settings, entry.adapter_id, str(tiny_base), str(tiny_gemma), task)


def sqlite_settings(root: Path) -> Settings:
    """A registry under ``root``: its home, a SQLite file and a model cache."""
    return Settings(
        home=root / "home", database_url=f"sqlite:///{root}/r.db", model_cache=root / "models"
    )


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """This process's environment pointed at ``settings``' registry (for a subprocess)."""
    return dict(os.environ) | settings.environment() | extra


def server_env(settings: Settings) -> dict[str, str]:
    """The environment of a test server on ``settings``' registry (rate limits lifted)."""
    return cli_env(settings, LORAMINT_API_RATE="1000", LORAMINT_API_BURST="100000")


@contextlib.contextmanager
def live_server(env: dict[str, str], log_path: Path, *args: str) -> Iterator[str]:
    """``loramint serve ARGS`` on a free loopback port; yields its URL once /health
    answers from every process (``--workers N`` in ARGS: N of them, each /health on a
    new connection), and stops it on exit. Its output goes to ``log_path``."""
    processes = int(args[args.index("--workers") + 1]) if "--workers" in args else 1
    port = free_port()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--port", str(port), *args],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            if not wait_serving(proc, url, processes, timeout=120):
                raise RuntimeError(log_path.read_text())
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """Poll ``predicate`` until it returns something truthy (returned), or fail after
    ``timeout`` seconds naming ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
