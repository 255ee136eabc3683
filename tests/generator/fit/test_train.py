"""Training generators from the registry (the sandbox zoo): K, tau and the gate chosen
by task accuracy, how they were chosen on record, the gate at generation, and
end-to-end fine-tuning."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from generator.experts import ExpertBank
from generator.fit.config import FinetuneConfig, GeneratorConfig
from generator.fit.train import train_generator
from generator.hypernet.checkpoint import Checkpoint
from generator.sandbox import TASKS, SandboxWorld
from generator.serve.generator import Generator, Request
from generator.tasks.evaluation import Evaluator
from generator.tasks.task import Example, Task
from registry.errors import InvalidInput
from registry.lora_spec import Adapter
from registry.service import Registry


def test_end_to_end_finetune_moves_the_generator_and_registers_a_new_one(
    world: SandboxWorld,
) -> None:
    from api.cli_eval import evaluated_generators
    from generator.fit.train import finetune_generator

    reg: Registry = world.registry
    base = world.base
    rec, _ = train_generator(
        reg, base, GeneratorConfig(hidden=32, latent=4, steps=10, val_fraction=0.0), name="plain"
    )
    config = FinetuneConfig(steps=4, lr=1e-2, batch_size=4, val_fraction=0.0)
    tuned = finetune_generator(reg, rec.id, list(world.suite), config)
    assert tuned.hyperparameters["finetuned_from"] == rec.id and tuned.id != rec.id
    assert tuned.training_adapter_ids == rec.training_adapter_ids
    assert tuned.hyperparameters["e2e_tasks"] == len(TASKS)  # never the held-out "moon"
    before = Checkpoint.from_bytes(reg.generator_checkpoint(rec.id)).net.state_dict()
    after = Checkpoint.from_bytes(reg.generator_checkpoint(tuned.id)).net.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    cols = evaluated_generators(reg, base)
    assert cols["sg-lora+e2e"].id == tuned.id and cols["sg-lora"].id == rec.id


@pytest.mark.parametrize("method", ["sg-lora", "icm-lora"])
def test_end_to_end_finetune_runs_where_asked_and_returns_to_the_cpu(
    world: SandboxWorld, method: str
) -> None:
    """``device`` moves the base model and the generator there for the run; the new
    generator's tensors come back on the CPU. With a GPU the two runs agree within
    float rounding (AdamW amplifies it on near-zero gradients, hence the loose bound on
    the weights and the tight one on the loss)."""
    from generator.fit.train import finetune_generator

    reg: Registry = world.registry
    rec, _ = train_generator(
        reg, world.base,
        GeneratorConfig(method=method, hidden=32, latent=4, steps=10, val_fraction=0.0),
        name=f"plain-{method}",
    )  # fmt: skip
    config = FinetuneConfig(steps=4, lr=1e-2, batch_size=4, val_fraction=0.0)
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    runs = {}
    for device in devices:
        tuned = finetune_generator(
            reg, rec.id, list(world.suite), config, device=device, name=f"tuned-{method}-{device}"
        )
        net = Checkpoint.from_bytes(reg.generator_checkpoint(tuned.id)).net
        assert {p.device.type for p in net.parameters()} == {"cpu"}
        runs[device] = (tuned.hyperparameters, net.state_dict())
    if "cuda" in runs:
        (cpu_h, cpu_w), (gpu_h, gpu_w) = runs["cpu"], runs["cuda"]
        assert gpu_h["e2e_loss_first10"] == pytest.approx(cpu_h["e2e_loss_first10"], rel=1e-3)
        for name, weight in cpu_w.items():
            torch.testing.assert_close(gpu_w[name], weight, atol=5e-2, rtol=0)


def test_end_to_end_finetune_keeps_its_best_validation_state(world: SandboxWorld) -> None:
    from generator.fit.train import finetune_generator

    reg: Registry = world.registry
    rec, _ = train_generator(
        reg, world.base, GeneratorConfig(hidden=32, latent=4, steps=10, val_fraction=0.0),
        name="plain-val",
    )  # fmt: skip
    config = FinetuneConfig(steps=6, lr=1e-2, batch_size=4, val_fraction=0.4)
    tuned = finetune_generator(reg, rec.id, list(world.suite), config)
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
    with pytest.raises(InvalidInput, match="val_fraction must be below 1"):
        FinetuneConfig(steps=2, val_fraction=1.0)
    with pytest.raises(InvalidInput, match="recon_weight must be non-negative"):
        FinetuneConfig(steps=2, recon_weight=-1.0)


class RecordingEvaluator(Evaluator):
    """The real evaluator, noting which tasks it scored (injected, nothing patched)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, batch_size: int = 16) -> None:
        super().__init__(model, tokenizer, batch_size=batch_size)
        self.scored: list[str] = []

    def label_scores(
        self,
        task: Task,
        adapter: Adapter | None = None,
        *,
        examples: Sequence[Example] | None = None,
    ) -> torch.Tensor:
        self.scored.append(task.name)
        return super().label_scores(task, adapter, examples=examples)


