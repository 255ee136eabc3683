"""Generators end to end on a tiny random Llama zoo: train from the registry,
register the checkpoint, generate into the registry, export, load with PEFT,
score in the quality harness, and the CLI on top."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from generator.experts import ExpertBank
from generator.fit.config import GeneratorConfig
from generator.fit.train import train_generator
from generator.hypernet.checkpoint import Checkpoint
from generator.quality import evaluate, write
from generator.sandbox import TASKS, build_world
from generator.serve.generate import generate_adapters
from generator.serve.generator import Generator, Request
from generator.tasks.evaluation import Evaluator
from registry.errors import GeneratorNotFound, InvalidInput
from registry.service import Registry
from registry.settings import Settings


def tiny_world(root: Path, tiny_base: Path, embedder) -> dict:  # type: ignore[no-untyped-def]
    """A registry (SQLite file) holding a tiny zoo of five tasks plus one held-out task
    (``generator.sandbox.build_world``, as a dict for the tests that index it)."""
    w = build_world(root, embedder=embedder, base=tiny_base)
    return {"registry": w.registry, "suite": w.suite, "base": w.base, "settings": w.settings}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, embedder):  # type: ignore[no-untyped-def]
    w = tiny_world(tmp_path_factory.mktemp("gen"), tiny_base, embedder)
    yield w
    w["registry"].close()


def test_train_generate_register_export_and_load(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reg: Registry = world["registry"]
    base = world["base"]
    cfg = GeneratorConfig(hidden=32, latent=4, steps=20, eval_every=10, val_fraction=0.2)
    rec, metrics = train_generator(reg, base, cfg)
    held = reg.find_adapter(base, "zoo-moon")
    assert held is not None and held.id not in rec.training_adapter_ids
    assert len(rec.training_adapter_ids) == len(TASKS) and rec.method == "sg-lora"
    assert metrics["k"] >= 1 and metrics["val_experts"] == 1 and rec.metrics["parameters"] > 0
    ckpt = Checkpoint.from_bytes(reg.generator_checkpoint(rec.id))
    assert ckpt.expert_ids == rec.training_adapter_ids

    desc = "Does the text mention the moon? Answer yes or no."
    [(made, gen)] = generate_adapters(
        reg, [Request(desc, seed=7)], base_model=base, method="sg-lora"
    )
    assert made.provenance == "generated" and made.meta["generator_id"] == rec.id
    assert made.meta["seed"] == 7 and made.meta["neighbours"]
    assert {p.adapter_id for p in made.parents} <= set(rec.training_adapter_ids)
    assert all(p.role == "expert" for p in made.parents)
    # the same request again is the same registered adapter
    [(again, _)] = generate_adapters(
        reg, [Request(desc, seed=7)], base_model=base, method="sg-lora"
    )
    assert again.id == made.id and reg.count_adapters() == len(TASKS) + 2

    out = reg.export_adapter(made.id, tmp_path / "gen")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(out))
    loaded = {k: v for k, v in model.state_dict().items() if "lora_B" in k}
    key = next(k for k in gen.weights if "lora_B" in k)
    peft_key = key.replace("lora_B.weight", "lora_B.default.weight")
    assert torch.allclose(loaded[peft_key], gen.weights[key])


def test_icm_with_and_without_examples(world) -> None:  # type: ignore[no-untyped-def]
    reg: Registry = world["registry"]
    base = world["base"]
    cfg = GeneratorConfig(
        method="icm-lora", hidden=32, latent=4, steps=20, eval_every=10, val_fraction=0.0
    )
    rec, metrics = train_generator(reg, base, cfg)
    assert metrics["task_vectors"] is True  # the zoo stored seed examples
    gen = Generator.from_registry(reg, rec)
    plain, shown = gen.generate(
        [
            Request("Does the text mention a fish?", seed=1),
            Request("Does the text mention a fish?", seed=1, examples=(("fish sun", "yes"),)),
        ]
    )
    assert plain.examples == 0 and shown.examples == 1
    assert any(not torch.equal(plain.weights[k], shown.weights[k]) for k in plain.weights)


def test_missing_generator_and_bad_method_are_clear_errors(world) -> None:  # type: ignore[no-untyped-def]
    reg: Registry = world["registry"]
    with pytest.raises(InvalidInput, match="unknown method"):
        generate_adapters(reg, [Request("x")], base_model=world["base"], method="dreambooth")
    with pytest.raises(GeneratorNotFound, match="loramint generator train"):
        generate_adapters(reg, [Request("x")], base_model="smollm2-135m-instruct", method="sg-lora")


def test_quality_harness_scores_every_column(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reg: Registry = world["registry"]
    base = world["base"]
    rec = (
        reg.latest_generator(base, "sg-lora")
        or train_generator(reg, base, GeneratorConfig(hidden=32, latent=4, steps=10, eval_every=5))[
            0
        ]
    )
    gens = {"sg-lora": Generator.from_registry(reg, rec)}
    bank = ExpertBank.from_registry(reg, base, ids=rec.training_adapter_ids)
    evaluator = Evaluator.from_path(Path(base))
    held = [t for t in world["suite"] if t.held_out]
    report = evaluate(
        reg, evaluator, held, base_model=base, generators=gens, bank=bank, k=2, tau=0.1
    )
    row = report.rows[0]
    assert row.task == "moon" and "zoo-moon" not in row.neighbours
    assert set(row.scores) == {"base", "nearest", "weighted-mean", "sg-mixture-mean", "sg-lora"}
    assert all(0.0 <= v <= 1.0 for v in row.scores.values())
    # the row says how many experts SG-LoRA mixed for the task
    used = len(gens["sg-lora"].generate([Request(held[0].description)])[0].neighbours)
    k = int(gens["sg-lora"].ckpt.hyper["k"])
    assert used in (1, k) and row.choices == {
        "sg-lora": "nearest alone" if used == 1 else f"top-{k}"
    }
    path = write(report, tmp_path)
    data = json.loads(path.read_text())
    assert data["columns"][-1] == "oracle" and "sg-lora" in data["relative_to_oracle"]
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| moon |" in path.with_suffix(".md").read_text()


def test_cli_generate_and_list(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = world["settings"]
    reg: Registry = world["registry"]
    if reg.latest_generator(world["base"], "sg-lora") is None:
        train_generator(reg, world["base"], GeneratorConfig(hidden=32, latent=4, steps=10))
    env = os.environ | {
        "LORAMINT_HOME": str(settings.home),
        "LORAMINT_DATABASE_URL": settings.database_url,
        "LORAMINT_MODEL_CACHE": str(settings.model_cache),
    }
    cli = [sys.executable, "-m", "api.cli"]
    run = subprocess.run(
        [*cli, "generate", "Does the text mention a sun?", "--base-model", world["base"],
         "--seed", "3", "--out", str(tmp_path / "a"), "--json"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    payload = json.loads(run.stdout)
    assert payload["seed"] == 3 and (tmp_path / "a" / "adapter_model.safetensors").exists()
    bad = subprocess.run(
        [*cli, "generate", "x", "--base-model", world["base"], "--method", "nope"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown method")
    listed = subprocess.run(
        [*cli, "generator", "list", "--json"], env=env, capture_output=True, text=True, timeout=300
    )
    assert listed.returncode == 0 and json.loads(listed.stdout)[0]["method"] in (
        "sg-lora",
        "icm-lora",
    )


def test_eval_scores_the_generators_asked_for(world) -> None:  # type: ignore[no-untyped-def]
    from api.cli_generators import chosen_generators, evaluated_generators

    reg: Registry = world["registry"]
    base = world["base"]
    a, _ = train_generator(reg, base, GeneratorConfig(hidden=32, latent=4, steps=2), name="pick-a")
    b, _ = train_generator(reg, base, GeneratorConfig(hidden=32, latent=4, steps=2), name="pick-b")
    cols = chosen_generators(reg, base, f"{a.id},{b.id}")
    assert {c: r.id for c, r in cols.items()} == {f"sg-lora#{a.id}": a.id, f"sg-lora#{b.id}": b.id}
    assert chosen_generators(reg, base, None).keys() == evaluated_generators(reg, base).keys()
    with pytest.raises(InvalidInput, match="comma-separated ids"):
        chosen_generators(reg, base, f"{a.id},b")
    with pytest.raises(InvalidInput, match="not smollm2"):
        chosen_generators(reg, "smollm2-135m-instruct", str(a.id))
    with pytest.raises(GeneratorNotFound):
        chosen_generators(reg, base, "999999")


def test_end_to_end_finetune_moves_the_generator_and_registers_a_new_one(world) -> None:  # type: ignore[no-untyped-def]
    from api.cli_generators import evaluated_generators
    from generator.fit.train import finetune_generator

    reg: Registry = world["registry"]
    base = world["base"]
    rec, _ = train_generator(
        reg, base, GeneratorConfig(hidden=32, latent=4, steps=10, val_fraction=0.0), name="plain"
    )
    tuned = finetune_generator(
        reg, rec.id, list(world["suite"]), steps=4, lr=1e-2, batch_size=4, val_fraction=0.0
    )
    assert tuned.hyperparameters["finetuned_from"] == rec.id and tuned.id != rec.id
    assert tuned.training_adapter_ids == rec.training_adapter_ids
    assert tuned.hyperparameters["e2e_tasks"] == len(TASKS)  # never the held-out "moon"
    before = Checkpoint.from_bytes(reg.generator_checkpoint(rec.id)).net.state_dict()
    after = Checkpoint.from_bytes(reg.generator_checkpoint(tuned.id)).net.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    cols = evaluated_generators(reg, base)
    assert cols["sg-lora+e2e"].id == tuned.id and cols["sg-lora"].id == rec.id


def test_end_to_end_finetune_keeps_its_best_validation_state(world) -> None:  # type: ignore[no-untyped-def]
    from generator.fit.train import finetune_generator

    reg: Registry = world["registry"]
    rec, _ = train_generator(
        reg, world["base"], GeneratorConfig(hidden=32, latent=4, steps=10, val_fraction=0.0),
        name="plain-val",
    )  # fmt: skip
    tuned = finetune_generator(
        reg, rec.id, list(world["suite"]), steps=6, lr=1e-2, batch_size=4, val_fraction=0.4
    )
    h = tuned.hyperparameters
    # Validation tasks are never trained on; together they are the training tasks.
    assert h["e2e_val_tasks"] == 2 and h["e2e_tasks"] + h["e2e_val_tasks"] == len(TASKS)
    curve = h["e2e_val_curve"]
    assert [s for s, _ in curve] == [0, 1, 2, 3, 4, 5, 6]  # untuned, then every step
    assert h["e2e_val_loss_best"] == pytest.approx(min(v for _, v in curve), abs=1e-4)
    assert h["e2e_val_loss_initial"] == curve[0][1]
    before = Checkpoint.from_bytes(reg.generator_checkpoint(rec.id)).net.state_dict()
    after = Checkpoint.from_bytes(reg.generator_checkpoint(tuned.id)).net.state_dict()
    changed = any(not torch.equal(before[k], after[k]) for k in before)
    assert changed == (h["e2e_best_step"] != 0)  # the kept state is the best one's
    with pytest.raises(InvalidInput, match="val_fraction"):
        finetune_generator(reg, rec.id, list(world["suite"]), steps=2, val_fraction=1.0)
    with pytest.raises(InvalidInput, match="recon_weight"):
        finetune_generator(reg, rec.id, list(world["suite"]), steps=2, recon_weight=-1.0)


class RecordingEvaluator(Evaluator):
    """The real evaluator, noting which tasks it scored (injected, nothing patched)."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.scored: list[str] = []

    def label_scores(self, task, adapter=None, *, examples=None):  # type: ignore[no-untyped-def]
        self.scored.append(task.name)
        return super().label_scores(task, adapter, examples=examples)


