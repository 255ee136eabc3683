"""The job queue in the registry, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from registry.errors import Conflict, CorruptBlob, InvalidInput, JobNotFound
from registry.job_fields import LOG_MAX_CHARS
from registry.models import JobRow
from registry.service import Registry
from tests.conftest import make_lora


def expire_lease(reg: Registry, job_id: int) -> None:
    """As if the worker holding the job had died a while ago."""
    with reg.engine.begin() as conn:
        conn.execute(
            sa.update(JobRow)
            .where(JobRow.id == job_id)
            .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=5))
        )


def blob_files(reg: Registry) -> list[str]:
    root = reg.settings.blob_dir
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_submit_claim_heartbeat_finish(registry: Registry) -> None:
    job = registry.submit_job("train-generator", {"method": "sg-lora", "steps": 10})
    assert job.state == "queued" and job.kind == "train-generator" and job.attempts == 0
    assert job.params == {"method": "sg-lora", "steps": 10} and job.max_attempts == 3
    assert job.progress == 0.0 and job.log == "" and job.artifacts == []
    assert job.worker is None and job.started_at is None and job.created_at.tzinfo is not None
    assert registry.get_job(job.id) == job

    before = datetime.now(UTC)
    claimed = registry.claim_job("w1", lease_seconds=60)
    assert claimed is not None and claimed.id == job.id
    assert claimed.state == "running" and claimed.worker == "w1" and claimed.attempts == 1
    assert claimed.started_at is not None and claimed.started_at >= before
    assert claimed.lease_expires_at is not None
    assert claimed.lease_expires_at - claimed.started_at == timedelta(seconds=60)
    assert registry.claim_job("w2") is None  # held under a live lease

    beat = registry.heartbeat(
        job.id, "w1", progress=0.25, stage="loading experts", log="12 experts", lease_seconds=600
    )
    assert beat.progress == 0.25 and beat.stage == "loading experts"
    assert beat.log == "12 experts\n"
    assert beat.lease_expires_at is not None and beat.lease_expires_at > claimed.lease_expires_at
    beat = registry.heartbeat(job.id, "w1", progress=0.5, log="step 5\nstep 6\n")
    assert beat.stage == "loading experts" and beat.log == "12 experts\nstep 5\nstep 6\n"
    assert registry.heartbeat(job.id, "w1").progress == 0.5  # a bare heartbeat renews only
    # live training figures: kept until the next ones, checked, never free-form
    beat = registry.heartbeat(job.id, "w1", live={"step": 6, "steps": 10, "loss": 0.25})
    assert beat.live == {"step": 6, "steps": 10, "loss": 0.25}
    assert registry.heartbeat(job.id, "w1").live == beat.live
    for bad in ({"step": "six"}, {"epoch": 1}, {"loss": True}):
        with pytest.raises(InvalidInput):
            registry.heartbeat(job.id, "w1", live=bad)
    assert registry.get_job(job.id).live == beat.live

    done = registry.finish_job(job.id, "w1", result={"generator_id": 7})
    assert done.state == "succeeded" and done.result == {"generator_id": 7}
    assert done.progress == 1.0 and done.lease_expires_at is None
    assert done.started_at is not None and done.finished_at is not None
    assert done.finished_at >= done.started_at
    assert done.started_at == claimed.started_at and done.attempts == 1
    assert registry.get_job(job.id) == done
    assert registry.claim_job("w2") is None
    with pytest.raises(Conflict, match="is succeeded"):
        registry.heartbeat(job.id, "w1")


def test_claims_are_oldest_first_and_filtered_by_kind(registry: Registry) -> None:
    a = registry.submit_job("train-generator", {"n": 1})
    b = registry.submit_job("transfer", {"n": 2})
    c = registry.submit_job("train-generator", {"n": 3})
    d = registry.submit_job("zoo-build")
    assert d.params == {}
    assert registry.claim_job("w", kinds=[]) is None
    assert registry.claim_job("w", kinds=["nothing-like-this"]) is None
    got = registry.claim_job("w", kinds=["transfer"])
    assert got is not None and got.id == b.id
    got = registry.claim_job("w", kinds=("transfer", "zoo-build"))
    assert got is not None and got.id == d.id
    got = registry.claim_job("w")
    assert got is not None and got.id == a.id
    got = registry.claim_job("w", kinds=["train-generator"])
    assert got is not None and got.id == c.id
    assert registry.claim_job("w") is None
    assert registry.count_jobs("running") == 4 and registry.count_jobs("queued") == 0


def test_lost_worker_is_replaced_until_attempts_run_out(registry: Registry) -> None:
    job = registry.submit_job("train-generator", {}, max_attempts=2)
    first = registry.claim_job("w1")
    assert first is not None and first.attempts == 1

    expire_lease(registry, job.id)  # w1 was killed
    second = registry.claim_job("w2")
    assert second is not None and second.id == job.id
    assert second.attempts == 2 and second.worker == "w2" and second.state == "running"
    assert second.started_at == first.started_at  # when the job first started
    assert "worker w1 lost its lease; attempt 2 by w2" in second.log
    # w1 was only hung: it learns it lost the job and must stop
    late_calls: tuple[Callable[[], object], ...] = (
        lambda: registry.heartbeat(job.id, "w1", progress=0.9),
        lambda: registry.finish_job(job.id, "w1", result={}),
        lambda: registry.fail_job(job.id, "w1", "late"),
    )
    for call in late_calls:
        with pytest.raises(Conflict, match="held by worker 'w2', not 'w1'"):
            call()
    assert registry.get_job(job.id).progress == 0.0

    later = registry.submit_job("train-generator", {"later": True})
    expire_lease(registry, job.id)  # w2 was killed too: no attempt left
    third = registry.claim_job("w3")
    assert third is not None and third.id == later.id  # gave up on the first, moved on
    gone = registry.get_job(job.id)
    assert gone.state == "failed" and gone.attempts == 2
    assert gone.error == "gave up after 2 attempts: worker lost"
    assert gone.finished_at is not None and gone.lease_expires_at is None
    assert gone.worker == "w2"
    with pytest.raises(Conflict, match="is failed"):
        registry.heartbeat(job.id, "w2")
    assert registry.claim_job("w4") is None


def test_giving_up_reports_the_last_error(registry: Registry) -> None:
    job = registry.submit_job("transfer", {}, max_attempts=2)
    assert registry.claim_job("w1") is not None
    requeued = registry.fail_job(job.id, "w1", "Traceback ...\nRuntimeError: CUDA out of memory")
    assert requeued.state == "queued" and requeued.worker is None
    assert registry.claim_job("w2") is not None
    expire_lease(registry, job.id)
    assert registry.claim_job("w3") is None
    gone = registry.get_job(job.id)
    assert gone.state == "failed"
    assert gone.error == (
        "gave up after 2 attempts: Traceback ...\nRuntimeError: CUDA out of memory"
    )


def test_a_lease_runs_out_on_the_clock(registry: Registry) -> None:
    job = registry.submit_job("transfer", {})
    assert registry.claim_job("w1", lease_seconds=0.3) is not None
    time.sleep(0.5)
    again = registry.claim_job("w2")
    assert again is not None and again.id == job.id and again.attempts == 2
    # a worker that is only late keeps its job while no one has taken it over
    assert registry.heartbeat(job.id, "w2", lease_seconds=0.3).worker == "w2"
    time.sleep(0.5)
    assert registry.heartbeat(job.id, "w2", lease_seconds=60).worker == "w2"
    assert registry.claim_job("w3") is None


def test_fail_with_retry_then_without(registry: Registry) -> None:
    job = registry.submit_job("train-generator", {}, max_attempts=3)
    registry.claim_job("w1")
    registry.heartbeat(job.id, "w1", progress=0.4, stage="training")
    requeued = registry.fail_job(job.id, "w1", "RuntimeError: disk full", retry=True)
    assert requeued.state == "queued" and requeued.attempts == 1
    assert requeued.error == "RuntimeError: disk full"
    assert requeued.worker is None and requeued.lease_expires_at is None
    assert requeued.finished_at is None
    assert "attempt 1 failed, will retry: RuntimeError: disk full" in requeued.log
    with pytest.raises(Conflict, match="is queued"):
        registry.heartbeat(job.id, "w1")

    again = registry.claim_job("w2")
    assert again is not None and again.id == job.id and again.attempts == 2
    assert again.error == "RuntimeError: disk full"  # kept until the job succeeds or fails
    failed = registry.fail_job(job.id, "w2", "ValueError: bad params", retry=False)
    assert failed.state == "failed" and failed.error == "ValueError: bad params"
    assert failed.finished_at is not None and failed.attempts == 2
    assert "attempt 2 failed: ValueError: bad params" in failed.log
    assert registry.claim_job("w3") is None


def test_retries_stop_at_max_attempts(registry: Registry) -> None:
    job = registry.submit_job("transfer", {}, max_attempts=2)
    for worker in ("w1", "w2"):
        assert registry.claim_job(worker) is not None
        last = registry.fail_job(job.id, worker, f"boom from {worker}")
    assert last.state == "failed" and last.attempts == 2 and last.error == "boom from w2"
    assert registry.claim_job("w3") is None


def test_cancel(registry: Registry) -> None:
    queued = registry.submit_job("transfer", {"n": 1})
    running = registry.submit_job("transfer", {"n": 2})
    cancelled = registry.cancel_job(queued.id)
    assert cancelled.state == "cancelled" and cancelled.finished_at is not None
    got = registry.claim_job("w1")
    assert got is not None and got.id == running.id  # the cancelled one is never claimed

    registry.heartbeat(running.id, "w1", progress=0.3)
    stopped = registry.cancel_job(running.id)
    assert stopped.state == "cancelled" and stopped.lease_expires_at is None
    assert stopped.worker == "w1" and stopped.progress == 0.3
    late_calls: tuple[Callable[[], object], ...] = (
        lambda: registry.heartbeat(running.id, "w1", progress=0.4),
        lambda: registry.finish_job(running.id, "w1", result={"x": 1}),
        lambda: registry.fail_job(running.id, "w1", "stopped"),
    )
    for call in late_calls:
        with pytest.raises(Conflict, match="is cancelled: worker 'w1' no longer holds it"):
            call()
    assert registry.get_job(running.id) == stopped

    with pytest.raises(Conflict, match="is cancelled already"):
        registry.cancel_job(running.id)
    done = registry.submit_job("transfer", {"n": 3})
    registry.claim_job("w1")
    registry.finish_job(done.id, "w1", result={})
    with pytest.raises(Conflict, match="is succeeded already"):
        registry.cancel_job(done.id)
    assert registry.get_job(done.id).state == "succeeded"
    assert registry.claim_job("w2") is None


def test_unknown_job(registry: Registry) -> None:
    for call in (
        registry.get_job,
        registry.cancel_job,
        registry.delete_job,
        lambda i: registry.heartbeat(i, "w"),
        lambda i: registry.finish_job(i, "w", result={}),
        lambda i: registry.fail_job(i, "w", "e"),
        lambda i: registry.put_job_artifact(i, "a", b"x"),
        lambda i: registry.job_artifact(i, "a"),
    ):
        with pytest.raises(JobNotFound, match="no job with id 99"):
            call(99)
    assert blob_files(registry) == []


def test_log_keeps_its_newest_whole_lines(registry: Registry) -> None:
    job = registry.submit_job("train-generator", {})
    registry.claim_job("w")
    line = "x" * 99
    for i in range(800):  # 80 KB
        rec = registry.heartbeat(job.id, "w", log=f"{i:04d}{line[4:]}")
    assert len(rec.log) <= LOG_MAX_CHARS
    lines = rec.log.splitlines()
    assert lines[-1].startswith("0799") and all(len(x) == 99 for x in lines)
    assert lines[0] > "0100" and rec.log.endswith("\n")
    # NUL bytes from a worker's captured output are stored on every backend
    rec = registry.heartbeat(job.id, "w", log="bad\x00byte")
    assert rec.log.endswith("bad\ufffdbyte\n")
    huge = registry.fail_job(job.id, "w", "E" * (LOG_MAX_CHARS * 2), retry=False)
    assert huge.state == "failed" and huge.error is not None
    assert 0 < len(huge.error) < LOG_MAX_CHARS and len(huge.log) <= LOG_MAX_CHARS


def test_artifacts_round_trip_and_corruption(registry: Registry) -> None:
    job = registry.submit_job("train-generator", {})
    registry.claim_job("w1")
    assert registry.job_artifact(job.id, "experts") is None  # stage not done yet
    registry.put_job_artifact(job.id, "experts", b"expert tensors")
    # a bytearray is accepted at runtime too, though the signature says bytes
    registry.put_job_artifact(job.id, "stage-1.ckpt", bytearray(b"checkpoint one"))  # type: ignore[arg-type]
    assert registry.get_job(job.id).artifacts == ["experts", "stage-1.ckpt"]
    assert registry.job_artifact(job.id, "experts") == b"expert tensors"

    # the worker dies; the next attempt resumes from the saved stages
    expire_lease(registry, job.id)
    resumed = registry.claim_job("w2")
    assert resumed is not None and resumed.artifacts == ["experts", "stage-1.ckpt"]
    assert registry.job_artifact(job.id, "stage-1.ckpt") == b"checkpoint one"
    registry.put_job_artifact(job.id, "stage-1.ckpt", b"checkpoint two")  # replaced
    assert registry.job_artifact(job.id, "stage-1.ckpt") == b"checkpoint two"
    assert len(blob_files(registry)) == 2  # the replaced checkpoint's blob is gone
    assert registry.list_jobs()[0].artifacts == ["experts", "stage-1.ckpt"]

    key = registry.blobs.put(b"expert tensors")
    path = registry.settings.blob_dir / key[:2] / key[2:]
    path.write_bytes(b"expert TENSORS")  # same size, different content
    with pytest.raises(CorruptBlob, match=key):
        registry.job_artifact(job.id, "experts")

    for bad, message in (("../x", "job artifact name"), ("", "job artifact name")):
        with pytest.raises(InvalidInput, match=message):
            registry.put_job_artifact(job.id, bad, b"x")
    with pytest.raises(InvalidInput, match="must be bytes"):
        registry.put_job_artifact(job.id, "text", "not bytes")  # type: ignore[arg-type]  # refused at runtime
    assert len(blob_files(registry)) == 2


def test_job_artifact_blobs_outlive_adapters_sharing_them(
    registry: Registry, tiny_base: Path, tmp_path: Path
) -> None:
    """A stage checkpoint byte-identical to an adapter's weights shares its blob:
    deleting either must leave the other's bytes."""
    base = registry.prepare_base_model(str(tiny_base)).name
    folder = make_lora(tiny_base, tmp_path / "lora")
    weights = (folder / "adapter_model.safetensors").read_bytes()
    adapter = registry.add_adapter(folder, base_model=base, description="task", name="one")
    job = registry.submit_job("transfer", {"adapter_id": adapter.id})
    registry.put_job_artifact(job.id, "source-weights", weights)

    registry.delete_adapter(adapter.id)
    assert registry.job_artifact(job.id, "source-weights") == weights

    again = registry.add_adapter(folder, base_model=base, description="task", name="two")
    registry.delete_job(job.id)
    assert registry.adapter_files(again.id).weights == weights
    registry.delete_adapter(again.id)
    assert blob_files(registry) == []


