"""The micro-batcher keeps nothing per request key for longer than it is used: a
caller who sends a new base-model string with every request cannot grow it."""

from __future__ import annotations

import asyncio

import pytest

from api.batcher import GenerationBatcher
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
