"""What a Trans-LoRA transfer starts from and how it is asked for: the source
adapter with its seed examples and label set, the request (checked before a
job is queued), and the distillation of the source adapter into a LoRA for
the target model, shared by the job and the bench's ablations.

Seeds are the adapter's ``seeds.jsonl`` artifact (the zoo stores five per
task; uploads carry them with ``--seeds``). The label set is the adapter's
``meta.labels``; without one the task is free-form.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from generator.tasks.evaluation import Evaluator
from generator.tasks.task import Example
from generator.transfer.config import TransferConfig
from generator.transfer.distill import (
    Distilled,
    balanced_weights,
    distill_answers,
    distill_labels,
    teacher_answers,
    teacher_label_probs,
)
from generator.transfer.synthesis import clean_input
from generator.zoo.artifacts import SEEDS, read_seeds
from generator.zoo.trainer import TrainConfig
from registry import base_models
from registry.errors import InvalidInput, UnknownBaseModel
from registry.lora_spec import Adapter
from registry.records import AdapterRecord, JobRecord
from registry.service import Registry
from registry.validation import check_name

TRANSFER_KIND = "transfer"


# -- what a transfer starts from ---------------------------------------------------


@dataclass(frozen=True)
class SourceTask:
    """A registered adapter with what a transfer needs from it."""

    record: AdapterRecord
    seeds: tuple[Example, ...]
    labels: tuple[str, ...]  # empty: free-form outputs
    adapter: Adapter

    @property
    def description(self) -> str:
        return self.record.description

    def seed_inputs(self, config: TransferConfig) -> list[str]:
        texts = [clean_input(e.input, config.max_input_chars) for e in self.seeds]
        return list(dict.fromkeys(t for t in texts if t))


def source_task(registry: Registry, adapter_id: int, *, weights: bool = True) -> SourceTask:
    record = registry.get_adapter(adapter_id)
    if SEEDS not in registry.artifact_names(adapter_id):
        raise InvalidInput(
            f"adapter {adapter_id} ({record.name}) has no seed examples ({SEEDS}); Trans-LoRA "
            "needs a handful: register it with `loramint adapters add ... --seeds FILE.jsonl`"
        )
    seeds = read_seeds(registry.artifact(adapter_id, SEEDS))
    labels = record.meta.get("labels") or []
    if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
        raise InvalidInput(f"adapter {adapter_id}: meta.labels must be a list of label strings")
    adapter = registered_adapter(registry, adapter_id) if weights else (record.config, {})
    return SourceTask(record, seeds, tuple(dict.fromkeys(labels)), adapter)


def registered_adapter(registry: Registry, adapter_id: int) -> Adapter:
    """A registered adapter's config and weights, ready to attach."""
    return registry.adapter_files(adapter_id).parsed()


