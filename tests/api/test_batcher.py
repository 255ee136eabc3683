"""The micro-batcher keeps nothing per request key for longer than it is used: a
caller who sends a new base-model string with every request cannot grow it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from api.batcher import GenerationBatcher
from generator.sandbox import SandboxWorld, train_generators
from generator.serve.generator import Request
from registry.errors import LoramintError
from registry.service import Registry


def test_idle_keys_are_dropped(registry: Registry) -> None:
    async def run() -> None:
        batcher = GenerationBatcher(registry, window=0.001, idle=0.2)
        for i in range(50):  # fifty keys nobody will use again
            with pytest.raises(LoramintError):
                await batcher.generate(Request("x"), base_model=f"nope-{i}", method=None)
        assert 0 < len(batcher._queues) <= 50
        await asyncio.sleep(0.6)
        assert batcher._queues == {} and batcher._tasks == {}
        await batcher.close()

    asyncio.run(run())


def test_a_batch_runs_with_its_thread_count_and_gives_the_rest_back() -> None:
    import torch

    from api.batcher import torch_threads

    before = torch.get_num_threads()
    with torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(before + 2):
        raise RuntimeError("a failed batch")
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


class Recorder:
    """A batch generator that takes ``seconds`` and records how many ran at once: the
    batcher's scheduling under test, without a model."""

    def __init__(self, seconds: float) -> None:
        import threading

        self.seconds = seconds
        self.lock = threading.Lock()
        self.now = self.most = self.most_with_examples = 0
        self.with_examples = 0
        self.sizes: list[int] = []
        self.threads: list[int] = []  # torch threads each batch ran with

    def __call__(self, registry: Registry, requests: list[Request], **_: object) -> list[Any]:
        import time

        import torch

        examples = any(r.fewshot is not None for r in requests)
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.with_examples += examples
            self.most_with_examples = max(self.most_with_examples, self.with_examples)
            self.sizes.append(len(requests))
            self.threads.append(torch.get_num_threads())
        time.sleep(self.seconds)
        with self.lock:
            self.now -= 1
            self.with_examples -= examples
        return [(r.description, r.seed) for r in requests]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_up_to_workers_batches_run_at_once_and_each_caller_gets_its_own(
    registry: Registry, workers: int
) -> None:
    from generator.adapt.examples import FewShot

    shots = FewShot.parse([("a cat", "yes"), ("a car", "no")], None)
    recorder = Recorder(0.15)

    async def run() -> None:
        batcher = GenerationBatcher(
            registry, window=0.0, max_batch=2, workers=workers, generate=recorder
        )
        # 12 zero-shot requests at once (batches of two), then 4 with examples
        plain = [Request(f"task {i}", seed=i) for i in range(12)]
        results: list[Any] = await asyncio.gather(
            *(batcher.generate(r, base_model="m", method=None) for r in plain)
        )
        assert results == [(r.description, r.seed) for r in plain]
        fewshot = [Request(f"shot {i}", seed=i, fewshot=shots) for i in range(4)]
        await asyncio.gather(*(batcher.generate(r, base_model="m", method=None) for r in fewshot))
        await batcher.close()

    asyncio.run(run())
    assert recorder.most == workers  # every worker busy, never more
    assert recorder.most_with_examples == 1  # the base model runs one batch at a time
    assert max(recorder.sizes) == 2 and sum(recorder.sizes) == 16


def test_a_batcher_needs_a_worker_and_a_thread(registry: Registry) -> None:
    with pytest.raises(ValueError, match="workers and threads must be at least 1"):
        GenerationBatcher(registry, workers=0)
    with pytest.raises(ValueError, match="workers and threads must be at least 1"):
        GenerationBatcher(registry, threads=0)


@pytest.mark.parametrize("threads", [None, 3])
def test_zero_shot_batches_run_on_their_threads_and_batches_with_examples_on_the_process(
    registry: Registry, threads: int | None
) -> None:
    """One torch thread by default, alone or side by side; a batch with examples runs the
    base model with the process's threads; each gives its count back."""
    import torch

    from generator.adapt.examples import FewShot

    before = torch.get_num_threads()
    shots = FewShot.parse([("a cat", "yes"), ("a car", "no")], None)
    recorder = Recorder(0.15)

    async def run() -> None:
        batcher = (
            GenerationBatcher(registry, window=0.0, max_batch=1, workers=2, generate=recorder)
            if threads is None  # the default
            else GenerationBatcher(
                registry, window=0.0, max_batch=1, workers=2, generate=recorder, threads=threads
            )
        )
        await batcher.generate(Request("alone"), base_model="m", method=None)
        together = [Request(f"task {i}") for i in range(2)]
        await asyncio.gather(*(batcher.generate(r, base_model="m", method=None) for r in together))
        await batcher.generate(Request("shot", fewshot=shots), base_model="m", method=None)
        await batcher.close()

    asyncio.run(run())
    assert recorder.threads == [threads or 1] * 3 + [before]
    assert torch.get_num_threads() == before


def test_the_window_is_waited_only_while_another_batch_runs(registry: Registry) -> None:
    """A lone request to an idle generator starts at once, not after the window (here
    30 s); requests that arrive while a batch runs wait for the window (or a full batch)
    and go together."""
    recorder = Recorder(1.0)

    async def started(count: int) -> None:
        while len(recorder.sizes) < count:
            await asyncio.sleep(0.01)

    async def run() -> None:
        batcher = GenerationBatcher(registry, window=30.0, max_batch=3, workers=2,
                                    generate=recorder)  # fmt: skip
        lone = asyncio.create_task(batcher.generate(Request("lone"), base_model="m", method=None))
        await asyncio.wait_for(started(1), 10)  # far less than the window
        assert recorder.sizes == [1]
        later = []
        for i in range(3):  # while the lone batch runs: they wait and fill one batch
            later.append(
                asyncio.create_task(batcher.generate(Request(f"r{i}"), base_model="m", method=None))
            )
            await asyncio.sleep(0.02)
        await asyncio.wait_for(asyncio.gather(lone, *later), 10)
        assert recorder.sizes == [1, 3]
        await batcher.close()

    asyncio.run(run())


def test_warming_loads_each_base_models_serving_generator_and_registers_nothing(
    world: SandboxWorld,
) -> None:
    reg = world.registry
    train_generators(world, ("sg-lora", "icm-lora"))
    serving = reg.serving_generator(world.base, "sg-lora")
    assert serving is not None
    batcher = GenerationBatcher(reg)
    before = reg.count_adapters()
    assert batcher.warm() == [f"{world.base}: generator {serving.id}"]
    assert list(batcher._loaded._by_id) == [serving.id]
    assert reg.count_adapters() == before


def test_warming_a_registry_without_generators_loads_nothing(registry: Registry) -> None:
    batcher = GenerationBatcher(registry)
    assert batcher.warm() == [] and batcher._loaded._by_id == {}
