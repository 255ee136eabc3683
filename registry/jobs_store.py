"""Jobs: offline work (generator training, zoo builds, adapter transfers) that
worker processes claim from the registry. The registry stores jobs; it never runs them.

A claim is a lease that the worker renews with ``heartbeat``. A running job
whose lease has run out belongs to a lost worker (killed, hung, its machine
gone): the next claim takes it over as a new attempt, or fails it once it is
out of attempts. Every change a worker makes is conditional on its still
holding the job, so a worker that lost its job gets ``Conflict`` instead of
overwriting its successor's work.

Claims are safe with many worker processes. On PostgreSQL the candidate row is
locked with ``FOR UPDATE SKIP LOCKED``, so workers take different jobs without
waiting on each other. SQLite has no row locks (it renders no ``FOR UPDATE``)
but runs one writer at a time: the claim is an UPDATE conditional on the row
still being claimable and unchanged since it was read, and a worker that lost
the race reads the next candidate. Leases are measured on the workers' clocks
(UTC), which must agree to well within a lease.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from registry import blob_refs
from registry.blobs import BlobStore
from registry.db import changed_rows, transaction
from registry.errors import Conflict, InvalidInput, JobNotFound
from registry.job_fields import (
    ARTIFACT_NAME_RE,
    ERROR_MAX_CHARS,
    append_log,
    check_dict,
    check_kind,
    check_kinds,
    check_progress,
    check_stage,
    check_state,
    check_worker,
    clean,
    lease_of,
)
from registry.models import JobArtifactRow, JobRow, JobState, utcnow
from registry.records import JobRecord


class _Host(Protocol):
    """What ``JobStore`` needs from the registry it is mixed into."""

    _sessions: sessionmaker[Session]
    blobs: BlobStore

    def _drop_blobs_if_unused(self, keys: Sequence[str]) -> None: ...


class JobStore:
    """The job queue half of ``Registry`` (kept apart so service.py stays readable)."""

    def submit_job(
        self: _Host, kind: str, params: dict[str, Any] | None = None, *, max_attempts: int = 3
    ) -> JobRecord:
        """Queue a job; the next worker claiming ``kind`` (or any kind) takes it."""
        check_kind(kind)
        check_dict("params", params)
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise InvalidInput(f"max_attempts must be an integer >= 1, got {max_attempts!r}")
        now = utcnow()
        with transaction(self._sessions) as s:
            row = JobRow(
                kind=kind,
                params=params or {},
                state=JobState.QUEUED.value,
                progress=0.0,
                log="",
                attempts=0,
                max_attempts=max_attempts,
                created_at=now,
                updated_at=now,
            )
            s.add(row)
            s.flush()
            return JobRecord.of(row)

    def claim_job(
        self: _Host,
        worker: str,
        *,
        kinds: Sequence[str] | None = None,
        job_id: int | None = None,
        lease_seconds: float = 60,
    ) -> JobRecord | None:
        """The oldest claimable job (or job ``job_id``, if claimable), now held by
        ``worker``; None when there is none.

        Claimable: queued, or running under a lease that has run out. Taking over
        a lost worker's job is a new attempt; a job out of attempts is failed
        instead and the next one is tried. ``worker`` must name one process
        uniquely (host, pid and a random suffix): holding a job means having its name.
        """
        check_worker(worker)
        lease = lease_of(lease_seconds)
        wanted = None if kinds is None else check_kinds(kinds)
        if wanted == []:
            return None
        while True:
            with transaction(self._sessions) as s:
                now = utcnow()
                query = (
                    sa.select(
                        JobRow.id,
                        JobRow.state,
                        JobRow.attempts,
                        JobRow.max_attempts,
                        JobRow.worker,
                        JobRow.error,
                        JobRow.log,
                        JobRow.started_at,
                    )
                    .where(_claimable(now))
                    .order_by(JobRow.id)
                    .limit(1)
                    # PostgreSQL: lock it, skipping rows other workers are claiming;
                    # SQLite renders nothing here and relies on the conditional UPDATE
                    .with_for_update(skip_locked=True)
                )
                if wanted is not None:
                    query = query.where(JobRow.kind.in_(wanted))
                if job_id is not None:
                    query = query.where(JobRow.id == job_id)
                seen = s.execute(query).one_or_none()
                if seen is None:
                    return None
                lost = seen.state == JobState.RUNNING.value
                values: dict[str, Any]
                if lost and seen.attempts >= seen.max_attempts:
                    error = f"gave up after {seen.attempts} attempts: {seen.error or 'worker lost'}"
                    values = {
                        "state": JobState.FAILED.value,
                        "error": error,
                        "log": append_log(
                            seen.log, f"worker {seen.worker} lost its lease; {error}"
                        ),
                        "lease_expires_at": None,
                        "finished_at": now,
                        "updated_at": now,
                    }
                    _update_claimable(s, seen, now, values)
                    continue  # committed; look for the next job
                values = {
                    "state": JobState.RUNNING.value,
                    "worker": worker,
                    "attempts": seen.attempts + 1,
                    "lease_expires_at": now + lease,
                    "started_at": seen.started_at or now,
                    "updated_at": now,
                }
                if lost:
                    values["log"] = append_log(
                        seen.log,
                        f"worker {seen.worker} lost its lease; "
                        f"attempt {seen.attempts + 1} by {worker}",
                    )
                if _update_claimable(s, seen, now, values):
                    return _record(s, seen.id)
            # another worker claimed it between our read and our update: read again

    def heartbeat(
        self: _Host,
        job_id: int,
        worker: str,
        *,
        progress: float | None = None,
        stage: str | None = None,
        log: str | None = None,
        lease_seconds: float = 60,
        live: dict[str, Any] | None = None,
    ) -> JobRecord:
        """Renew ``worker``'s lease on a job and record how far it got (``live``: the
        latest training figures, ``{"step", "steps", "loss"}``).

        ``Conflict`` means the worker no longer holds the job (it was cancelled,
        or taken over after the lease ran out): the worker should stop. A late
        heartbeat still counts if no one has taken the job over meanwhile.
        """
        lease = lease_of(lease_seconds)
        values: dict[str, Any] = {}
        if progress is not None:
            values["progress"] = check_progress(progress)
        if stage is not None:
            values["stage"] = check_stage(stage)
        if log is not None and not isinstance(log, str):
            raise InvalidInput("a job log entry must be a string")
        if live is not None:
            values["live"] = check_live(live)

        def change(held: sa.Row[*tuple[Any, ...]], now: datetime) -> dict[str, Any]:
            new = {**values, "lease_expires_at": now + lease, "updated_at": now}
            if log:
                new["log"] = append_log(held.log, log)
            return new

        with transaction(self._sessions) as s:
            _update_held(s, job_id, worker, change)
            return _record(s, job_id)

    def finish_job(self: _Host, job_id: int, worker: str, *, result: dict[str, Any]) -> JobRecord:
        """Mark ``worker``'s job succeeded with ``result`` (e.g. ``{"adapter_id": 5}``)."""
        if result is None:
            raise InvalidInput("a finished job's result must be a JSON object")
        check_dict("result", result)

        def change(held: sa.Row[*tuple[Any, ...]], now: datetime) -> dict[str, Any]:
            return {
                "state": JobState.SUCCEEDED.value,
                "result": result,
                "progress": 1.0,
                "error": None,
                "lease_expires_at": None,
                "finished_at": now,
                "updated_at": now,
            }

        with transaction(self._sessions) as s:
            _update_held(s, job_id, worker, change)
            return _record(s, job_id)

    def fail_job(
        self: _Host, job_id: int, worker: str, error: str, *, retry: bool = True
    ) -> JobRecord:
        """Record that ``worker``'s attempt failed with ``error``.

        With ``retry`` and attempts left the job is queued again (its artifacts
        let the next attempt skip finished stages); otherwise it has failed.
        """
        if not isinstance(error, str) or not error.strip():
            raise InvalidInput("a job's error must be a non-empty string")
        error = clean(error)[-ERROR_MAX_CHARS:]
        summary = error.strip().splitlines()[-1]

        def change(held: sa.Row[*tuple[Any, ...]], now: datetime) -> dict[str, Any]:
            common = {"error": error, "lease_expires_at": None, "updated_at": now}
            if retry and held.attempts < held.max_attempts:
                line = f"attempt {held.attempts} failed, will retry: {summary}"
                return {
                    **common,
                    "state": JobState.QUEUED.value,
                    "worker": None,
                    "log": append_log(held.log, line),
                }
            line = f"attempt {held.attempts} failed: {summary}"
            return {
                **common,
                "state": JobState.FAILED.value,
                "finished_at": now,
                "log": append_log(held.log, line),
            }

        with transaction(self._sessions) as s:
            _update_held(s, job_id, worker, change)
            return _record(s, job_id)

    def cancel_job(self: _Host, job_id: int) -> JobRecord:
        """Cancel a queued or running job; its worker learns at its next heartbeat."""
        with transaction(self._sessions) as s:
            now = utcnow()
            cancelled = changed_rows(
                s,
                sa.update(JobRow)
                .where(
                    JobRow.id == job_id,
                    JobRow.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]),
                )
                .values(
                    state=JobState.CANCELLED.value,
                    lease_expires_at=None,
                    finished_at=now,
                    updated_at=now,
                ),
            )
            if not cancelled:
                state = _job_row(s, job_id).state
                raise Conflict(f"job {job_id} is {state} already: only queued or running jobs")
            return _record(s, job_id)

    def delete_job(self: _Host, job_id: int) -> None:
        """Delete a job that is not running, with its artifacts (and their unshared blobs)."""
        with blob_refs.dropping(self.blobs) as retired, transaction(self._sessions) as s:
            blob_refs.lock(s)
            keys = list(
                s.scalars(sa.select(JobArtifactRow.blob_key).where(JobArtifactRow.job_id == job_id))
            )
            s.execute(sa.delete(JobArtifactRow).where(JobArtifactRow.job_id == job_id))
            deleted = changed_rows(
                s,
                sa.delete(JobRow).where(
                    JobRow.id == job_id, JobRow.state != JobState.RUNNING.value
                ),
            )
            if not deleted:
                _job_row(s, job_id)
                raise Conflict(f"job {job_id} is running: cancel it before deleting it")
            retired += blob_refs.retire(s, self.blobs, keys)

    def get_job(self: _Host, job_id: int) -> JobRecord:
        with self._sessions() as s:
            return _record(s, job_id)

    def list_jobs(
        self: _Host,
        *,
        state: str | None = None,
        kind: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[JobRecord]:
        """Jobs, newest first."""
        if limit < 1 or limit > 10_000:
            raise InvalidInput(f"limit must be between 1 and 10000, got {limit}")
        if offset < 0:
            raise InvalidInput(f"offset must be >= 0, got {offset}")
        query = sa.select(JobRow).order_by(JobRow.id.desc())
        if state is not None:
            query = query.where(JobRow.state == check_state(state))
        if kind is not None:
            query = query.where(JobRow.kind == kind)
        with self._sessions() as s:
            rows = s.scalars(query.limit(limit).offset(offset)).all()
            names = _artifact_names(s, [r.id for r in rows])
            return [JobRecord.of(r, names[r.id]) for r in rows]

    def count_jobs(self: _Host, state: str | None = None) -> int:
        query = sa.select(sa.func.count(JobRow.id))
        if state is not None:
            query = query.where(JobRow.state == check_state(state))
        with self._sessions() as s:
            return int(s.scalar(query) or 0)

    def put_job_artifact(self: _Host, job_id: int, name: str, data: bytes) -> None:
        """Store a named checkpoint of a job (replacing one of that name), so that a
        later attempt can skip the stage that produced it."""
        if not isinstance(name, str) or not ARTIFACT_NAME_RE.match(name):
            raise InvalidInput(
                f"job artifact name {name!r} must be 1-100 letters, digits, '_', '-' or '.'"
            )
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidInput("a job artifact must be bytes")
        with self._sessions() as s:
            _job_row(s, job_id)  # before the blob is written: a bad id leaves nothing behind
        payload = bytes(data)
        key = self.blobs.put(payload)
        replaced: str | None = None
        try:
            with transaction(self._sessions) as s:
                blob_refs.keep(s, self.blobs, {key: payload})  # the lock, first
                _job_row(s, job_id)
                row = s.get(JobArtifactRow, (job_id, name))
                if row is None:
                    row = JobArtifactRow(job_id=job_id, name=name)
                    s.add(row)
                else:
                    replaced = row.blob_key
                row.blob_key = key
                row.size_bytes = len(payload)
                row.created_at = utcnow()
        except sa.exc.IntegrityError as exc:
            self._drop_blobs_if_unused([key])
            raise Conflict(f"artifact {name!r} of job {job_id} could not be stored") from exc
        except BaseException:
            self._drop_blobs_if_unused([key])
            raise
        if replaced is not None and replaced != key:
            self._drop_blobs_if_unused([replaced])

    def job_artifact(self: _Host, job_id: int, name: str) -> bytes | None:
        """A job's named artifact, verified against its sha256; None if it has none by
        that name (the stage has not finished yet)."""
        with self._sessions() as s:
            _job_row(s, job_id)
            key = s.scalar(
                sa.select(JobArtifactRow.blob_key).where(
                    JobArtifactRow.job_id == job_id, JobArtifactRow.name == name
                )
            )
        return None if key is None else self.blobs.get(key)


def _claimable(now: datetime) -> sa.ColumnElement[bool]:
    return sa.or_(
        JobRow.state == JobState.QUEUED.value,
        sa.and_(JobRow.state == JobState.RUNNING.value, JobRow.lease_expires_at < now),
    )


def _update_claimable(
    s: Session, seen: sa.Row[*tuple[Any, ...]], now: datetime, values: dict[str, Any]
) -> bool:
    """Apply ``values`` if the job is still claimable and unchanged since ``seen``
    was read; False when another worker got there first (or the worker renewed it)."""
    statement = (
        sa.update(JobRow)
        .where(
            JobRow.id == seen.id,
            JobRow.state == seen.state,
            JobRow.attempts == seen.attempts,
            _claimable(now),
        )
        .values(**values)
    )
    return changed_rows(s, statement) == 1


def _update_held(
    s: Session,
    job_id: int,
    worker: str,
    change: Callable[[sa.Row[*tuple[Any, ...]], datetime], dict[str, Any]],
) -> None:
    """Apply ``change`` to a job ``worker`` holds; JobNotFound or Conflict if it does not."""
    held = _held(s, job_id, worker)
    statement = (
        sa.update(JobRow)
        .where(
            JobRow.id == job_id,
            JobRow.state == JobState.RUNNING.value,
            JobRow.worker == worker,
            JobRow.attempts == held.attempts,
        )
        .values(**change(held, utcnow()))
    )
    if changed_rows(s, statement) != 1:
        _held(s, job_id, worker)  # says who has it now
        raise Conflict(f"job {job_id} was taken over while worker {worker!r} was updating it")


def _held(s: Session, job_id: int, worker: str) -> sa.Row[*tuple[Any, ...]]:
    held = s.execute(
        sa.select(
            JobRow.state, JobRow.worker, JobRow.attempts, JobRow.max_attempts, JobRow.log
        ).where(JobRow.id == job_id)
    ).one_or_none()
    if held is None:
        raise JobNotFound(f"no job with id {job_id}")
    if held.state != JobState.RUNNING.value:
        raise Conflict(f"job {job_id} is {held.state}: worker {worker!r} no longer holds it")
    if held.worker != worker:
        raise Conflict(f"job {job_id} is held by worker {held.worker!r}, not {worker!r}")
    return held


def _job_row(s: Session, job_id: int) -> JobRow:
    # populate_existing: the conditional UPDATEs bypass the session's copies
    row = s.get(JobRow, job_id, populate_existing=True)
    if row is None:
        raise JobNotFound(f"no job with id {job_id}")
    return row


def _record(s: Session, job_id: int) -> JobRecord:
    return JobRecord.of(_job_row(s, job_id), _artifact_names(s, [job_id])[job_id])


def _artifact_names(s: Session, job_ids: Sequence[int]) -> dict[int, list[str]]:
    names: dict[int, list[str]] = {job_id: [] for job_id in job_ids}
    if job_ids:
        for job_id, name in s.execute(
            sa.select(JobArtifactRow.job_id, JobArtifactRow.name).where(
                JobArtifactRow.job_id.in_(job_ids)
            )
        ):
            names[job_id].append(name)
    return names


LIVE_KEYS = {"step": int, "steps": int, "loss": float}


def check_live(live: dict[str, Any]) -> dict[str, Any]:
    """A job's live figures: only ``step``, ``steps`` (whole numbers) and ``loss``."""
    if not isinstance(live, dict) or set(live) - set(LIVE_KEYS):
        raise InvalidInput(f"a job's live figures are {', '.join(LIVE_KEYS)}, got {live!r}")
    out: dict[str, Any] = {}
    for key, kind in LIVE_KEYS.items():
        value = live.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"a job's {key} must be a number, got {value!r}")
        if kind is float:
            out[key] = round(float(value), 6) if math.isfinite(value) else None
        else:
            out[key] = int(value)
    return out