@dataclass(frozen=True)
class TransferRequest:
    adapter_id: int
    target_base_model: str
    config: TransferConfig = field(default_factory=TransferConfig)
    name: str | None = None  # of the new adapter (default: from the source's name and the job)

    def __post_init__(self) -> None:
        if isinstance(self.adapter_id, bool) or not isinstance(self.adapter_id, int):
            raise InvalidInput(f"adapter_id must be an integer, got {self.adapter_id!r}")
        if not isinstance(self.target_base_model, str) or not self.target_base_model.strip():
            raise InvalidInput(
                f"target base model must be a non-empty name, got {self.target_base_model!r}"
            )
        if self.name is not None:
            check_name("adapter", self.name)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TransferRequest:
        known = {"adapter_id", "target_base_model", "samples", "config", "name", "resources"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise InvalidInput(f"unknown transfer parameters: {', '.join(unknown)}")
        for key in ("adapter_id", "target_base_model"):
            if key not in params:
                raise InvalidInput(f"a transfer job needs {key!r}")
        settings = dict(params.get("config") or {})
        if params.get("samples") is not None:
            settings["samples"] = params["samples"]
        return cls(
            adapter_id=params["adapter_id"],
            target_base_model=params["target_base_model"],
            config=TransferConfig.from_dict(settings),
            name=params.get("name"),
        )

    def params(self) -> dict[str, Any]:
        settings = self.config.to_dict()
        out: dict[str, Any] = {
            "adapter_id": self.adapter_id,
            "target_base_model": self.target_base_model,
            "samples": settings.pop("samples"),
            "config": settings,
        }
        if self.name is not None:
            out["name"] = self.name
        return out


def check_target(registry: Registry, name: str) -> None:
    """``UnknownBaseModel`` unless ``name`` is registered or resolves without converting."""
    if name in {b.name for b in registry.list_base_models()}:
        return
    offline = base_models.OFFLINE_MODELS.get(name)
    if offline is not None:
        if importlib.util.find_spec(offline.package) is None:
            raise UnknownBaseModel(
                f"base model {name!r} needs the PyPI package {offline.package!r}"
            )
        return
    if len(name) > 300 or not name.isprintable():
        raise UnknownBaseModel(f"base model name {name[:60]!r}... is not a model name")
    try:
        base_models.resolve(name, registry.settings)  # a local folder or a cached hub id
    except (OSError, ValueError, RuntimeError) as exc:  # unreadable paths, unknown ~users
        raise UnknownBaseModel(f"base model {name!r} cannot be resolved: {exc}") from exc


def check_request(registry: Registry, request: TransferRequest) -> SourceTask:
    """Everything that can be checked before the job runs: the adapter, its seeds, the target."""
    source = source_task(registry, request.adapter_id, weights=False)
    target = request.target_base_model.strip()
    if target == source.record.base_model:
        raise InvalidInput(f"adapter {request.adapter_id} is already an adapter of {target}")
    check_target(registry, target)
    if request.name is not None and registry.find_adapter(target, request.name) is not None:
        raise InvalidInput(
            f"an adapter named {request.name!r} already exists for {target}; choose another name"
        )
    return source


def transfer_request(
    registry: Registry,
    adapter_id: int,
    target_base_model: str,
    *,
    samples: int | None = None,
    config: dict[str, Any] | None = None,
    name: str | None = None,
) -> TransferRequest:
    """A checked transfer request (everything that can be checked before it runs)."""
    if config is not None and not isinstance(config, dict):
        raise InvalidInput(f"transfer config must be a JSON object, got {config!r}")
    settings = dict(config or {})
    if samples is not None:
        settings["samples"] = samples
    if not isinstance(target_base_model, str):
        raise InvalidInput(f"target base model must be a name, got {target_base_model!r}")
    request = TransferRequest(
        adapter_id, target_base_model.strip(), TransferConfig.from_dict(settings), name
    )
    check_request(registry, request)
    return request


def submit_transfer(
    registry: Registry,
    adapter_id: int,
    target_base_model: str,
    *,
    samples: int | None = None,
    config: dict[str, Any] | None = None,
    name: str | None = None,
    resources: dict[str, Any] | None = None,
    max_attempts: int = 3,
) -> JobRecord:
    """Check a transfer and queue it as a job; a worker runs it (``run_transfer``)."""
    request = transfer_request(
        registry, adapter_id, target_base_model, samples=samples, config=config, name=name
    )
    return submit_request(registry, request, resources=resources, max_attempts=max_attempts)


def submit_request(
    registry: Registry,
    request: TransferRequest,
    *,
    resources: dict[str, Any] | None = None,
    max_attempts: int = 3,
) -> JobRecord:
    params = request.params()
    if resources:
        params["resources"] = resources
    return registry.submit_job(TRANSFER_KIND, params, max_attempts=max_attempts)


# -- distillation ----------------------------------------------------------------


def student_config(
    source: AdapterRecord, config: TransferConfig, modules: tuple[str, ...]
) -> TrainConfig:
    """The target LoRA: the source's rank, alpha and modules; the zoo's shared A init."""
    return TrainConfig(
        rank=source.rank,
        alpha=float(source.alpha),
        target_modules=modules,
        steps=config.distill_steps,
        batch_size=config.distill_batch,
        lr=config.distill_lr,
        warmup_steps=min(4, config.distill_steps // 4),
        seed=config.seed,
        init_seed=0,
        snapshots=1,
    )


def distill_target(
    source: SourceTask,
    teacher: Evaluator,
    student: Evaluator,
    inputs: list[str],
    config: TransferConfig,
    modules: tuple[str, ...],
    *,
    trust: Mapping[str, float] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[Distilled, dict[str, Any]]:
    """Distil the source adapter into a new LoRA on the student's model over ``inputs``
    (plus the seed inputs); also returns the
    teacher's label counts (or answer count).

    ``trust`` (input -> the discriminator's p(real); real inputs count 1): batches draw
    each input with probability proportional to it (``soft_filter``). A free-form
    task, whose training cannot weigh inputs, keeps only the inputs trusted above 1/2."""
    seeds = source.seed_inputs(config)
    if trust is not None and not source.labels:
        inputs = [x for x in inputs if trust.get(x, 1.0) > 0.5]
    inputs = list(dict.fromkeys([*inputs, *seeds]))
    draw = None
    if trust is not None and source.labels:
        real = set(seeds)
        draw = torch.tensor([1.0 if x in real else float(trust.get(x, 1.0)) for x in inputs])
    train = student_config(source.record, config, modules)
    description = source.description
    if source.labels:
        probs = teacher_label_probs(
            teacher, source.adapter, description, inputs, source.labels,
            temperature=config.kd_temperature,
        )  # fmt: skip
        picked = probs.argmax(-1).tolist()
        counts = {label: picked.count(j) for j, label in enumerate(source.labels)}
        weights = balanced_weights(probs) if config.balance_labels else None
        distilled = distill_labels(
            student.model, student.format, description, inputs, source.labels, probs, train,
            kd_temperature=config.kd_temperature, weights=weights, draw=draw, on_step=on_step,
        )  # fmt: skip
        figures: dict[str, Any] = {"teacher_labels": counts}
        if draw is not None:  # the inputs' share of the draws the filter would have kept
            figures["trusted_share"] = round(float(draw[draw > 0.5].sum() / draw.sum()), 4)
        return distilled, figures
    answers = teacher_answers(
        teacher, source.adapter, description, inputs, max_new_tokens=config.max_answer_tokens
    )
    distilled = distill_answers(
        student.model, student.format, description, inputs, answers, train, on_step=on_step
    )
    return distilled, {"teacher_answers": sum(bool(a) for a in answers)}
