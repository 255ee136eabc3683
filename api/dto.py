"""Wire types of the REST API: msgspec structs built from registry records,
never ORM objects. Field names are the public contract (docs/design.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

from registry.records import AdapterRecord, BaseModelRecord, GeneratorRecord, JobRecord
from registry.settings import MAX_DESCRIPTION_CHARS

# the largest integer every JSON parser (and the OpenAPI document's numbers) carries
# exactly: the bound of every id and seed the API takes
MAX_JSON_INT = 2**53 - 1

# What registry.embeddings.clean_description accepts, for the OpenAPI document: at most
# MAX_DESCRIPTION_CHARS characters, none of them a control character other than
# whitespace, and at least one that is not whitespace (Python's str.isspace set).
_CONTROL = r"\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f"
_SPACE = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
DESCRIPTION_PATTERN = f"^[^{_CONTROL}]*[^{_CONTROL}{_SPACE}][^{_CONTROL}]*$"
Description = Annotated[
    str, msgspec.Meta(max_length=MAX_DESCRIPTION_CHARS, pattern=DESCRIPTION_PATTERN)
]

# the generator methods (generator.hypernet.methods.METHODS) and job kinds
# (api.worker.HANDLERS) as the OpenAPI states them; tests hold each pair equal
Method = Literal["sg-lora", "icm-lora"]
JobKind = Literal["generate", "train-generator", "transfer", "build-zoo"]


class ParentOut(msgspec.Struct):
    adapter_id: int
    role: str
    weight: float | None


class AdapterOut(msgspec.Struct):
    id: int
    name: str
    description: str
    base_model: str
    peft_type: str
    rank: int
    alpha: float
    target_modules: list[Any]
    provenance: str
    sha256: str
    size_bytes: int
    # "weights": stored; "recipe": rebuilt from its generator on download
    stored: str
    created_at: datetime
    metrics: dict[str, Any]
    meta: dict[str, Any]
    parents: list[ParentOut]
    download_url: str

    @classmethod
    def of(cls, rec: AdapterRecord) -> AdapterOut:
        return cls(
            id=rec.id,
            name=rec.name,
            description=rec.description,
            base_model=rec.base_model,
            peft_type=rec.peft_type,
            rank=rec.rank,
            alpha=rec.alpha,
            target_modules=rec.target_modules,
            provenance=rec.provenance,
            sha256=rec.sha256,
            size_bytes=rec.size_bytes,
            stored=rec.stored,
            created_at=rec.created_at,
            metrics=rec.metrics,
            meta=rec.meta,
            parents=[ParentOut(p.adapter_id, p.role, p.weight) for p in rec.parents],
            download_url=f"/v1/adapters/{rec.id}/download",
        )


class AdapterDetail(AdapterOut):
    config: dict[str, Any] = {}
    artifacts: list[str] = []


class UploadOut(AdapterOut):
    """An uploaded adapter: what PEFT needs was checked before it was stored; what vLLM
    and LoRAX would refuse or ignore is reported here (``loramint adapters check``)."""

    serving_warnings: list[str] = []


class AdapterPage(msgspec.Struct):
    items: list[AdapterOut]
    total: int | None
    limit: int
    offset: int


class SearchHitOut(msgspec.Struct):
    adapter: AdapterOut
    score: float


class SearchPage(msgspec.Struct):
    q: str
    items: list[SearchHitOut]


class Example(msgspec.Struct, forbid_unknown_fields=True):
    input: Annotated[str, msgspec.Meta(max_length=8000)]
    output: Annotated[str, msgspec.Meta(max_length=500)]


class GenerateIn(msgspec.Struct, forbid_unknown_fields=True):
    description: Description
    base_model: Annotated[str, msgspec.Meta(min_length=1, max_length=300)] = "smollm2-135m-instruct"
    method: Method | None = None  # or the named generator's
    seed: Annotated[int, msgspec.Meta(ge=0, le=MAX_JSON_INT)] = 0
    # labelled examples of the task (generator.adapt): the adapter is chosen among
    # candidates (and optionally re-weighted and refined) by them
    examples: Annotated[list[Example], msgspec.Meta(max_length=64)] | None = None
    # the label set of a classification (default: the examples' distinct outputs when
    # they repeat; outputs that never repeat are free-form)
    labels: Annotated[list[str], msgspec.Meta(max_length=50)] | None = None
    weighting: bool = False  # fit the nearest experts' mixture weights on the examples
    refine_steps: Annotated[int, msgspec.Meta(ge=0, le=500)] = 0  # train further on them
    # training that would take longer than this runs as a job (the response says where)
    time_budget_s: Annotated[float, msgspec.Meta(ge=0, le=600)] = 10.0
    # a generator of ``method`` for ``base_model``; default: the pinned one, else the newest
    generator_id: Annotated[int, msgspec.Meta(ge=1, le=MAX_JSON_INT)] | None = None


class NeighbourOut(msgspec.Struct):
    adapter_id: int
    name: str
    similarity: float
    weight: float


class GenerateOut(msgspec.Struct):
    adapter: AdapterOut
    download_url: str
    method: str
    generator_id: int | None
    seed: int
    neighbours: list[NeighbourOut]
    # with examples: the chosen candidate, every candidate's score on the examples, and
    # the held-back estimate of the returned adapter beside the bare model's and the
    # nearest expert's (also kept in the adapter's meta.fewshot)
    fewshot: dict[str, Any] | None = None
    # training that went over the time budget: the job that registers the trained
    # adapter (its result.adapter_id); ``adapter`` is the chosen candidate meanwhile
    job: JobOut | None = None


class BaseModelOut(msgspec.Struct):
    name: str
    source: str
    architecture: str
    num_layers: int
    hidden_size: int
    adapters: int

    @classmethod
    def of(cls, rec: BaseModelRecord, adapters: int) -> BaseModelOut:
        return cls(
            rec.name, rec.source, rec.architecture, rec.num_layers, rec.hidden_size, adapters
        )


class GeneratorOut(msgspec.Struct):
    id: int
    name: str
    base_model: str
    method: str
    training_adapters: int
    sha256: str
    size_bytes: int
    created_at: datetime
    hyperparameters: dict[str, Any]
    metrics: dict[str, Any]
    pinned: bool = False  # serves its method for its base model, whatever is newer

    @classmethod
    def of(cls, rec: GeneratorRecord, *, pinned: bool = False) -> GeneratorOut:
        return cls(
            id=rec.id,
            name=rec.name,
            base_model=rec.base_model,
            method=rec.method,
            training_adapters=len(rec.training_adapter_ids),
            sha256=rec.sha256,
            size_bytes=rec.size_bytes,
            created_at=rec.created_at,
            hyperparameters=rec.hyperparameters,
            metrics=rec.metrics,
            pinned=pinned,
        )


class TrainGeneratorIn(msgspec.Struct, forbid_unknown_fields=True):
    """A generator training request: where, under which name, and every field of
    ``generator.fit.config.GeneratorConfig`` with its default and bounds (a test
    holds the two to the same names, defaults and bounds; see the config for what
    each option does)."""

    base_model: Annotated[str, msgspec.Meta(min_length=1, max_length=300)] = "smollm2-135m-instruct"
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    method: Method = "sg-lora"
    steps: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 800
    k: Annotated[int, msgspec.Meta(ge=1, le=1000)] | None = None
    tau: Annotated[float, msgspec.Meta(gt=0, le=100)] | None = None
    select: Literal["weights", "task"] = "weights"
    select_examples: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 16
    gate: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    hidden: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 128
    latent: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 32
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 8
    lr: Annotated[float, msgspec.Meta(gt=0, le=10)] = 1e-3
    weight_decay: Annotated[float, msgspec.Meta(ge=0, le=10)] = 1e-4
    kl_weight: Annotated[float, msgspec.Meta(ge=0, le=100)] | None = None
    val_fraction: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.15
    eval_every: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 100
    task_vector_dropout: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5
    seed: Annotated[int, msgspec.Meta(ge=0, le=MAX_JSON_INT)] = 0


class ResourcesIn(msgspec.Struct, forbid_unknown_fields=True):
    """What a job's engine reserves for it (Ray's task options; api.engines.Resources)."""

    num_cpus: Annotated[float, msgspec.Meta(gt=0, le=1024)] = 1.0
    num_gpus: Annotated[float, msgspec.Meta(ge=0, le=64)] = 0.0


class TransferIn(msgspec.Struct, forbid_unknown_fields=True):
    """A Trans-LoRA transfer of a registered adapter to another base model."""

    adapter_id: Annotated[int, msgspec.Meta(ge=0, le=MAX_JSON_INT)]
    target_base_model: Annotated[str, msgspec.Meta(min_length=1, max_length=300)]
    samples: Annotated[int, msgspec.Meta(ge=1, le=100_000)] | None = None
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    # other TransferConfig settings, e.g. {"distill_steps": 30}
    config: dict[str, Any] | None = None
    # what a Ray engine reserves for the job: {"num_cpus": 1, "num_gpus": 0}
    resources: ResourcesIn | None = None


class JobOut(msgspec.Struct):
    id: int
    kind: str
    state: str
    stage: str | None
    progress: float
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    log_tail: str
    url: str
    elapsed_s: float | None = None  # since the job started (to its end, once it ended)
    eta_s: float | None = None  # a running job's time left, from its progress so far
    timing: str = ""  # the two in words ("running for 2 min 10 s, about 3 min left")
    live: dict[str, Any] | None = None  # the latest training figures: step, steps, loss
    live_text: str = ""  # the same in words ("step 12/40, loss 0.233")

    @classmethod
    def of(cls, rec: JobRecord) -> JobOut:
        elapsed, eta, timing = job_timing(rec)
        return cls(
            id=rec.id,
            kind=rec.kind,
            state=rec.state,
            stage=rec.stage,
            progress=rec.progress,
            params=rec.params,
            result=rec.result,
            error=rec.error,
            attempts=rec.attempts,
            created_at=rec.created_at,
            started_at=rec.started_at,
            finished_at=rec.finished_at,
            log_tail=(rec.log or "")[-4000:],
            url=f"/v1/jobs/{rec.id}",
            elapsed_s=elapsed,
            eta_s=eta,
            timing=timing,
            live=rec.live,
            live_text=live_text(rec.live),
        )


def live_text(live: dict[str, Any] | None) -> str:
    """A job's live figures in words: "step 12/40, loss 0.2330"."""
    if not live or live.get("step") is None:
        return ""
    steps = f"/{live['steps']}" if live.get("steps") else ""
    loss = live.get("loss")
    return f"step {live['step']}{steps}" + (f", loss {loss:.4f}" if loss is not None else "")


