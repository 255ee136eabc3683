"""Generator checkpoints in the registry, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from generator.sandbox import save_tiny_llama
from registry.errors import (
    Conflict,
    CorruptBlob,
    GeneratorNotFound,
    InvalidInput,
    UnknownBaseModel,
)
from registry.records import GeneratorRecord
from registry.service import Registry
from tests.conftest import make_lora


@pytest.fixture
def base(registry: Registry, tiny_base: Path) -> str:
    """The registered name of the tiny base model."""
    return registry.prepare_base_model(str(tiny_base)).name


def snapshot(reg: Registry) -> tuple[tuple[Any, ...], list[str]]:
    """Everything a failed generator write must leave untouched."""
    with reg.engine.connect() as conn:
        counts = tuple(
            conn.execute(sa.text(f"select count(*) from {t}")).scalar()
            for t in ("generators", "adapters", "base_models")
        )
    return counts, blob_files(reg)


def blob_files(reg: Registry) -> list[str]:
    root = reg.settings.blob_dir
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_add_get_list_latest_checkpoint(registry: Registry, base: str) -> None:
    first = registry.add_generator(
        b"sg checkpoint 1",
        base_model=base,
        method="sg-lora",
        training_adapter_ids=[3, 1, 2],
        hyperparameters={"lr": 1e-3, "layers": [64, 64]},
        metrics={"loss": 0.5},
    )
    assert first.name == f"sg-lora-{first.sha256[:12]}" and first.base_model == base
    assert first.method == "sg-lora" and first.size_bytes == len(b"sg checkpoint 1")
    assert first.training_adapter_ids == [3, 1, 2]
    assert first.hyperparameters == {"lr": 1e-3, "layers": [64, 64]}
    assert first.metrics == {"loss": 0.5} and first.created_at.tzinfo is not None
    assert registry.get_generator(first.id) == first
    assert registry.generator_checkpoint(first.id) == b"sg checkpoint 1"

    icm = registry.add_generator(b"icm checkpoint", base_model=base, method="icm-lora", name="icm")
    second = registry.add_generator(b"sg checkpoint 2", base_model=base, method="sg-lora")
    assert icm.training_adapter_ids == [] and icm.hyperparameters == {} and icm.metrics == {}

    assert [g.id for g in registry.list_generators()] == [second.id, icm.id, first.id]
    assert [g.id for g in registry.list_generators(method="sg-lora")] == [second.id, first.id]
    assert [g.id for g in registry.list_generators(base_model=base, method="icm-lora")] == [icm.id]
    assert registry.list_generators(base_model="no-such-model") == []
    assert [g.id for g in registry.list_generators(limit=1, offset=1)] == [icm.id]
    assert registry.latest_generator(base, "sg-lora") == second
    assert registry.latest_generator(base, "icm-lora") == icm
    assert registry.latest_generator(base, "other") is None
    assert registry.latest_generator("no-such-model", "sg-lora") is None

    updated = registry.update_generator_metrics(first.id, {"held_out_gain": 0.25})
    assert updated.metrics == {"loss": 0.5, "held_out_gain": 0.25}
    assert registry.get_generator(first.id) == updated


def test_names_are_unique_per_base_model(registry: Registry, base: str, tmp_path: Path) -> None:
    registry.add_generator(b"one", base_model=base, method="sg-lora", name="gen")
    registry.add_generator(b"same bytes", base_model=base, method="sg-lora")
    before = snapshot(registry)
    with pytest.raises(Conflict, match="already exists"):
        registry.add_generator(b"two", base_model=base, method="sg-lora", name="gen")
    # the default name comes from method and bytes: the same checkpoint twice collides
    with pytest.raises(Conflict, match="already exists"):
        registry.add_generator(b"same bytes", base_model=base, method="sg-lora")
    assert snapshot(registry) == before  # the shared blob of "same bytes" is kept

    other = registry.prepare_base_model(str(save_tiny_llama(tmp_path / "other", seed=1))).name
    rec = registry.add_generator(b"two", base_model=other, method="sg-lora", name="gen")
    assert rec.base_model == other
    assert [g.base_model for g in registry.list_generators(method="sg-lora")] == [other, base, base]
    assert registry.find_generator(other, "gen") == rec
    assert registry.find_generator(base, "gen") != rec
    assert registry.find_generator(base, "nope") is None


BAD = [
    ("empty checkpoint", {"checkpoint": b""}, "non-empty bytes"),
    ("str checkpoint", {"checkpoint": "weights"}, "non-empty bytes"),
    ("empty method", {"method": ""}, "generator method"),
    ("long method", {"method": "m" * 51}, "generator method"),
    ("spaced method", {"method": "sg lora"}, "generator method"),
    ("bad name", {"name": "../etc"}, "generator name"),
    ("NaN metric", {"metrics": {"loss": float("nan")}}, "metrics must be JSON"),
    ("object hyperparameter", {"hyperparameters": {"opt": object()}}, "hyperparameters"),
    ("float adapter id", {"training_adapter_ids": [1, 2.5]}, "not an integer"),
    ("bool adapter id", {"training_adapter_ids": [True]}, "not an integer"),
    ("str adapter ids", {"training_adapter_ids": "12"}, "sequence of adapter ids"),
]


@pytest.mark.parametrize("case, kwargs, message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_changes_nothing(
    registry: Registry, base: str, case: str, kwargs: dict[str, Any], message: str
) -> None:
    registry.add_generator(b"kept", base_model=base, method="sg-lora")
    before = snapshot(registry)
    args = {"checkpoint": b"new", "base_model": base, "method": "sg-lora", **kwargs}
    with pytest.raises(InvalidInput, match=message):
        registry.add_generator(**args)
    assert snapshot(registry) == before


def test_unknown_base_model_leaves_no_row_and_no_blob(registry: Registry, base: str) -> None:
    before = snapshot(registry)
    with pytest.raises(UnknownBaseModel, match="not registered"):
        registry.add_generator(b"orphan?", base_model="no-such-model", method="sg-lora")
    assert snapshot(registry) == before


def test_failed_commit_leaves_no_row_and_no_blob(
    registry: Registry, base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.add_generator(b"kept", base_model=base, method="sg-lora")
    before = snapshot(registry)

    def boom(row: object) -> GeneratorRecord:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(GeneratorRecord, "of", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        registry.add_generator(b"lost", base_model=base, method="sg-lora")
    monkeypatch.undo()
    assert snapshot(registry) == before


def test_bad_list_arguments(registry: Registry) -> None:
    with pytest.raises(InvalidInput, match="limit"):
        registry.list_generators(limit=0)
    with pytest.raises(InvalidInput, match="offset"):
        registry.list_generators(offset=-1)
    with pytest.raises(InvalidInput, match="metrics must be JSON"):
        registry.update_generator_metrics(1, {"loss": float("inf")})


def test_tampered_checkpoint_is_detected(registry: Registry, base: str) -> None:
    rec = registry.add_generator(b"checkpoint bytes", base_model=base, method="sg-lora")
    path = registry.settings.blob_dir / rec.sha256[:2] / rec.sha256[2:]
    path.write_bytes(b"checkpoint BYTES")  # same size, different content
    with pytest.raises(CorruptBlob, match=rec.sha256):
        registry.generator_checkpoint(rec.id)


def test_delete(registry: Registry, base: str) -> None:
    keep = registry.add_generator(b"keep", base_model=base, method="sg-lora")
    gone = registry.add_generator(b"gone", base_model=base, method="sg-lora")
    registry.delete_generator(gone.id)
    assert blob_files(registry) == [keep.sha256[2:]]
    assert [g.id for g in registry.list_generators()] == [keep.id]
    assert registry.latest_generator(base, "sg-lora") == keep
    for call in (
        registry.get_generator,
        registry.generator_checkpoint,
        registry.delete_generator,
        lambda i: registry.update_generator_metrics(i, {"x": 1}),
    ):
        with pytest.raises(GeneratorNotFound, match=f"no generator with id {gone.id}"):
            call(gone.id)
    registry.delete_generator(keep.id)
    assert registry.list_generators() == [] and blob_files(registry) == []
    # ids are never reused
    assert registry.add_generator(b"new", base_model=base, method="sg-lora").id > gone.id


def test_blobs_shared_with_adapters_outlive_either(
    registry: Registry, base: str, tiny_base: Path, tmp_path: Path
) -> None:
    """A checkpoint byte-identical to an adapter's weights shares its blob: deleting
    one of them must not take the bytes from the other."""
    folder = make_lora(tiny_base, tmp_path / "lora")
    weights = (folder / "adapter_model.safetensors").read_bytes()
    first = registry.add_adapter(folder, base_model=base, description="task one", name="one")
    gen = registry.add_generator(
        weights, base_model=base, method="sg-lora", training_adapter_ids=[first.id]
    )
    assert gen.sha256 == first.sha256

    registry.delete_adapter(first.id)
    assert registry.generator_checkpoint(gen.id) == weights
    assert registry.get_generator(gen.id).training_adapter_ids == [first.id]  # history survives

    second = registry.add_adapter(folder, base_model=base, description="task two", name="two")
    registry.delete_generator(gen.id)
    assert registry.adapter_files(second.id).weights == weights
    registry.delete_adapter(second.id)
    assert blob_files(registry) == []


def test_pins_choose_the_serving_generator(registry: Registry, base: str) -> None:
    old = registry.add_generator(b"one", base_model=base, method="sg-lora", name="old")
    icm = registry.add_generator(b"icm", base_model=base, method="icm-lora", name="icm")
    new = registry.add_generator(b"two", base_model=base, method="sg-lora", name="new")
    assert registry.serving_generator(base, "sg-lora") == new  # no pin: the newest
    assert registry.pinned_generator(base, "sg-lora") is None
    assert registry.pin_generator(old.id) == old
    newest = registry.add_generator(b"three", base_model=base, method="sg-lora", name="newest")
    assert registry.serving_generator(base, "sg-lora") == old  # a newer one does not take over
    assert registry.serving_generator(base, "icm-lora") == icm  # other methods are untouched
    registry.pin_generator(new.id)  # replaces the pin
    assert registry.pinned_generator_ids() == {new.id}
    assert registry.serving_generator(base, "sg-lora") == new
    with pytest.raises(Conflict, match="unpin it first"):
        registry.delete_generator(new.id)
    assert registry.get_generator(new.id) == new  # refused, unchanged
    with pytest.raises(Conflict, match="not pinned"):
        registry.unpin_generator(old.id)
    with pytest.raises(GeneratorNotFound):
        registry.pin_generator(10_000)
    assert registry.unpin_generator(new.id) == new
    assert registry.pinned_generator_ids() == set()
    assert registry.serving_generator(base, "sg-lora") == newest
    registry.delete_generator(new.id)  # unpinned, it can go
    assert registry.serving_generator("no-such-model", "sg-lora") is None