def test_k_and_tau_chosen_by_task_accuracy_of_leave_one_out_mixtures(world: SandboxWorld) -> None:
    from generator.fit.selection import choose_k_tau_by_task

    reg: Registry = world.registry
    bank = ExpertBank.from_registry(reg, world.base)
    suite = list(world.suite)
    tasks = bank.tasks_of(suite)  # the held-out task has no expert, and is filtered anyway
    assert sorted(t.name for t in tasks.values()) == sorted(n for n, _ in TASKS)
    evaluator = RecordingEvaluator.from_path(Path(world.base))
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


def test_train_generator_records_how_k_and_tau_were_chosen(world: SandboxWorld) -> None:
    reg: Registry = world.registry
    cfg = GeneratorConfig(hidden=32, latent=4, steps=4, val_fraction=0.0, select="task")
    rec_task, by_task = train_generator(reg, world.base, cfg, tasks=list(world.suite))
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
    _, weighed = train_generator(reg, world.base, checked, tasks=list(world.suite))
    assert 0 <= weighed["val_task_acc_mixture"] <= 1 and 0 <= weighed["val_task_acc_generated"] <= 1
    assert weighed["correction_kept"] == (
        weighed["val_task_acc_generated"] > weighed["val_task_acc_mixture"]
    )
    # no task data at hand (this world's default suite is empty): weight-space choice
    _, fallback = train_generator(reg, world.base, cfg)
    assert fallback["k_tau_by"] == "weights"
    plain = GeneratorConfig(hidden=32, latent=4, steps=4, val_fraction=0.0)  # the default
    _, by_weights = train_generator(reg, world.base, plain, tasks=list(world.suite))
    assert by_weights["k_tau_by"] == "weights"
    given = GeneratorConfig(hidden=32, latent=4, steps=4, val_fraction=0.0, k=2, tau=0.1)
    _, fixed = train_generator(reg, world.base, given, tasks=list(world.suite))
    assert fixed["k_tau_by"] == "given" and (fixed["k"], fixed["tau"]) == (2, 0.1)
    with pytest.raises(InvalidInput, match="select must be one of"):
        GeneratorConfig(select="vibes")
    with pytest.raises(InvalidInput, match="gate must be non-negative"):
        GeneratorConfig(gate=-0.1)
    with pytest.raises(InvalidInput, match="select must be one of"):
        GeneratorConfig(select="local")  # the local policy lost its experiment
    with pytest.raises(InvalidInput, match="select_examples must be at least 1"):
        GeneratorConfig(select="task", select_examples=0)


def test_the_similarity_gate_reaches_generation(world: SandboxWorld) -> None:
    reg: Registry = world.registry
    desc = "Does the text mention the moon? Answer yes or no."
    made = {}
    for gate in (None, 0.0, 2.0):
        cfg = GeneratorConfig(
            hidden=32, latent=4, steps=2, val_fraction=0.0, k=3, tau=0.5, gate=gate
        )
        rec, metrics = train_generator(reg, world.base, cfg, name=f"gate-{gate}")
        assert metrics["gate"] == gate
        made[gate] = Generator.from_registry(reg, rec).generate([Request(desc)])[0]
    plain = made[None].neighbours
    assert len(plain) == 3 and sum(n.weight for n in plain) == pytest.approx(1.0, abs=1e-4)
    # the nearest leads by more than 0: it alone makes the adapter; no lead passes 2
    gated = made[0.0].neighbours
    # the nearest alone, and the runner-up the gate compared it with, at weight 0
    assert [(n.adapter_id, n.weight) for n in gated] == [
        (plain[0].adapter_id, 1.0),
        (plain[1].adapter_id, 0.0),
    ]
    assert made[2.0].neighbours == plain
