"""The registry's Python API on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import torch
from safetensors.torch import load_file, save_file

from registry.embeddings import MiniLMEmbedder
from registry.errors import (
    AdapterNotFound,
    Conflict,
    InvalidAdapter,
    InvalidDescription,
    InvalidInput,
    NotFound,
    TooLarge,
    UnknownBaseModel,
)
from registry.service import Parent, Registry
from tests.conftest import SettingsFor, make_lora

DESCRIPTIONS = {
    "sentiment": "Decide whether a movie review is positive or negative.",
    "french": "Translate English sentences into French.",
    "sql": "Write a SQL query that answers a question about a database table.",
    "animals": "Does this dictionary definition describe an animal? Answer yes or no.",
    "sports": "Classify a news article: is it about sport?",
}


@pytest.fixture(scope="module")
def adapters(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_lora(tiny_base, root / name, seed=i) for i, name in enumerate(DESCRIPTIONS)}


def snapshot(reg: Registry) -> tuple[tuple[Any, ...], int, list[str]]:
    """Everything a failed write must leave untouched."""
    with reg.engine.connect() as conn:
        counts = tuple(
            conn.execute(sa.text(f"select count(*) from {t}")).scalar()
            for t in (
                "adapters",
                "description_embeddings",
                "adapter_parents",
                "base_models",
                "adapter_artifacts",
            )
        )
    blobs = (
        sorted(p.name for p in reg.settings.blob_dir.rglob("*") if p.is_file())
        if reg.settings.blob_dir.exists()
        else []
    )
    return counts, reg.generation(), blobs


def test_add_get_list_export_delete(
    registry: Registry, tiny_base: Path, adapters: dict[str, Path], tmp_path: Path
) -> None:
    rec = registry.add_adapter(
        adapters["sentiment"],
        base_model=str(tiny_base),
        description=DESCRIPTIONS["sentiment"],
        name="sentiment",
    )
    assert rec.id and rec.name == "sentiment" and rec.rank == 4 and rec.alpha == 8
    assert rec.provenance == "imported" and rec.target_modules == ["q_proj", "v_proj"]
    assert registry.get_adapter(rec.id) == rec
    assert [r.id for r in registry.list_adapters(base_model=str(tiny_base))] == [rec.id]
    assert registry.find_adapter(str(tiny_base), "sentiment") == rec

    # export round trip is bit-exact
    out = registry.export_adapter(rec.id, tmp_path / "exported")
    assert (out / "adapter_model.safetensors").read_bytes() == (
        adapters["sentiment"] / "adapter_model.safetensors"
    ).read_bytes()
    assert json.loads((out / "adapter_config.json").read_text()) == json.loads(
        (adapters["sentiment"] / "adapter_config.json").read_text()
    )
    z = registry.export_adapter(rec.id, tmp_path / "exported.zip")
    with zipfile.ZipFile(z) as zf:
        assert (
            zf.read("adapter_model.safetensors") == (out / "adapter_model.safetensors").read_bytes()
        )

    registry.delete_adapter(rec.id)
    with pytest.raises(AdapterNotFound):
        registry.get_adapter(rec.id)
    assert registry.count_adapters() == 0
    assert not [
        p for p in registry.settings.blob_dir.rglob("*") if p.is_file()
    ]  # unused blob removed


def test_zip_upload(
    registry: Registry, tiny_base: Path, adapters: dict[str, Path], tmp_path: Path
) -> None:
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in adapters["french"].iterdir():
            zf.write(f, f"french/{f.name}")
    rec = registry.add_adapter(z, base_model=str(tiny_base), description=DESCRIPTIONS["french"])
    assert rec.name.startswith("translate-english-sentences-into-french-")


def test_search_finds_paraphrases(
    registry: Registry, tiny_base: Path, adapters: dict[str, Path]
) -> None:
    ids = {
        key: registry.add_adapter(
            path, base_model=str(tiny_base), description=DESCRIPTIONS[key], name=key
        ).id
        for key, path in adapters.items()
    }
    paraphrases = {
        "sentiment": "is this film critique favourable or unfavourable",
        "french": "convert text from English to French",
        "sql": "generate database queries from natural language questions",
        "animals": "tell me if a word's gloss refers to a creature",
        "sports": "detect athletics and football stories in the news",
    }
    for key, text in paraphrases.items():
        hits = registry.search(text, k=3)
        assert hits[0].adapter.id == ids[key], (text, [h.adapter.name for h in hits])
        assert hits[0].score > hits[1].score
    assert len(registry.search("anything", k=100)) == len(ids)
    assert registry.search("anything", k=2, base_model=str(tiny_base))


def test_index_is_derived_state(
    registry: Registry,
    tiny_base: Path,
    adapters: dict[str, Path],
    settings_for: SettingsFor,
    db_url: str,
    embedder: MiniLMEmbedder,
) -> None:
    a = registry.add_adapter(
        adapters["sql"], base_model=str(tiny_base), description=DESCRIPTIONS["sql"]
    )
    assert registry.search("database query", k=1)[0].adapter.id == a.id
    # a second process-like instance adds an adapter: the first one's index is stale and rebuilt
    other = Registry(settings_for(db_url), embedder=embedder)
    b = other.add_adapter(
        adapters["french"], base_model=str(tiny_base), description=DESCRIPTIONS["french"]
    )
    assert registry.search("translate to French", k=1)[0].adapter.id == b.id
    # losing the index files entirely is harmless
    for f in registry.settings.index_dir.iterdir():
        f.unlink()
    fresh = Registry(settings_for(db_url), embedder=embedder)
    assert fresh.search("translate to French", k=1)[0].adapter.id == b.id
    other.delete_adapter(b.id)
    assert [h.adapter.id for h in registry.search("translate to French", k=5)] == [a.id]
    other.close()
    fresh.close()


def test_lineage_metrics_and_conflicts(
    registry: Registry, tiny_base: Path, adapters: dict[str, Path]
) -> None:
    p = registry.add_adapter(
        adapters["animals"],
        base_model=str(tiny_base),
        description=DESCRIPTIONS["animals"],
        name="animals",
        provenance="trained",
        metrics={"accuracy": 0.8},
    )
    c = registry.add_adapter(
        adapters["sports"],
        base_model=str(tiny_base),
        description=DESCRIPTIONS["sports"],
        name="gen",
        provenance="generated",
        parents=[Parent(p.id, "neighbour", 0.7)],
        meta={"seed": 3},
    )
    got = registry.get_adapter(c.id)
    assert got.provenance == "generated" and got.meta == {"seed": 3}
    assert [(x.adapter_id, x.role, x.weight) for x in got.parents] == [(p.id, "neighbour", 0.7)]
    assert registry.update_metrics(p.id, {"f1": 0.5}).metrics == {"accuracy": 0.8, "f1": 0.5}
    assert [r.id for r in registry.list_adapters(provenance="generated")] == [c.id]
    before = snapshot(registry)
    with pytest.raises(Conflict, match="already exists"):
        registry.add_adapter(
            adapters["sports"], base_model=str(tiny_base), description="another", name="animals"
        )
    with pytest.raises(AdapterNotFound):
        registry.add_adapter(
            adapters["sql"], base_model=str(tiny_base), description="x", parents=[Parent(999)]
        )
    assert snapshot(registry) == before
    registry.delete_adapter(p.id)  # deleting a parent drops the lineage link, not the child
    assert registry.get_adapter(c.id).parents == []


def _variant(
    src: Path,
    dst: Path,
    *,
    config: dict[str, Any] | None = None,
    tensors: Callable[[dict[str, torch.Tensor]], None] | None = None,
) -> Path:
    dst.mkdir()
    cfg = json.loads((src / "adapter_config.json").read_text())
    (dst / "adapter_config.json").write_text(json.dumps({**cfg, **(config or {})}))
    weights = load_file(src / "adapter_model.safetensors")
    if tensors:
        tensors(weights)
    save_file(weights, dst / "adapter_model.safetensors")
    return dst


def _nan(w: dict[str, torch.Tensor]) -> None:
    k = sorted(w)[0]
    w[k] = w[k].clone()
    w[k][0, 0] = float("nan")


def _reshape(w: dict[str, torch.Tensor]) -> None:
    k = sorted(w)[0]
    w[k] = torch.zeros(w[k].shape[0], w[k].shape[1] + 1)


def _truncated_zip(src: Path, dst: Path) -> Path:
    z = dst.with_suffix(".zip")
    with zipfile.ZipFile(z, "w") as zf:
        for f in src.iterdir():
            zf.write(f, f.name)
    data = z.read_bytes()
    z.write_bytes(data[: len(data) - 100])
    return z


def _pickle(src: Path, dst: Path) -> Path:
    dst.mkdir()
    (dst / "adapter_config.json").write_bytes((src / "adapter_config.json").read_bytes())
    torch.save(load_file(src / "adapter_model.safetensors"), dst / "adapter_model.bin")
    return dst


def _no_config(src: Path, dst: Path) -> Path:
    dst.mkdir()
    (dst / "adapter_model.safetensors").write_bytes(
        (src / "adapter_model.safetensors").read_bytes()
    )
    return dst


BAD: list[tuple[str, Callable[[Path, Path], Path], dict[str, Any], type[Exception], str]] = [
    ("pickle .bin", lambda s, d: _pickle(s, d), {}, InvalidAdapter, "pickle"),
    (
        "shape mismatch",
        lambda s, d: _variant(s, d, tensors=_reshape),
        {},
        InvalidAdapter,
        "has shape",
    ),
    (
        "rank mismatch",
        lambda s, d: _variant(s, d, config={"r": 8}),
        {},
        InvalidAdapter,
        "has shape",
    ),
    ("NaN weights", lambda s, d: _variant(s, d, tensors=_nan), {}, InvalidAdapter, "NaN"),
    (
        "missing config",
        lambda s, d: _no_config(s, d),
        {},
        InvalidAdapter,
        "missing adapter_config.json",
    ),
    (
        "truncated zip",
        lambda s, d: _truncated_zip(s, d),
        {},
        InvalidAdapter,
        "truncated or corrupt",
    ),
    (
        "unknown base model",
        lambda s, d: s,
        {"base_model": "no-such-model"},
        UnknownBaseModel,
        "unknown base model",
    ),
    (
        "uncached hub id",
        lambda s, d: s,
        {"base_model": "nobody/nothing-here"},
        UnknownBaseModel,
        "not in the local Hugging Face cache",
    ),
    (
        "empty description",
        lambda s, d: s,
        {"description": "   "},
        InvalidDescription,
        "description is empty",
    ),
    ("huge description", lambda s, d: s, {"description": "x" * 5000}, InvalidDescription, "limit"),
    (
        "control characters",
        lambda s, d: s,
        {"description": "\x1b[31m\x00\x07"},
        InvalidDescription,
        "control character U.001B",
    ),
    (
        "a NUL inside text",
        lambda s, d: s,
        {"description": "Classify the\x00 sentiment"},
        InvalidDescription,
        "control character U.0000",
    ),
    ("bad name", lambda s, d: s, {"name": "../etc"}, InvalidInput, "adapter name"),
]


@pytest.mark.parametrize("case, make, kwargs, error, message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_changes_nothing(
    registry: Registry,
    tiny_base: Path,
    adapters: dict[str, Path],
    tmp_path: Path,
    case: str,
    make: Callable[[Path, Path], Path],
    kwargs: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    registry.add_adapter(
        adapters["sql"], base_model=str(tiny_base), description=DESCRIPTIONS["sql"]
    )
    registry.search("warm the index", k=1)
    before = snapshot(registry)
    path = make(adapters["sentiment"], tmp_path / "bad")
    args = {"base_model": str(tiny_base), "description": "a task", **kwargs}
    with pytest.raises(error, match=message):
        registry.add_adapter(path, **args)
    assert snapshot(registry) == before
    assert [h.adapter.description for h in registry.search("a task", k=10)] == [DESCRIPTIONS["sql"]]


def test_size_limit(
    db_url: str,
    settings_for: SettingsFor,
    embedder: MiniLMEmbedder,
    tiny_base: Path,
    adapters: dict[str, Path],
) -> None:
    reg = Registry(settings_for(db_url, max_adapter_bytes=1000), embedder=embedder)
    with pytest.raises(TooLarge):
        reg.add_adapter(adapters["sql"], base_model=str(tiny_base), description="x")
    assert reg.count_adapters() == 0
    reg.close()


def test_bad_list_arguments(registry: Registry) -> None:
    with pytest.raises(InvalidInput, match="provenance must be one of"):
        registry.list_adapters(provenance="stolen")
    with pytest.raises(InvalidInput, match="limit"):
        registry.list_adapters(limit=0)
    with pytest.raises(InvalidInput, match="offset"):
        registry.list_adapters(offset=-1)


@pytest.mark.parametrize("k", [0, -1, 1001])
def test_bad_k(registry: Registry, k: int) -> None:
    with pytest.raises(InvalidInput, match="k must be"):
        registry.search("x", k=k)


def test_failed_commit_leaves_no_blob(
    registry: Registry, tiny_base: Path, adapters: dict[str, Path]
) -> None:
    registry.add_adapter(
        adapters["sql"], base_model=str(tiny_base), description="first", name="dup"
    )
    before = snapshot(registry)
    with pytest.raises(Conflict):
        registry.add_adapter(
            adapters["french"], base_model=str(tiny_base), description="second", name="dup"
        )
    assert snapshot(registry) == before


def test_search_on_an_approximate_index_with_deletes(
    db_url: str,
    settings_for: SettingsFor,
    embedder: MiniLMEmbedder,
    tiny_base: Path,
    adapters: dict[str, Path],
) -> None:
    """exact_index_max=2 forces HNSW: deletes become tombstones, results stay right."""
    reg = Registry(settings_for(db_url, exact_index_max=2), embedder=embedder)
    ids = {
        k: reg.add_adapter(p, base_model=str(tiny_base), description=DESCRIPTIONS[k], name=k).id
        for k, p in adapters.items()
    }
    bm = reg.list_base_models()[0].id
    assert reg.index_for(bm).kind == "hnsw"
    assert reg.search("film review polarity", k=1)[0].adapter.id == ids["sentiment"]
    reg.delete_adapter(ids["sentiment"])
    hits = reg.search("film review polarity", k=5)
    assert ids["sentiment"] not in [h.adapter.id for h in hits] and len(hits) == 4
    # a fresh process loads the saved index (with its tombstones) and agrees
    other = Registry(settings_for(db_url, exact_index_max=2), embedder=embedder)
    assert [h.adapter.id for h in other.search("film review polarity", k=5)] == [
        h.adapter.id for h in hits
    ]
    reg.close()
    other.close()


def test_artifacts_live_and_die_with_their_adapter(
    registry: Registry, tiny_base: Path, adapters: dict[str, Path]
) -> None:
    rec = registry.add_adapter(
        adapters["sql"],
        base_model=str(tiny_base),
        description="x",
        artifacts={"trajectory": b"stats", "seeds.jsonl": b"{}"},
    )
    assert registry.artifact_names(rec.id) == ["seeds.jsonl", "trajectory"]
    assert registry.artifact(rec.id, "trajectory") == b"stats"
    with pytest.raises(NotFound):
        registry.artifact(rec.id, "nope")
    registry.delete_adapter(rec.id)
    assert not [p for p in registry.settings.blob_dir.rglob("*") if p.is_file()]
    with pytest.raises(InvalidInput, match="artifact name"):
        registry.add_adapter(
            adapters["sql"], base_model=str(tiny_base), description="x", artifacts={"../x": b""}
        )


def test_default_names_differ_when_descriptions_do(
    registry: Registry, tiny_base: Path, adapters: dict[str, Path]
) -> None:
    common = "Detect the sentiment of product reviews written by customers of the shop, variant "
    a = registry.add_adapter(adapters["sql"], base_model=str(tiny_base), description=common + "one")
    b = registry.add_adapter(adapters["sql"], base_model=str(tiny_base), description=common + "two")
    assert a.name != b.name and a.sha256 == b.sha256


def test_a_precomputed_embedding_is_used_and_checked(
    registry: Registry, tiny_base: Path, adapters: dict[str, Path]
) -> None:
    text = DESCRIPTIONS["animals"]
    vector = registry.embedder.encode([DESCRIPTIONS["sql"]])[0]  # deliberately another text's
    before = snapshot(registry)
    with pytest.raises(InvalidInput, match="embedding has 3 numbers"):
        registry.add_adapter(
            adapters["animals"], base_model=str(tiny_base), description=text,
            embedding=vector[:3],
        )  # fmt: skip
    assert snapshot(registry) == before
    rec = registry.add_adapter(
        adapters["animals"], base_model=str(tiny_base), description=text, embedding=vector
    )
    # Stored as given: the SQL description finds it with similarity 1.
    hit = registry.search(DESCRIPTIONS["sql"], k=1)[0]
    assert hit.adapter.id == rec.id and hit.score == pytest.approx(1.0, abs=1e-4)
    # A description that needs cleaning is embedded afresh, not with the caller's vector.
    other = registry.add_adapter(
        adapters["sports"], base_model=str(tiny_base), description=f"  {text}  ",
        embedding=vector, name="cleaned",
    )  # fmt: skip
    assert registry.search(text, k=1)[0].adapter.id == other.id


def test_names_keep_the_words_that_tell_descriptions_apart() -> None:
    from registry.validation import keyword_slug

    template = "Does this dictionary definition describe a {}? Answer yes or no."
    assert keyword_slug(template.format("plant"), 40) == "plant"
    assert keyword_slug(template.format("boat"), 40) == "boat"
    assert keyword_slug("Translate pirate speak into plain English", 20) == "translate-pirate-spe"
    assert keyword_slug("Is it the one?", 40) == "is-it-the-one"  # nothing left: the plain slug
