"""A delete racing an upload of byte-identical weights never leaves the upload's row
without its blob (the two share one content-addressed blob; the delete used to remove
it while the upload was committing: 2 of 80 tries in a stress run)."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from registry.service import Registry
from tests.conftest import make_lora

ROUNDS = 200  # per database: 400 interleavings; the defect hit 2 of 80, so old code fails here


def race(
    first: Callable[[], Any], second: Callable[[], Any], delays: tuple[float, float]
) -> list[Any]:
    """Run both at once (released together, each after its delay): their results, or the
    exceptions they raised."""
    gate = threading.Barrier(2)
    out: list[Any] = [None, None]

    def run(i: int, call: Callable[[], Any]) -> None:
        gate.wait()
        threading.Event().wait(delays[i])
        try:
            out[i] = call()
        except Exception as exc:  # reported by the caller
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate((first, second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_delete_and_upload_of_the_same_weights_never_lose_the_blob(
    registry: Registry, tiny_base: Path, tmp_path: Path
) -> None:
    lora = make_lora(tiny_base, tmp_path / "lora")
    base = str(tiny_base)
    rng = random.Random(0)
    lost: list[str] = []
    for i in range(ROUNDS):
        old = registry.add_adapter(lora, base_model=base, description="shared", name=f"a{i}")
        deleted, new = race(
            partial(registry.delete_adapter, old.id),
            partial(
                registry.add_adapter, lora, base_model=base, description="shared", name=f"b{i}"
            ),
            (rng.random() * 0.002, rng.random() * 0.002),
        )
        assert not isinstance(deleted, Exception), f"round {i}: the delete failed: {deleted!r}"
        assert not isinstance(new, Exception), f"round {i}: the upload failed: {new!r}"
        try:
            registry.adapter_files(new.id)  # reads and verifies the blob
        except Exception as exc:  # a row whose blob is gone: the defect
            lost.append(f"round {i}: {exc}")
        registry.delete_adapter(new.id)
    assert lost == []
    assert registry.count_adapters() == 0
    assert not any(p.is_file() for p in registry.settings.blob_dir.glob("??/*"))
