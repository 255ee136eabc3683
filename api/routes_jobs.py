"""REST handlers for jobs (``/v1/jobs``): look, list, cancel; and the queue's limit that
every route submitting a job checks first."""

from __future__ import annotations

from typing import Annotated

from litestar import delete
from litestar.datastructures import State
from litestar.exceptions import TooManyRequestsException
from litestar.params import FromQuery, QueryParameter
from litestar.status_codes import HTTP_200_OK

from api.dto import JobKind, JobOut
from api.handlers import MAX_OFFSET, AnyId, reads, registry_of, writes
from registry.models import JobState


def check_job_capacity(state: State) -> None:
    reg = registry_of(state)
    busy = reg.count_jobs(state="queued") + reg.count_jobs(state="running")
    if busy >= state.api_settings.max_jobs:
        raise TooManyRequestsException(
            f"{busy} jobs are queued or running (limit {state.api_settings.max_jobs}); "
            "retry when one finishes",
            headers={"Retry-After": "30"},
        )


@reads("/v1/jobs/{job_id:int}", "jobs")
def get_job(state: State, job_id: AnyId) -> JobOut:
    return JobOut.of(registry_of(state).get_job(job_id))


@writes(
    delete,
    "/v1/jobs/{job_id:int}",
    "jobs",
    sync_to_thread=True,
    status_code=HTTP_200_OK,
    summary="Cancel a queued or running job",
    description=(
        "The job ends as `cancelled`; a running one stops at its worker's next heartbeat and "
        "keeps what it committed. A job that has ended already is a 409."
    ),
)
def cancel_job(state: State, job_id: AnyId) -> JobOut:
    return JobOut.of(registry_of(state).cancel_job(job_id))


@reads("/v1/jobs", "jobs")
def list_jobs(
    state: State,
    job_state: Annotated[JobState | None, QueryParameter(name="state")] = None,
    kind: FromQuery[JobKind | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
    offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
) -> list[JobOut]:
    recs = registry_of(state).list_jobs(
        state=job_state.value if job_state is not None else None,
        kind=kind,
        limit=limit,
        offset=offset,
    )
    return [JobOut.of(r) for r in recs]


JOB_ROUTES = [get_job, cancel_job, list_jobs]
