"""Use cases: train a generator from the registry's experts, and generate
adapters into the registry. The only generator code that touches the registry
besides ``experts`` and ``generate.Generator.from_registry``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from generator.experts import ExpertBank
from generator.fit.config import FinetuneConfig, GeneratorConfig
from generator.fit.icm import fit_icm
from generator.fit.loop import FitResult, StepCallback
from generator.fit.sg import fit_sg
from generator.hypernet.methods import ICM_LORA, check_method
from generator.tasks.task import Task
from generator.tasks.task_vector import TaskVectorizer
from registry.records import GeneratorRecord
from registry.service import Registry


def expert_task_vectors(
    registry: Registry, bank: ExpertBank, on_progress: Callable[[str], None] | None = None
) -> tuple[list[torch.Tensor | None], int]:
    """Each expert's task vector from its stored seed examples (None without seeds)."""
    from generator.tasks.evaluation import load_base

    if on_progress:
        on_progress("computing in-context task vectors from the experts' seed examples")
    model, tokenizer = load_base(registry.base_model_path(bank.base_model))
    vectorize = TaskVectorizer(model, tokenizer)
    out: list[torch.Tensor | None] = []
    for e in bank.experts:
        pairs = [(s["input"], s["output"]) for s in e.seeds if s.get("input") and s.get("output")]
        out.append(vectorize(e.record.description, pairs) if pairs else None)
    return out, vectorize.hidden_size


def default_suite_tasks(registry: Registry) -> list[Task]:
    """The registry's default task suite's tasks, or none when it is not built."""
    from generator.tasks.task import TaskSuite

    suite = TaskSuite(registry.settings.tasks_dir / "default")
    return list(suite) if suite.exists() else []


def fit(
    registry: Registry,
    bank: ExpertBank,
    config: GeneratorConfig,
    *,
    tasks: Sequence[Task] | None = None,
    on_progress: Callable[[str], None] | None = None,
    on_step: StepCallback | None = None,
    device: str = "auto",
) -> FitResult:
    """Fit ``config.method`` on ``bank``. For SG-LoRA, the training experts' tasks
    (``tasks``, default: the default suite's) let it choose K, tau and the gate by
    task accuracy (``config.select`` "task") and check its learned correction on the
    validation experts' tasks; without them both fall back to update space. That
    scoring runs the base model on ``device``; the generator trains on the CPU."""
    if config.method == ICM_LORA:
        vectors, hidden = expert_task_vectors(registry, bank, on_progress)
        return fit_icm(bank, config, vectors, hidden_size=hidden, on_step=on_step)
    if len(bank) < 2:
        return fit_sg(bank, config, on_step=on_step)
    from generator.fit.selection import choose_k_tau_by_task, task_checker
    from generator.tasks.evaluation import Evaluator

    suite_tasks = default_suite_tasks(registry) if tasks is None else tasks
    by_expert = bank.tasks_of(suite_tasks)  # training experts' tasks only, never held out
    if not by_expert:
        if on_progress:
            by_task = config.select == "task"
            fallback = ", K and tau by weight-space error" if by_task else ""
            on_progress(f"no expert's task at hand: no task check of the correction{fallback}")
        return fit_sg(bank, config, on_step=on_step)
    evaluator = Evaluator.from_path(registry.base_model_path(bank.base_model), device=device)
    choice = None
    if config.select == "task" and (config.k is None or config.tau is None):
        if on_progress:
            on_progress(f"choosing K, tau and gate by leave-one-out accuracy on "
                        f"{len(by_expert)} experts' tasks")  # fmt: skip

        def on_task(done: int, total: int) -> None:
            if on_progress and (done == total or done % 5 == 0):
                on_progress(f"  scored the mixtures of {done}/{total} tasks")

        choice = choose_k_tau_by_task(
            bank,
            by_expert,
            evaluator,
            examples=config.select_examples,
            on_task=on_task,
        )
    check = task_checker(bank, by_expert, evaluator)
    return fit_sg(bank, config, on_step=on_step, choice=choice, task_check=check)


def train_generator(
    registry: Registry,
    base_model: str,
    config: GeneratorConfig,
    *,
    name: str | None = None,
    tasks: Sequence[Task] | None = None,
    expert_ids: Sequence[int] | None = None,
    on_progress: Callable[[str], None] | None = None,
    on_step: StepCallback | None = None,
    device: str = "auto",
) -> tuple[GeneratorRecord, dict[str, Any]]:
    """Train a generator on every eligible expert of ``base_model`` (or on exactly
    ``expert_ids``, eligible ones only) and register it. ``device``: where SG-LoRA's
    task scoring runs the base model (``fit``)."""
    check_method(config.method)
    bm = registry.prepare_base_model(base_model, on_progress=on_progress)
    if on_progress:
        on_progress(f"loading the expert adapters of {bm.name}")
    bank = ExpertBank.from_registry(registry, bm.name, ids=expert_ids)
    result = fit(
        registry, bank, config, tasks=tasks, on_progress=on_progress, on_step=on_step,
        device=device,
    )  # fmt: skip
    metrics = {k: v for k, v in result.metrics.items() if k != "history"}
    record = registry.add_generator(
        result.checkpoint.to_bytes(),
        base_model=bm.name,
        method=config.method,
        name=name,
        training_adapter_ids=bank.ids,
        hyperparameters=result.checkpoint.hyper,
        metrics=metrics,
    )
    return record, result.metrics


def finetune_generator(
    registry: Registry,
    generator_id: int,
    suite_tasks: list[Any],
    config: FinetuneConfig | None = None,
    *,
    name: str | None = None,
    on_progress: Callable[[str], None] | None = None,
    on_step: StepCallback | None = None,
    device: str = "auto",
) -> GeneratorRecord:
    """Fine-tune generator ``generator_id`` end to end on its experts' tasks and register
    the result as a new generator (the original stays as it was). ``val_fraction``
    of the tasks are only validated on; the best validation state is kept. The base
    model and the generator run on ``device`` (``generator.tasks.device``)."""
    config = config or FinetuneConfig()
    from generator.fit.finetune import finetune
    from generator.hypernet.checkpoint import Checkpoint
    from generator.tasks.evaluation import load_base

    rec = registry.get_generator(generator_id)
    ckpt = Checkpoint.from_bytes(registry.generator_checkpoint(rec.id))
    if on_progress:
        on_progress(f"loading the {len(ckpt.expert_ids)} experts of generator {rec.id}")
    bank = ExpertBank.from_registry(registry, rec.base_model, ids=ckpt.expert_ids)
    tasks = bank.tasks_of(suite_tasks)
    if on_progress:
        on_progress(f"fine-tuning through {rec.base_model} on {len(tasks)} training tasks")
    model, tokenizer = load_base(registry.base_model_path(rec.base_model), device)
    stats = finetune(ckpt, bank, tasks, model, tokenizer, config, on_step=on_step)
    ckpt.hyper = {**ckpt.hyper, "finetuned_from": rec.id, **stats}
    return registry.add_generator(
        ckpt.to_bytes(),
        base_model=rec.base_model,
        method=rec.method,
        name=name or f"{rec.name}-e2e-{config.steps}",
        training_adapter_ids=rec.training_adapter_ids,
        hyperparameters=ckpt.hyper,
        metrics={**rec.metrics, **stats},
    )
