"""Generated adapters kept as recipes (registry.recipes) on the sandbox world: the
rebuilt weights are the generated ones, bit for bit, in another process with
another thread count and alone instead of in a batch; generators and experts are
never deleted from under a recipe; materialising stores the same bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from generator.fit.config import GeneratorConfig
from generator.fit.train import train_generator
from generator.sandbox import SandboxWorld
from generator.serve.generate import generate_adapters
from generator.serve.generator import DECODER, Generated, Request
from registry.blobs import sha256_hex
from registry.errors import Conflict
from registry.records import AdapterRecord, GeneratorRecord
from registry.service import Parent, Registry

DESCRIPTIONS = [
    "Does the text mention the moon? Answer yes or no.",
    "Does the text mention a fish? Answer yes or no.",
    "Is a cat named in this text? Answer yes or no.",
    "Does it talk about a car or a tree? Answer yes or no.",
    "Is the sun in the text? Answer yes or no.",
]

REBUILD = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[1]))
from registry.service import Parent, Registry
reg = Registry()
ids = json.loads(sys.argv[2])
print(json.dumps({i: __import__("hashlib").sha256(reg.adapter_files(i).weights).hexdigest()
                  for i in ids}))
"""


@pytest.fixture(scope="module")
def sg(world: SandboxWorld) -> GeneratorRecord:
    cfg = GeneratorConfig(hidden=32, latent=4, steps=20, eval_every=10, val_fraction=0.2)
    rec, _ = train_generator(world.registry, world.base, cfg, name="recipes-sg")
    return rec


@pytest.fixture(scope="module")
def corrected(world: SandboxWorld, sg: GeneratorRecord) -> GeneratorRecord:
    """``sg`` with a correction: its writers set to small random numbers, so that its
    decode runs the whole network (``sg`` itself kept none on this world and decodes
    its mixture mean alone)."""
    import torch

    from generator.hypernet.checkpoint import Checkpoint

    reg = world.registry
    ckpt = Checkpoint.from_bytes(reg.generator_checkpoint(sg.id))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for writer in ckpt.net.codec.writers.values():
            for p in writer.parameters():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return reg.add_generator(
        ckpt.to_bytes(), base_model=sg.base_model, method=sg.method, name="recipes-corrected",
        training_adapter_ids=sg.training_adapter_ids, hyperparameters=ckpt.hyper,
        metrics=sg.metrics,
    )  # fmt: skip


def generate(
    reg: Registry, world: SandboxWorld, gen: GeneratorRecord, seeds: list[int]
) -> list[tuple[AdapterRecord, Generated]]:
    requests = [Request(d, seed=s) for d in DESCRIPTIONS for s in seeds]
    return generate_adapters(
        reg, requests, base_model=world.base, method="sg-lora", generator_id=gen.id
    )


def mark_decoded_by(
    reg: Registry, adapter_id: int, decoder: str, *, sha256: str | None = None
) -> None:
    """Make a recipe row look as another decoder version left it (and its checksum)."""
    import sqlalchemy as sa

    with reg.engine.begin() as conn:
        conn.execute(
            sa.text("update adapter_recipes set decoder = :d where adapter_id = :i"),
            {"d": decoder, "i": adapter_id},
        )
        if sha256 is not None:
            conn.execute(
                sa.text("update adapters set sha256 = :s where id = :i"),
                {"s": sha256, "i": adapter_id},
            )


