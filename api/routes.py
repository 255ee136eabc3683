"""REST handlers (``/v1``): validate, call one use case, return a DTO.

Handlers that touch the database or the blob store are synchronous and run in
Litestar's thread pool (``sync_to_thread=True``), so the event loop never
waits on I/O; generation goes through the micro-batcher.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio.to_thread
import msgspec
from litestar import Response, delete, post, put
from litestar.datastructures import State, UploadFile
from litestar.enums import RequestEncodingType
from litestar.openapi.spec import Example as OAExample
from litestar.params import Body, FromQuery, JSONBody, QueryParameter
from litestar.status_codes import (
    HTTP_201_CREATED,
    HTTP_202_ACCEPTED,
    HTTP_204_NO_CONTENT,
)

from api.dto import (
    DESCRIPTION_PATTERN,
    MAX_JSON_INT,
    AdapterDetail,
    AdapterOut,
    AdapterPage,
    BaseModelOut,
    GenerateIn,
    GenerateOut,
    GeneratorOut,
    JobOut,
    Method,
    NeighbourOut,
    SearchHitOut,
    SearchPage,
    TrainGeneratorIn,
    UploadOut,
)
from api.handlers import MAX_OFFSET, READER, WRITE_ERRORS, AnyId, reads, registry_of, writes
from api.routes_checks import CHECK_ROUTES
from api.routes_jobs import check_job_capacity
from api.routes_recipes import RECIPE_ROUTES
from generator.adapt.examples import FewShot
from generator.adapt.pipeline import AdaptConfig
from generator.experts import candidate_records
from generator.hypernet.methods import check_method
from generator.serve.fewshot import training_seconds
from generator.serve.generator import Generated
from generator.serve.generator import Request as GenRequest
from generator.zoo.artifacts import seed_artifacts
from registry.errors import InvalidInput
from registry.model_card import CARD_NAME
from registry.models import Provenance
from registry.peft_format import PeftFiles, config_bytes, parse_config, read_adapter
from registry.records import AdapterRecord, JobRecord
from registry.service import Registry
from registry.serving import check_registered
from registry.settings import MAX_DESCRIPTION_CHARS

GENERATE_EXAMPLE = OAExample(
    summary="A sentiment adapter from its description",
    value={
        "description": "Is this product review positive or negative? Answer positive or negative.",
        "base_model": "smollm2-135m-instruct",
        "method": "sg-lora",
        "seed": 0,
    },
)


def generation_request(reg: Registry, data: GenerateIn) -> GenRequest:
    """A checked generation request (the REST API and the admin UI share these checks)."""
    if data.method is not None:
        check_method(data.method)
    if data.generator_id is not None and not 1 <= data.generator_id <= MAX_JSON_INT:
        raise InvalidInput(f"generator_id must be a positive integer, got {data.generator_id}")
    fewshot = None
    if data.examples is not None or data.labels is not None:
        pairs = [(e.input, e.output) for e in data.examples or []]
        fewshot = FewShot.parse(pairs, data.labels)
    elif data.weighting or data.refine_steps:
        raise InvalidInput("weighting and refine_steps learn from examples: give some")
    if not data.description.strip():
        raise InvalidInput("description is empty")
    if len(data.description) > reg.settings.max_description_chars:
        raise InvalidInput(
            f"description is longer than {reg.settings.max_description_chars} characters"
        )
    if not 0 <= data.seed <= MAX_JSON_INT:
        raise InvalidInput(f"seed must be between 0 and {MAX_JSON_INT}")
    adapt = AdaptConfig(weighting=data.weighting, refine_steps=data.refine_steps)
    return GenRequest(data.description, seed=data.seed, fewshot=fewshot, adapt=adapt)


@post(
    "/v1/generate",
    opt=READER,
    # 409: ``generator_id`` names a generator of another method or base model
    responses=WRITE_ERRORS,
    status_code=HTTP_201_CREATED,
    summary="Generate an adapter from a task description",
    description=(
        "Decodes a LoRA for `description` with the generator that serves `method` "
        "(default `sg-lora`) for `base_model`: the one pinned with `PUT "
        "/v1/generators/{id}/pin`, else the newest; or with `generator_id`. Registers it "
        "(provenance `generated`, with its expert neighbours) and "
        "returns the record and its download URL. The same request with the same seed returns "
        "the same adapter."
    ),
    tags=["generate"],
)
async def generate(
    state: State,
    data: Annotated[GenerateIn, Body(examples=[GENERATE_EXAMPLE])],
) -> GenerateOut:
    rec, made, job = await serve_generation(state, data)
    out = AdapterOut.of(rec)
    return GenerateOut(
        adapter=out,
        download_url=out.download_url,
        method=made.method,
        generator_id=made.generator_id,
        seed=made.seed,
        neighbours=[NeighbourOut(**n.__dict__) for n in made.neighbours],
        fewshot=made.fewshot,
        job=JobOut.of(job) if job is not None else None,
    )


async def serve_generation(
    state: State, data: GenerateIn
) -> tuple[AdapterRecord, Generated, JobRecord | None]:
    """Generate (the REST API and the admin UI share it): a request whose training would
    take longer than its time budget gets the chosen candidate now and a 'generate' job
    for the trained adapter."""
    reg = registry_of(state)
    request = generation_request(reg, data)
    where = {
        "base_model": data.base_model,
        "method": data.method,
        "generator_id": data.generator_id,
    }
    if not request.adapt.trains:
        rec, made = await state.batcher.generate(request, **where)
        return rec, made, None
    chosen = replace(request, adapt=AdaptConfig())  # choose first: it says how long training takes
    rec, made = await state.batcher.generate(chosen, **where)
    report = made.fewshot or {}
    forecast = training_seconds(
        report.get("seconds", {}).get("selection", 0.0),
        len(report.get("candidates", {})),
        len(request.examples),
        request.adapt,
    )
    if forecast > data.time_budget_s:
        check_job_capacity(state)
        job = await anyio.to_thread.run_sync(reg.submit_job, "generate", generation_job(data))
        return rec, made, job
    rec, made = await state.batcher.generate(request, **where)
    return rec, made, None


def generation_job(data: GenerateIn) -> dict[str, Any]:
    """A generation request as job parameters (the worker checks them again)."""
    return {f: getattr(data, f) for f in data.__struct_fields__} | {
        "examples": [{"input": e.input, "output": e.output} for e in data.examples or []],
    }


@reads("/v1/adapters", "adapters")
def list_adapters(
    state: State,
    base_model: FromQuery[str | None] = None,
    provenance: FromQuery[Provenance | None] = None,
    q: Annotated[
        str | None,
        QueryParameter(
            description="Semantic search: adapters nearest in meaning.",
            max_length=MAX_DESCRIPTION_CHARS,
            pattern=DESCRIPTION_PATTERN,
        ),
    ] = None,
    k: Annotated[int, QueryParameter(ge=1, le=1000)] = 10,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
    offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
    sort: Annotated[
        Literal["id", "name", "rank", "provenance", "created", "accuracy"],
        QueryParameter(description="Order of a listing (not of a search); unmeasured last."),
    ] = "id",
    order: FromQuery[Literal["asc", "desc"]] = "asc",
) -> AdapterPage | SearchPage:
    """List adapters (filters, pagination, `sort` and `order`) or, with `q`, search them
    by meaning."""
    reg = registry_of(state)
    if k > state.api_settings.max_k:  # checked with or without q, as the OpenAPI says
        raise InvalidInput(f"k must be at most {state.api_settings.max_k}")
    if q is not None:
        hits = reg.search(q, k=k, base_model=base_model)
        if provenance is not None:
            hits = [h for h in hits if h.adapter.provenance == provenance.value]
        return SearchPage(q, [SearchHitOut(AdapterOut.of(h.adapter), h.score) for h in hits])
    items = reg.list_adapters(
        base_model=base_model, provenance=provenance, limit=limit, offset=offset,
        sort=sort, descending=order == "desc",
    )  # fmt: skip
    total = reg.count_adapters(base_model=base_model, provenance=provenance)
    return AdapterPage([AdapterOut.of(r) for r in items], total, limit, offset)


@reads("/v1/adapters/{adapter_id:int}", "adapters")
def get_adapter(state: State, adapter_id: AnyId) -> AdapterDetail:
    reg = registry_of(state)
    rec = reg.get_adapter(adapter_id)
    base = AdapterOut.of(rec)
    return AdapterDetail(
        **{f: getattr(base, f) for f in base.__struct_fields__},
        config=rec.config,
        artifacts=reg.artifact_names(adapter_id),
    )


@reads(
    "/v1/adapters/{adapter_id:int}/download",
    "adapters",
    # the default body is a zip (documented as one, not as a JSON string); the one-file
    # variants carry their own media types
    media_type="application/zip",
    description=(
        "`application/zip` with `adapter_config.json`, `adapter_model.safetensors` and the "
        "model card `README.md` at its root (`PeftModel.from_pretrained(base, unzipped_dir)`); "
        "`file=safetensors` (`application/octet-stream`), `file=config` (`application/json`) "
        "or `file=card` (`text/markdown`) returns one file."
    ),
)
def download_adapter(
    state: State,
    adapter_id: AnyId,
    file: Annotated[str, QueryParameter(pattern="^(zip|safetensors|config|card)$")] = "zip",
) -> Response[bytes]:
    reg = registry_of(state)
    rec = reg.get_adapter(adapter_id)
    if file == "safetensors":
        body = reg.adapter_files(adapter_id).weights
        media, name = "application/octet-stream", "adapter_model.safetensors"
    elif file == "config":
        body = config_bytes(reg.adapter_files(adapter_id).config)
        media, name = "application/json", "adapter_config.json"
    elif file == "card":
        body, media, name = reg.model_card(adapter_id).encode(), "text/markdown", CARD_NAME
    else:
        body, media, name = reg.adapter_zip(adapter_id), "application/zip", f"{rec.name}.zip"
    # the weights' sha256 names the weights; the zip and the card also carry the story
    # around them, which changes (a parent deleted), so they are tagged by their bytes
    tag = rec.sha256 if file == "safetensors" else hashlib.sha256(body).hexdigest()
    return Response(
        body,
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{name}"', "ETag": tag},
    )


@dataclass
class UploadForm:
    description: str
    base_model: str
    name: str | None = None
    # Any: a client may send a plain field where a file belongs; ``_part`` reads both
    file: Any = None  # a PEFT zip
    config: Any = None  # or the two files
    weights: Any = None
    seeds: Any = None  # JSONL of a few {"input", "output"} examples, kept for Trans-LoRA
    labels: str | None = None  # comma-separated label set of a classification task


@writes(
    post,
    "/v1/adapters",
    "adapters",
    status_code=HTTP_201_CREATED,
    summary="Upload a PEFT LoRA adapter",
    description=(
        "Multipart form: `description`, `base_model`, optional `name`, and either `file` (a "
        "zip holding adapter_config.json and adapter_model.safetensors) or `config` and "
        '`weights`. Optional `seeds` (JSONL of a few `{"input", "output"}` examples) '
        "and `labels` (comma-separated) are kept with the adapter so it can be transferred "
        "to another base model. Validated against the base model before anything is stored; "
        "`serving_warnings` lists what vLLM or LoRAX would refuse or ignore in it."
    ),
)
async def upload_adapter(
    state: State,
    data: Annotated[UploadForm, Body(media_type=RequestEncodingType.MULTI_PART)],
) -> UploadOut:
    max_bytes = state.registry.settings.max_adapter_bytes
    seeds = await _part(data.seeds, "seeds") if data.seeds is not None else None
    labels = [x.strip() for x in data.labels.split(",")] if data.labels is not None else None
    artifacts, meta = seed_artifacts(seeds, labels)  # checked before the adapter is read
    files = await uploaded_files(data.file, data.config, data.weights, max_bytes)
    rec = await anyio.to_thread.run_sync(
        lambda: registry_of(state).add_adapter(
            files,
            base_model=data.base_model,
            description=data.description,
            name=data.name,
            meta=meta,
            artifacts=artifacts,
            refuse_duplicates=True,
        ),
    )
    warnings = await anyio.to_thread.run_sync(serving_warnings, registry_of(state), rec.id)
    return UploadOut(**msgspec.structs.asdict(AdapterOut.of(rec)), serving_warnings=warnings)


def serving_warnings(reg: Registry, adapter_id: int) -> list[str]:
    """What the serving engines would refuse or ignore in a just-uploaded adapter (PEFT's
    rules were the upload's own check), one line each (REST and the admin UI)."""
    report = check_registered(reg, adapter_id, ("vllm", "lorax"))
    return [f"{f.target}: {f.message}" for check in report.targets for f in check.findings]


async def uploaded_files(file: Any, config: Any, weights: Any, max_bytes: int) -> PeftFiles:
    """The adapter of an upload form: ``file`` (a PEFT zip) or ``config`` and ``weights``
    (the REST API and the admin UI share this)."""
    if file is not None:
        raw = await _part(file, "file")
        return await anyio.to_thread.run_sync(_read_zip, raw, max_bytes)
    if config is not None and weights is not None:
        parsed = parse_config(await _part(config, "config"))
        return PeftFiles(config=parsed, weights=await _part(weights, "weights"))
    raise InvalidInput("send either `file` (a PEFT zip) or both `config` and `weights`")


async def _part(value: Any, name: str) -> bytes:
    """A form part's bytes, whether it came as a file or as a plain field."""
    if isinstance(value, UploadFile):
        return await value.read()
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, bytes):
        return value
    raise InvalidInput(f"form part {name!r} must be a file")


