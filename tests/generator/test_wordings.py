"""Experts whose task has several wordings (suite v2's paraphrases): the zoo keeps them,
retrieval keys on their mean, and ICM-LoRA trains on each."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from generator.experts import ExpertBank
from generator.fit.config import GeneratorConfig
from generator.fit.icm import fit_icm
from generator.sandbox import TASKS, ZOO_CONFIG, SandboxWorld, tiny_task
from generator.zoo.build import build_zoo
from registry.service import Registry
from registry.settings import Settings


def test_paraphrases_are_kept_keyed_by_their_mean_and_trained_on(
    world: SandboxWorld, tmp_path: Path
) -> None:
    settings = Settings(
        home=tmp_path / "home", database_url=f"sqlite:///{tmp_path}/r.db",
        model_cache=tmp_path / "models",
    )  # fmt: skip
    reg = Registry(settings, embedder=world.registry.embedder)
    tasks = []
    for i, (name, word) in enumerate(TASKS[:3]):
        task = tiny_task(name, word)
        if i < 2:  # the third keeps its one description
            wordings = [task.description, f"Is a {word} named?", f"Find the word {word}."]
            task = dataclasses.replace(task, meta={"paraphrases": wordings})
        tasks.append(task)
    build_zoo(reg, tasks, base_model=world.base, config=ZOO_CONFIG, evaluate=False)
    cat = reg.find_adapter(world.base, "zoo-cat")
    assert cat is not None and cat.meta["paraphrases"][1] == "Is a cat named?"

    bank = ExpertBank.from_registry(reg, world.base)
    assert [len(w) for w in bank.wordings] == [3, 3, 1]
    # each wording's vector is its text's embedding (to bfloat16 rounding, which depends
    # on the batch it ran in: the bank embeds every expert's wordings in one call) ...
    texts = [*tasks[0].meta["paraphrases"]]
    each = torch.nn.functional.normalize(torch.as_tensor(reg.embedder.encode(texts)), dim=-1)
    assert float((bank.wordings[0] - each).abs().max()) < 3e-3
    # ... and the key is exactly the normalised mean of those vectors
    mean = torch.nn.functional.normalize(bank.wordings[0].mean(0), dim=-1)
    assert torch.allclose(bank.embeddings[0], mean, atol=1e-6)
    # one wording: its own vector as key, with no mean taken; that vector is the
    # description's embedding (to bfloat16 rounding, which depends on the batch it ran in)
    assert torch.equal(bank.embeddings[2], bank.wordings[2][0])
    own = reg.embedder.encode([tasks[2].description])[0]
    assert float(np.abs(bank.embeddings[2].numpy() - own).max()) < 3e-3

    # ICM-LoRA trains on every wording: the same bank with only the first wordings
    # trains another network
    first = ExpertBank(
        bank.base_model, bank.layout, bank.template, bank.experts,
        torch.stack([w[0] for w in bank.wordings]),
    )  # fmt: skip
    config = GeneratorConfig(method="icm-lora", hidden=16, latent=4, steps=6, val_fraction=0.0)
    several = fit_icm(bank, config, None, hidden_size=8).checkpoint.net.state_dict()
    single = fit_icm(first, config, None, hidden_size=8).checkpoint.net.state_dict()
    assert any(not torch.equal(several[k], single[k]) for k in several)