def job_timing(
    rec: JobRecord, now: datetime | None = None
) -> tuple[float | None, float | None, str]:
    """Seconds since the job started (to its end once it ended), the time a running job
    has left at its pace so far (once it has made some progress), and both in words."""
    if rec.started_at is None:
        return None, None, "waiting for a worker" if rec.state == "queued" else ""
    end = rec.finished_at or now or datetime.now(UTC)
    elapsed = max(0.0, (end - rec.started_at).total_seconds())
    if rec.finished_at is not None or rec.state != "running":
        return round(elapsed, 1), None, f"ran {duration(elapsed)}"
    eta = elapsed * (1 - rec.progress) / rec.progress if 0.01 <= rec.progress < 1 else None
    left = f", about {duration(eta)} left" if eta is not None else ""
    return (
        round(elapsed, 1),
        None if eta is None else round(eta, 1),
        (f"running for {duration(elapsed)}{left}"),
    )


def duration(seconds: float) -> str:
    """``seconds`` for a person: 45 s, 3 min 10 s, 2 h 5 min."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


class Health(msgspec.Struct):
    status: str
    version: str
    process: str  # a random id of the server process that answered


class Ready(msgspec.Struct):
    status: str
    database: str
    auth: str
    adapters: int
    generators: dict[str, list[str]]