def test_delete_job(registry: Registry) -> None:
    kept = registry.submit_job("transfer", {})
    job = registry.submit_job("transfer", {})
    registry.put_job_artifact(job.id, "shared", b"same bytes")
    registry.put_job_artifact(kept.id, "shared", b"same bytes")
    registry.put_job_artifact(job.id, "own", b"own bytes")
    registry.claim_job("w", kinds=["transfer"])  # takes ``kept``
    with pytest.raises(Conflict, match="is running: cancel it"):
        registry.delete_job(kept.id)
    assert registry.get_job(kept.id).artifacts == ["shared"]

    registry.delete_job(job.id)
    with pytest.raises(JobNotFound):
        registry.get_job(job.id)
    assert registry.job_artifact(kept.id, "shared") == b"same bytes"
    assert len(blob_files(registry)) == 1
    registry.cancel_job(kept.id)
    registry.delete_job(kept.id)
    assert blob_files(registry) == [] and registry.count_jobs() == 0
    # ids are never reused
    assert registry.submit_job("transfer", {}).id > job.id


def test_list_and_count(registry: Registry) -> None:
    jobs = [registry.submit_job(k, {"i": i}) for i, k in enumerate(["a", "b", "a", "a"])]
    registry.claim_job("w", kinds=["b"])
    assert [j.id for j in registry.list_jobs()] == [j.id for j in reversed(jobs)]
    assert [j.id for j in registry.list_jobs(kind="a")] == [jobs[3].id, jobs[2].id, jobs[0].id]
    assert [j.id for j in registry.list_jobs(state="running")] == [jobs[1].id]
    assert [j.id for j in registry.list_jobs(state="queued", kind="a", limit=1, offset=1)] == [
        jobs[2].id
    ]
    assert registry.list_jobs(state="succeeded") == []
    assert registry.count_jobs() == 4 and registry.count_jobs("queued") == 3
    assert registry.count_jobs(state="running") == 1 and registry.count_jobs("failed") == 0
    with pytest.raises(InvalidInput, match="job state must be one of"):
        registry.list_jobs(state="done")
    with pytest.raises(InvalidInput, match="job state must be one of"):
        registry.count_jobs("done")
    with pytest.raises(InvalidInput, match="limit"):
        registry.list_jobs(limit=0)
    with pytest.raises(InvalidInput, match="offset"):
        registry.list_jobs(offset=-1)