def test_k_and_tau_chosen_by_task_accuracy_of_leave_one_out_mixtures(world) -> None:  # type: ignore[no-untyped-def]
    from generator.fit.selection import choose_k_tau_by_task

    reg: Registry = world["registry"]
    bank = ExpertBank.from_registry(reg, world["base"])
    suite = list(world["suite"])
    tasks = bank.tasks_of(suite)  # the held-out task has no expert, and is filtered anyway
    assert sorted(t.name for t in tasks.values()) == sorted(n for n, _ in TASKS)
    evaluator = RecordingEvaluator.from_path(Path(world["base"]))
    assert isinstance(evaluator, RecordingEvaluator)
    choice = choose_k_tau_by_task(
        bank, tasks, evaluator, ks=(1, 2, 4), taus=(0.001, 1.0), gates=(-1.0, 9.0), examples=6
    )
    k, tau, grid = choice.k, choice.tau, choice.grid
    assert choice.by == "task"
    assert set(grid) == {
        "k=1,tau=0.001",
        "k=2,tau=0.001",
        "k=2,tau=1.0",
        "k=4,tau=0.001",
        "k=4,tau=1.0",
    }
    assert all(0.0 <= v <= 1.0 for v in grid.values())
    # each candidate's grid score is the mean of its per-task scores, kept by task
    assert sorted(choice.scores) == sorted(n for n, _ in TASKS)
    for c, v in grid.items():
        per_task = [s[c] for s in choice.scores.values()]
        assert v == pytest.approx(sum(per_task) / len(per_task), abs=1e-3)
    # gated candidates reuse the scores: a gate every lead passes is the nearest alone,
    # one no lead passes the plain mixture
    gated = choice.gate_grid
    assert set(gated) == {
        f"{c},gate={g}" for c in grid if not c.startswith("k=1,") for g in (-1.0, 9.0)
    }
    for c in grid:
        if not c.startswith("k=1,"):
            assert gated[f"{c},gate=-1.0"] == grid["k=1,tau=0.001"]
            assert gated[f"{c},gate=9.0"] == grid[c]
    if choice.gate is not None:
        winner = gated[f"k={k},tau={tau},gate={choice.gate}"]
    else:
        winner = grid[f"k={k},tau={tau}"]
    assert winner == max([*grid.values(), *gated.values()])  # the winner has the best accuracy
    assert "moon" not in evaluator.scored and set(evaluator.scored) == {n for n, _ in TASKS}
    # identical mixtures are scored once: K=1 and every low-tau mixture that puts all
    # weight on the top expert share one score per task
    assert len(evaluator.scored) < len(TASKS) * len(grid)
    with pytest.raises(InvalidInput, match="needs the experts' tasks"):
        choose_k_tau_by_task(bank, {}, evaluator)