@pytest.mark.parametrize("which", ["sg", "corrected"])
def test_a_batch_is_kept_as_recipes_rebuilt_bit_exact_elsewhere(
    world: SandboxWorld, which: str, request: pytest.FixtureRequest
) -> None:
    """Both decodes: the mixture mean alone (``sg``) and the whole network (``corrected``)."""
    from generator.serve.generator import Generator

    reg = world.registry
    sg = request.getfixturevalue(which)
    decoder = Generator.from_registry(reg, sg).decoder
    assert decoder is not None and decoder.mixture_only == (which == "sg")
    made = generate(reg, world, sg, [11, 12])
    assert len(made) == 10 and {r.stored for r, _ in made} == {"recipe"}
    recipe = reg.recipe(made[0][0].id)
    assert recipe is not None and recipe.generator_id == sg.id and recipe.seed == 11
    # in this process, from the cache, then rebuilt after the cache is emptied
    for record, _ in made:
        assert sha256_hex(reg.adapter_files(record.id).weights) == record.sha256
    reg.cache = type(reg.cache)(reg.cache.capacity)
    assert sha256_hex(reg.adapter_files(made[3][0].id).weights) == made[3][0].sha256
    # in fresh processes, one decode per adapter, with one and with three threads
    ids = [r.id for r, _ in made]
    expected = {str(r.id): r.sha256 for r, _ in made}
    for threads in ("1", "3"):
        proc = subprocess.run(
            [sys.executable, "-c", REBUILD, threads, json.dumps(ids)],
            env=os.environ | world.environment(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout.strip().splitlines()[-1]) == expected


def test_materialising_stores_the_same_bytes(world: SandboxWorld, sg: GeneratorRecord) -> None:
    reg = world.registry
    [(record, _)] = generate_adapters(
        reg, [Request("Is there a bird here? Answer yes or no.", seed=5)],
        base_model=world.base, method="sg-lora", generator_id=sg.id,
    )  # fmt: skip
    before = reg.adapter_zip(record.id)
    kept = reg.materialise_adapter(record.id)
    assert kept.stored == "weights" and kept.sha256 == record.sha256
    assert reg.adapter_zip(record.id) == before  # the download does not change
    assert reg.recipe(record.id) is not None  # the story stays


def test_a_generator_with_recipes_is_deleted_only_after_materialising(
    world: SandboxWorld, tmp_path: Path
) -> None:
    reg = world.registry
    cfg = GeneratorConfig(hidden=32, latent=4, steps=10, val_fraction=0.2)
    gen, _ = train_generator(reg, world.base, cfg, name="to-delete")
    made = generate(reg, world, gen, [21])
    with pytest.raises(Conflict, match="materialise") as refused:
        reg.delete_generator(gen.id)
    assert str(made[0][0].id) in str(refused.value)
    assert reg.get_generator(gen.id).id == gen.id  # nothing changed
    # a newer generator (a retrain) changes nothing for them either
    newer, _ = train_generator(reg, world.base, cfg, name="retrained")
    for record, _ in made:
        assert sha256_hex(reg.adapter_files(record.id).weights) == record.sha256
    reg.delete_generator(gen.id, materialise=True)
    reg.cache = type(reg.cache)(reg.cache.capacity)
    for record, _ in made:
        again = reg.get_adapter(record.id)
        assert again.stored == "weights"
        assert sha256_hex(reg.adapter_files(record.id).weights) == record.sha256
    reg.delete_generator(newer.id)


def test_deleting_an_expert_materialises_what_was_built_from_it(
    world: SandboxWorld, sg: GeneratorRecord
) -> None:
    """Delete-then-rebuild would mix one expert fewer: the children are stored first."""
    reg = world.registry
    made = generate(reg, world, sg, [31])
    expert_id = made[0][0].parents[0].adapter_id
    children = [r for r, _ in made if expert_id in {p.adapter_id for p in r.parents}]
    assert children
    reg.delete_adapter(expert_id)
    reg.cache = type(reg.cache)(reg.cache.capacity)
    for child in children:
        assert reg.get_adapter(child.id).stored == "weights"
        assert sha256_hex(reg.adapter_files(child.id).weights) == child.sha256


def test_a_recipe_of_another_decoder_version_says_what_to_do(
    world: SandboxWorld, sg: GeneratorRecord
) -> None:

    from registry.errors import CorruptBlob

    reg = world.registry
    [(record, _)] = generate_adapters(
        reg, [Request("Does a tree appear? Answer yes or no.", seed=9)],
        base_model=world.base, method="sg-lora", generator_id=sg.id,
    )  # fmt: skip
    mark_decoded_by(reg, record.id, "0")
    reg.cache = type(reg.cache)(reg.cache.capacity)
    with pytest.raises(CorruptBlob, match="materialise"):
        reg.adapter_files(record.id)
    mark_decoded_by(reg, record.id, DECODER)  # back as made, for the tests that delete experts


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_recipe_of_an_earlier_decoder_is_rebuilt_with_its_arithmetic(
    world: SandboxWorld, sg: GeneratorRecord, version: str
) -> None:
    import torch

    from generator.serve.generate import LoadedGenerators
    from generator.serve.rebuild import decode_v1
    from registry.lora_spec import weights_bytes

    reg = world.registry
    seed = 4 + int(version)
    [(record, made)] = generate_adapters(
        reg, [Request(f"Is a bicycle mentioned ({version})? Answer yes or no.", seed=seed)],
        base_model=world.base, method="sg-lora", generator_id=sg.id,
    )  # fmt: skip
    generator = LoadedGenerators(reg).serving(world.base, "sg-lora", sg.id)
    assert made.embedding is not None
    if version == "1":
        old = decode_v1(generator, made.embedding, seed)
    else:
        request = Request(made.description, seed=seed)
        [again] = generator.generate([request], vectors=made.embedding[None, :], decoder=version)
        old = again.weights
    # the versions compute the same function; only their rounding differs, so only the
    # recorded version gives the recipe's bytes
    for key, tensor in old.items():
        assert torch.allclose(tensor, made.weights[key], rtol=0, atol=1e-6)
    assert weights_bytes(old) != weights_bytes(made.weights)
    # the row as that version left it: its version and the bytes it decoded to
    mark_decoded_by(reg, record.id, version, sha256=sha256_hex(weights_bytes(old)))
    reg.cache = type(reg.cache)(reg.cache.capacity)
    assert reg.adapter_files(record.id).weights == weights_bytes(old)


def test_a_generator_kept_loaded_stops_mixing_an_expert_deleted_elsewhere(
    world: SandboxWorld, sg: GeneratorRecord
) -> None:
    """A server keeps its generator loaded; an expert deleted by another process (here,
    another Registry on the same database) must drop out of its mixtures, or its
    recipes would not rebuild anywhere else."""
    from generator.serve.generate import LoadedGenerators
    from registry.recipes_store import NewRecipe

    reg = world.registry
    loaded = LoadedGenerators(reg)
    request = [Request("Is a lamp in this text? Answer yes or no.", seed=3)]
    [(first, _)] = generate_adapters(
        reg, request, base_model=world.base, method="sg-lora", generator_id=sg.id, loaded=loaded
    )  # fmt: skip
    expert_id = first.parents[0].adapter_id
    other = Registry(reg.settings)
    try:
        other.delete_adapter(expert_id)
    finally:
        other.close()
    [(again, made)] = generate_adapters(
        reg, [Request("Is a lamp in this text? Answer yes or no.", seed=4)],
        base_model=world.base, method="sg-lora", generator_id=sg.id, loaded=loaded,
    )  # fmt: skip
    assert expert_id not in {p.adapter_id for p in again.parents}
    assert again.stored == "recipe"
    reg.cache = type(reg.cache)(reg.cache.capacity)
    assert sha256_hex(reg.adapter_files(again.id).weights) == again.sha256
    # a recipe that still names the deleted expert is refused, and nothing is written
    recipe = reg.recipe(again.id)
    assert recipe is not None and made.embedding is not None
    before = reg.count_adapters()
    stale = NewRecipe(
        name="stale-parent", description="Is a lamp in this text? Answer yes or no.",
        config=made.config, weights=reg.adapter_files(again.id).weights,
        embedding=made.embedding, recipe=recipe, parents=[Parent(expert_id, "expert", 1.0)],
        meta={},
    )  # fmt: skip
    with pytest.raises(Conflict, match=f"experts \\[{expert_id}\\] were deleted"):
        reg.add_recipes(world.base, [stale])
    assert reg.count_adapters() == before


def test_a_generator_without_an_expert_mixes_the_others_and_takes_it_back_after(
    world: SandboxWorld, sg: GeneratorRecord
) -> None:
    """``Generator.without`` (the leave-one-out study of few-shot settings) serves as
    though the expert were deleted inside the block, and as before after it."""
    import numpy as np

    from generator.serve.generator import Generator

    gen = Generator.from_registry(world.registry, sg)
    request = Request("Is a lamp in this text? Answer yes or no.", seed=3)
    [before] = gen.generate([request])
    nearest = before.neighbours[0].adapter_id
    with gen.without([nearest]):
        [inside] = gen.generate([request])
        assert nearest not in {n.adapter_id for n in inside.neighbours}
        query = np.asarray(inside.embedding) / np.linalg.norm(np.asarray(inside.embedding))
        assert nearest not in {e.id for e in gen.neighbours(query, 3)[0]}
    [after] = gen.generate([request])
    assert [n.adapter_id for n in after.neighbours] == [n.adapter_id for n in before.neighbours]
    for name, tensor in before.weights.items():
        assert after.weights[name].equal(tensor)