BAD_SUBMIT = [
    ("empty kind", {"kind": ""}, "job kind"),
    ("spaced kind", {"kind": "train generator"}, "job kind"),
    ("long kind", {"kind": "k" * 51}, "job kind"),
    ("list params", {"params": [1, 2]}, "params must be a JSON object"),
    ("NaN param", {"params": {"lr": float("nan")}}, "params must be JSON"),
    ("object param", {"params": {"x": object()}}, "params must be JSON"),
    ("zero attempts", {"max_attempts": 0}, "max_attempts"),
    ("bool attempts", {"max_attempts": True}, "max_attempts"),
]


@pytest.mark.parametrize("case, kwargs, message", BAD_SUBMIT, ids=[b[0] for b in BAD_SUBMIT])
def test_bad_submit_changes_nothing(
    registry: Registry, case: str, kwargs: dict[str, Any], message: str
) -> None:
    args = {"kind": "transfer", "params": {}, **kwargs}
    with pytest.raises(InvalidInput, match=message):
        registry.submit_job(**args)
    assert registry.count_jobs() == 0


def test_bad_worker_calls_change_nothing(registry: Registry) -> None:
    job = registry.submit_job("transfer", {})
    bad_claims: tuple[tuple[dict[str, Any], str], ...] = (
        ({"worker": ""}, "worker"),
        ({"worker": "w" * 201}, "worker"),
        ({"worker": "w\n1"}, "printable"),
        ({"kinds": "transfer"}, "not one string"),
        ({"kinds": ["bad kind"]}, "job kind"),
        ({"lease_seconds": 0}, "lease_seconds"),
        ({"lease_seconds": float("inf")}, "lease_seconds"),
    )
    for kwargs, message in bad_claims:
        with pytest.raises(InvalidInput, match=message):
            registry.claim_job(**{"worker": "w", **kwargs})
    assert registry.get_job(job.id).state == "queued"
    claimed = registry.claim_job("w")
    bad_beats: tuple[tuple[dict[str, Any], str], ...] = (
        ({"progress": 1.5}, "progress"),
        ({"progress": float("nan")}, "progress"),
        ({"stage": "s" * 101}, "stage"),
        ({"log": b"bytes"}, "log entry must be a string"),
        ({"lease_seconds": -1}, "lease_seconds"),
    )
    for kwargs, message in bad_beats:
        with pytest.raises(InvalidInput, match=message):
            registry.heartbeat(job.id, "w", **kwargs)
    with pytest.raises(InvalidInput, match="result must be JSON"):
        registry.finish_job(job.id, "w", result={"loss": float("inf")})
    with pytest.raises(InvalidInput, match="result must be a JSON object"):
        registry.finish_job(job.id, "w", result=None)  # type: ignore[arg-type]  # refused at runtime
    with pytest.raises(InvalidInput, match="non-empty string"):
        registry.fail_job(job.id, "w", "  ")
    assert registry.get_job(job.id) == claimed