def test_train_generator_records_how_k_and_tau_were_chosen(world) -> None:  # type: ignore[no-untyped-def]
    reg: Registry = world["registry"]
    cfg = GeneratorConfig(hidden=32, latent=4, steps=4, val_fraction=0.0, select="task")
    rec_task, by_task = train_generator(reg, world["base"], cfg, tasks=list(world["suite"]))
    assert by_task["k_tau_by"] == "task" and by_task["k_tau_grid"] and by_task["gate_grid"]
    scores = {**by_task["k_tau_grid"], **by_task["gate_grid"]}
    key = f"k={by_task['k']},tau={by_task['tau']}"
    key += f",gate={by_task['gate']}" if by_task["gate"] is not None else ""
    assert scores[key] == max(scores.values())
    assert set(by_task["k_tau_scores"]) == {n for n, _ in TASKS}
    gen = Checkpoint.from_bytes(reg.generator_checkpoint(rec_task.id))
    assert gen.hyper["gate"] == by_task["gate"]
    # the learned correction was weighed on the validation experts' own tasks
    checked = GeneratorConfig(hidden=32, latent=4, steps=4, val_fraction=0.4, k=2, tau=0.1)
    _, weighed = train_generator(reg, world["base"], checked, tasks=list(world["suite"]))
    assert 0 <= weighed["val_task_acc_mixture"] <= 1 and 0 <= weighed["val_task_acc_generated"] <= 1
    assert weighed["correction_kept"] == (
        weighed["val_task_acc_generated"] > weighed["val_task_acc_mixture"]
    )
    # no task data at hand (this world's default suite is empty): weight-space choice
    _, fallback = train_generator(reg, world["base"], cfg)
    assert fallback["k_tau_by"] == "weights"
    plain = GeneratorConfig(hidden=32, latent=4, steps=4, val_fraction=0.0)  # the default
    _, by_weights = train_generator(reg, world["base"], plain, tasks=list(world["suite"]))
    assert by_weights["k_tau_by"] == "weights"
    given = GeneratorConfig(hidden=32, latent=4, steps=4, val_fraction=0.0, k=2, tau=0.1)
    _, fixed = train_generator(reg, world["base"], given, tasks=list(world["suite"]))
    assert fixed["k_tau_by"] == "given" and (fixed["k"], fixed["tau"]) == (2, 0.1)
    with pytest.raises(InvalidInput, match="select must be one of"):
        GeneratorConfig(select="vibes")
    with pytest.raises(InvalidInput, match="gate must be non-negative"):
        GeneratorConfig(gate=-0.1)
    with pytest.raises(InvalidInput, match="select must be one of"):
        GeneratorConfig(select="local")  # the local policy lost its experiment
    with pytest.raises(InvalidInput, match="select_examples must be at least 1"):
        GeneratorConfig(select="task", select_examples=0)


def test_the_similarity_gate_reaches_generation(world) -> None:  # type: ignore[no-untyped-def]
    reg: Registry = world["registry"]
    desc = "Does the text mention the moon? Answer yes or no."
    made = {}
    for gate in (None, 0.0, 2.0):
        cfg = GeneratorConfig(hidden=32, latent=4, steps=2, val_fraction=0.0, k=3, tau=0.5, gate=gate)
        rec, metrics = train_generator(reg, world["base"], cfg, name=f"gate-{gate}")
        assert metrics["gate"] == gate
        made[gate] = Generator.from_registry(reg, rec).generate([Request(desc)])[0]
    plain = made[None].neighbours
    assert len(plain) == 3 and sum(n.weight for n in plain) == pytest.approx(1.0, abs=1e-4)
    # the nearest leads by more than 0: it alone makes the adapter; no lead passes 2
    gated = made[0.0].neighbours
    assert [(n.adapter_id, n.weight) for n in gated] == [(plain[0].adapter_id, 1.0)]
    assert made[2.0].neighbours == plain


