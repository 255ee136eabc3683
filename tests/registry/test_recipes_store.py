"""The registry's side of recipe adapters and ``gc``, on SQLite and PostgreSQL. The
recipe builder is a fake injected into the registry (the generator's real rebuild
is tested in tests/generator/serve/test_recipes.py): it returns the weights of an
adapter file, keyed by seed, so a wrong seed or a changed expert shows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from registry import gc
from registry.blobs import sha256_hex
from registry.embeddings import MiniLMEmbedder
from registry.errors import Conflict, CorruptBlob, GeneratorNotFound, InvalidInput
from registry.recipes import Recipe, RecipeInput
from registry.recipes_store import NewRecipe
from registry.service import Parent, Registry
from tests.conftest import SettingsFor, make_lora


@pytest.fixture(scope="module")
def loras(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("recipe-loras")
    return [make_lora(tiny_base, root / f"l{i}", seed=i) for i in range(4)]


class SeedBuilder:
    """Rebuilds a recipe as the weights of ``loras[seed]`` (and counts its calls)."""

    def __init__(self, loras: list[Path]) -> None:
        self.loras, self.calls = loras, 0

    def __call__(self, registry: Registry, source: RecipeInput) -> bytes:
        self.calls += 1
        return (self.loras[source.recipe.seed] / "adapter_model.safetensors").read_bytes()


@pytest.fixture
def world(
    db_url: str,
    settings_for: SettingsFor,
    embedder: MiniLMEmbedder,
    loras: list[Path],
    tiny_base: Path,
) -> Iterator[tuple[Registry, SeedBuilder, int, int]]:
    """A registry with an expert (``loras[0]``) and a generator, and its builder."""
    builder = SeedBuilder(loras)
    reg = Registry(settings_for(db_url), embedder=embedder, builder=builder)
    expert = reg.add_adapter(loras[0], base_model=str(tiny_base), description="an expert")
    gen = reg.add_generator(
        b"checkpoint", base_model=str(tiny_base), method="sg-lora", training_adapter_ids=[expert.id]
    )
    yield reg, builder, expert.id, gen.id
    reg.close()


def recipes(
    reg: Registry, loras: list[Path], gen_id: int, expert_id: int, seeds: list[int]
) -> list[NewRecipe]:
    config = json.loads((loras[0] / "adapter_config.json").read_text())
    sha = reg.get_generator(gen_id).sha256
    return [
        NewRecipe(
            name=f"made-{seed}",
            description=f"made with seed {seed}",
            config=config,
            weights=(loras[seed] / "adapter_model.safetensors").read_bytes(),
            embedding=reg.embedder.encode([f"made with seed {seed}"])[0],
            recipe=Recipe(gen_id, sha, seed, "test/1"),
            parents=[Parent(expert_id, "expert", 1.0)],
            meta={"seed": seed},
        )
        for seed in seeds
    ]


def test_recipes_are_registered_in_one_go_and_rebuilt_on_download(
    world: tuple[Registry, SeedBuilder, int, int], loras: list[Path], tiny_base: Path
) -> None:
    reg, builder, expert, gen = world
    made = reg.add_recipes(str(tiny_base), recipes(reg, loras, gen, expert, [1, 2]))
    assert [r.stored for r in made] == ["recipe", "recipe"]
    with reg.engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from adapter_recipes")).scalar() == 2
        nulls = "select count(*) from adapters where blob_key is null"
        assert conn.execute(sa.text(nulls)).scalar() == 2
    # the same batch again returns the same adapters, writing nothing
    again = reg.add_recipes(str(tiny_base), recipes(reg, loras, gen, expert, [1, 2]))
    assert [r.id for r in again] == [r.id for r in made]
    # a batch that repeats one registered adapter registers only the new one
    mixed = reg.add_recipes(str(tiny_base), recipes(reg, loras, gen, expert, [2, 3, 3]))
    assert mixed[0].id == made[1].id and mixed[1].id == mixed[2].id
    assert mixed[1].id not in {r.id for r in made} and mixed[1].parents == made[0].parents
    with reg.engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from adapter_recipes")).scalar() == 3
        embedded = "select count(*) from description_embeddings"
        assert conn.execute(sa.text(embedded)).scalar() == 4  # the expert's and three
    # fresh from registration the weights are cached; an empty cache rebuilds them
    assert (
        reg.adapter_files(made[0].id).weights
        == (loras[1] / "adapter_model.safetensors").read_bytes()
    )
    assert builder.calls == 0
    reg.cache = type(reg.cache)(reg.cache.capacity)
    assert reg.adapter_zip(made[1].id)  # built, zipped with its card
    assert builder.calls == 1
    reg.adapter_files(made[1].id)
    assert builder.calls == 1  # cached
    # search finds them like any adapter
    assert made[0].id in [h.adapter.id for h in reg.search("made with seed 1", k=3)]


def test_a_rebuild_that_does_not_match_is_refused(
    world: tuple[Registry, SeedBuilder, int, int], loras: list[Path], tiny_base: Path
) -> None:
    reg, builder, expert, gen = world
    [made] = reg.add_recipes(str(tiny_base), recipes(reg, loras, gen, expert, [3]))
    reg.cache = type(reg.cache)(reg.cache.capacity)
    builder.loras = builder.loras[::-1]  # the generator "changed"
    with pytest.raises(CorruptBlob, match="sha256"):
        reg.adapter_files(made.id)


def test_generator_and_expert_deletes_never_strand_a_recipe(
    world: tuple[Registry, SeedBuilder, int, int], loras: list[Path], tiny_base: Path
) -> None:
    reg, builder, expert, gen = world
    made = reg.add_recipes(str(tiny_base), recipes(reg, loras, gen, expert, [1, 2]))
    with pytest.raises(Conflict, match=f"ids {made[0].id}, {made[1].id}"):
        reg.delete_generator(gen)
    assert reg.get_adapter(made[0].id).stored == "recipe"  # the refusal changed nothing
    # lineage the other way: the expert lists what was built from it
    assert [(c.adapter_id, c.role, c.stored) for c in reg.children(expert)] == [
        (made[0].id, "expert", "recipe"),
        (made[1].id, "expert", "recipe"),
    ]
    assert [g.id for g in reg.derived_generators(expert)] == [gen]
    # deleting the expert they mix stores their weights first, and they remember it
    name = reg.get_adapter(expert).name
    reg.delete_adapter(expert)
    for rec in made:
        child = reg.get_adapter(rec.id)
        assert child.stored == "weights" and reg.recipe(rec.id) is not None
        assert child.parents == []
        [gone] = child.meta["deleted_parents"]
        assert (gone["adapter_id"], gone["name"], gone["role"]) == (expert, name, "expert")
    reg.delete_generator(gen)  # nothing needs it now


def test_recipes_naming_a_deleted_expert_or_generator_are_refused_by_name(
    world: tuple[Registry, SeedBuilder, int, int], loras: list[Path], tiny_base: Path
) -> None:
    reg, _, expert, gen = world
    [item] = recipes(reg, loras, gen, expert, [1])
    other = reg.add_adapter(loras[2], base_model=str(tiny_base), description="another expert")
    reg.delete_adapter(other.id)  # deleted while the batch was being generated
    before = reg.count_adapters()
    stale = NewRecipe(
        **{**item.__dict__, "name": "stale", "parents": [Parent(other.id, "expert", 0.5)]}
    )
    with pytest.raises(Conflict, match=f"experts \\[{other.id}\\] were deleted"):
        reg.add_recipes(str(tiny_base), [item, stale])
    lost = Recipe(gen + 1000, item.recipe.generator_sha256, 1, "test/1")
    with pytest.raises(GeneratorNotFound, match=f"no generator with id {gen + 1000}$"):
        reg.add_recipes(str(tiny_base), [NewRecipe(**{**item.__dict__, "recipe": lost})])
    assert reg.count_adapters() == before
    assert reg.find_adapter(str(tiny_base), item.name) is None


def test_gc_reports_then_settles_orphans_and_missing_blobs(
    world: tuple[Registry, SeedBuilder, int, int], loras: list[Path], tiny_base: Path
) -> None:
    reg, builder, expert, gen = world
    [made] = reg.add_recipes(str(tiny_base), recipes(reg, loras, gen, expert, [2]))
    reg.materialise_adapter(made.id)
    other = reg.add_adapter(loras[3], base_model=str(tiny_base), description="plain upload")
    orphan = reg.blobs.put(b"left by a killed upload")
    blob = reg.settings.blob_dir
    for sha in (made.sha256, other.sha256):  # both weights' blobs go missing
        (blob / sha[:2] / sha[2:]).unlink()

    report = gc.collect(reg)
    assert report.orphans == [orphan] and report.orphan_bytes == len(b"left by a killed upload")
    actions = {(m.kind, m.ref): m.action for m in report.missing}
    assert actions == {
        ("adapter", str(made.id)): "back to its recipe",
        ("adapter", str(other.id)): "adapter deleted",
    }
    assert reg.blobs.exists(orphan) and reg.get_adapter(other.id)  # nothing changed

    gc.collect(reg, apply=True)
    assert not reg.blobs.exists(orphan)
    assert reg.get_adapter(made.id).stored == "recipe"
    assert (
        reg.adapter_files(made.id).weights == (loras[2] / "adapter_model.safetensors").read_bytes()
    )
    assert other.id not in [a.id for a in reg.list_adapters()]
    clean = gc.collect(reg)
    assert clean.orphans == [] and clean.missing == []


def test_recipes_validate_before_writing(
    world: tuple[Registry, SeedBuilder, int, int], loras: list[Path], tiny_base: Path
) -> None:
    reg, _, expert, gen = world
    bad = recipes(reg, loras, gen, expert, [1, 2])
    bad[1] = NewRecipe(**{**bad[1].__dict__, "embedding": np.zeros(3, dtype=np.float32)})
    before = reg.count_adapters()
    with pytest.raises(Exception, match="embedding"):
        reg.add_recipes(str(tiny_base), bad)
    bad[1] = NewRecipe(**{**recipes(reg, loras, gen, expert, [2])[0].__dict__, "name": "a/b"})
    with pytest.raises(InvalidInput, match="adapter name 'a/b' must be 1-200 letters"):
        reg.add_recipes(str(tiny_base), bad)
    assert reg.count_adapters() == before


@pytest.mark.parametrize("helpers", [True, False], ids=["helper-threads", "registering-thread"])
def test_each_recipe_records_its_own_weights_sha256(
    world: tuple[Registry, SeedBuilder, int, int],
    loras: list[Path],
    tiny_base: Path,
    helpers: bool,
) -> None:
    """Hashed on the helper threads (as served) or by the registering thread (the
    bench's baseline), each row gets the sha256 of its own weights, in batch order."""
    reg, _, expert, gen = world
    if not helpers:
        reg.hashing = None
    batch = recipes(reg, loras, gen, expert, [3, 1, 2])
    made = reg.add_recipes(str(tiny_base), batch)
    assert [r.sha256 for r in made] == [sha256_hex(item.weights) for item in batch]
    assert len({r.sha256 for r in made}) == 3