def _read_zip(raw: bytes, max_bytes: int) -> PeftFiles:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload.zip"
        path.write_bytes(raw)
        return read_adapter(path, max_bytes=max_bytes)


@writes(
    delete,
    "/v1/adapters/{adapter_id:int}",
    "adapters",
    sync_to_thread=True,
    status_code=HTTP_204_NO_CONTENT,
)
def delete_adapter(state: State, adapter_id: AnyId) -> None:
    registry_of(state).delete_adapter(adapter_id)


@reads("/v1/base-models", "base models")
def base_models(state: State) -> list[BaseModelOut]:
    reg = registry_of(state)
    return [
        BaseModelOut.of(b, reg.count_adapters(base_model=b.name)) for b in reg.list_base_models()
    ]


@reads("/v1/generators", "generators")
def list_generators(
    state: State,
    base_model: FromQuery[str | None] = None,
    method: FromQuery[Method | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
    offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
) -> list[GeneratorOut]:
    reg = registry_of(state)
    recs = reg.list_generators(base_model=base_model, method=method, limit=limit, offset=offset)
    pinned = reg.pinned_generator_ids()
    return [GeneratorOut.of(r, pinned=r.id in pinned) for r in recs]


@writes(
    put,
    "/v1/generators/{generator_id:int}/pin",
    "generators",
    sync_to_thread=True,
    summary="Serve this generator for its method and base model",
    description=(
        "From now on `POST /v1/generate` for this generator's method and base model uses it, "
        "whatever is registered later, until it is unpinned or another is pinned in its place."
    ),
)
def pin_generator(state: State, generator_id: AnyId) -> GeneratorOut:
    return GeneratorOut.of(registry_of(state).pin_generator(generator_id), pinned=True)


@writes(
    delete,
    "/v1/generators/{generator_id:int}/pin",
    "generators",
    sync_to_thread=True,
    status_code=HTTP_204_NO_CONTENT,
    summary="Unpin a generator: the newest of its method serves again",
)
def unpin_generator(state: State, generator_id: AnyId) -> None:
    registry_of(state).unpin_generator(generator_id)


@writes(
    post,
    "/v1/generators",
    "generators",
    sync_to_thread=True,
    status_code=HTTP_202_ACCEPTED,
    summary="Train a generator (as a job)",
)
def train_generator(state: State, data: JSONBody[TrainGeneratorIn]) -> JobOut:
    return JobOut.of(submit_generator_training(state, data))


def submit_generator_training(state: State, data: TrainGeneratorIn) -> JobRecord:
    """Check a generator training request and queue it (shared with the admin UI)."""
    from generator.fit.config import GeneratorConfig, options

    reg = registry_of(state)
    # the job's own check, now: 400 rather than a failed job
    config = GeneratorConfig.from_params({f.name: getattr(data, f.name) for f, _ in options()})
    reg.linear_shapes(data.base_model)  # an unregistered base model: 404 now, not in the job
    if not candidate_records(reg, data.base_model):  # nothing to learn from: 400 now
        raise InvalidInput(
            f"base model {data.base_model} has no trained or imported adapters that are not "
            "held out, so a generator has nothing to learn from: build a zoo first "
            "(`loramint zoo build`)"
        )
    check_job_capacity(state)
    params = {"base_model": data.base_model, "name": data.name, "config": config.to_params()}
    return reg.submit_job("train-generator", params)


ROUTES = [
    generate,
    list_adapters,
    get_adapter,
    download_adapter,
    upload_adapter,
    delete_adapter,
    base_models,
    list_generators,
    pin_generator,
    unpin_generator,
    train_generator,
    *CHECK_ROUTES,  # GET /v1/adapters/{id}/check (api/routes_checks.py)
    *RECIPE_ROUTES,  # materialise, generator delete (api/routes_recipes.py)
]