WORKER = """
import json, sys, time
from pathlib import Path
from registry.service import Registry
from registry.settings import Settings

url, home, models, go, name = sys.argv[1:]
reg = Registry(Settings(home=Path(home), database_url=url, model_cache=Path(models)))
Path(go).with_name(f"ready-{name}").touch()
while not Path(go).exists():
    time.sleep(0.005)
claimed = []
while (job := reg.claim_job(name, lease_seconds=300)) is not None:
    claimed.append(job.id)
    reg.heartbeat(job.id, name, progress=0.5)
    reg.finish_job(job.id, name, result={"by": name})
reg.close()
print(json.dumps(claimed))
"""


def test_concurrent_workers_claim_every_job_exactly_once(
    registry: Registry, tmp_path: Path
) -> None:
    """Three worker processes drain one queue: each job is claimed by exactly one of them."""
    ids = [registry.submit_job("transfer", {"i": i}).id for i in range(30)]
    go = tmp_path / "go"
    settings = registry.settings
    args = [settings.database_url, str(settings.home), str(settings.model_cache), str(go)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, *args, f"worker-{n}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    # let all three start before any claims, so that they race from the first job
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    claimed: dict[str, list[int]] = {}
    for n, p in enumerate(procs):
        outs, errs = p.communicate(timeout=300)
        assert p.returncode == 0, errs
        claimed[f"worker-{n}"] = json.loads(outs)
    every = [i for got in claimed.values() for i in got]
    assert sorted(every) == ids, claimed
    for job in registry.list_jobs(limit=100):
        assert job.state == "succeeded" and job.attempts == 1
        assert job.worker is not None
        assert job.result == {"by": job.worker} and job.id in claimed[job.worker]
