"""REST handlers for Trans-LoRA transfers: ``POST /v1/transfers`` queues a job
(``GET /v1/jobs/{id}`` follows it; the result names the new adapter)."""

from __future__ import annotations

from typing import Annotated

from litestar import post
from litestar.datastructures import State
from litestar.openapi.spec import Example as OAExample
from litestar.params import Body
from litestar.status_codes import HTTP_202_ACCEPTED

from api.dto import JobOut, ResourcesIn, TransferIn
from api.engines import Resources
from api.handlers import registry_of, writes
from api.routes_jobs import check_job_capacity
from generator.transfer.source import submit_request, transfer_request

TRANSFER_EXAMPLE = OAExample(
    summary="Move a SmolLM2 adapter to Gemma-3-270M",
    value={"adapter_id": 1, "target_base_model": "gemma3-270m", "samples": 64},
)


@writes(
    post,
    "/v1/transfers",
    "transfers",
    sync_to_thread=True,
    status_code=HTTP_202_ACCEPTED,
    summary="Transfer an adapter to another base model (Trans-LoRA, as a job)",
    description=(
        "Queues a job that moves adapter `adapter_id` to `target_base_model` using only the "
        "adapter's stored seed examples: the target model writes synthetic inputs, a "
        "discriminator on the source model keeps the realistic ones, and a new LoRA for the "
        "target is distilled from the source model + adapter on them. Returns the job "
        "(202); `GET /v1/jobs/{id}` shows its stage, progress and per-stage figures, and "
        "its `result.adapter_id` once it has succeeded. 404: unknown adapter or target "
        "model; 400: an adapter without seed examples, the same base model, bad settings."
    ),
)
def create_transfer(
    state: State, data: Annotated[TransferIn, Body(examples=[TRANSFER_EXAMPLE])]
) -> JobOut:
    reg = registry_of(state)
    asked = data.resources or ResourcesIn()
    resources = Resources(asked.num_cpus, asked.num_gpus).as_params()
    request = transfer_request(
        reg,
        data.adapter_id,
        data.target_base_model,
        samples=data.samples,
        config=data.config,
        name=data.name,
    )
    check_job_capacity(state)
    return JobOut.of(submit_request(reg, request, resources=resources))


TRANSFER_ROUTES = [create_transfer]
