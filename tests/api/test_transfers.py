"""Transfers through the interfaces: `loramint transfer --follow`, `POST
/v1/transfers`, the Ray engine on a local Ray instance, and a real worker
process killed in the middle of a job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from generator.transfer.run import artifact_name
from generator.transfer.source import (
    submit_transfer,
)
from registry.embeddings import MiniLMEmbedder
from registry.service import Registry
from registry.settings import Settings
from tests.worlds import FAST, TransferWorld, cli_env, transfer_world, wait_for


def test_follow_runs_the_job_here_and_shows_its_stages(transfer: TransferWorld) -> None:
    from api.cli_transfer import follow

    reg: Registry = transfer.registry
    job = submit_transfer(reg, transfer.source_id, transfer.target, config=FAST)
    final = follow(reg, job.id, quiet=True, poll=0.1)
    assert final.state == "succeeded" and final.stage == "register" and final.progress == 1.0


def test_rest_transfer_returns_202_and_the_job(transfer: TransferWorld) -> None:
    from litestar.testing import TestClient

    from api.app import create_app
    from registry.settings import ApiSettings

    reg: Registry = transfer.registry
    admin = reg.create_api_key("ops", "admin")[1]
    reader = reg.create_api_key("app", "reader")[1]
    h = {"Authorization": f"Bearer {admin}"}
    body = {"adapter_id": transfer.source_id, "target_base_model": transfer.target, "samples": 3}
    with TestClient(create_app(reg, ApiSettings())) as client:
        r = client.post("/v1/transfers", json=body, headers=h)
        assert r.status_code == 202, r.text
        job = r.json()
        assert (
            job["kind"] == "transfer" and job["state"] == "queued" and job["params"]["samples"] == 3
        )
        assert client.get(job["url"], headers=h).json()["id"] == job["id"]
        assert (
            client.post(
                "/v1/transfers", json=body, headers={"Authorization": f"Bearer {reader}"}
            ).status_code
            == 403
        )
        for bad, status in [
            ({**body, "adapter_id": 999_999}, 404),
            ({**body, "target_base_model": "no-such-model"}, 404),
            ({**body, "samples": 0}, 400),
            ({**body, "colour": "red"}, 400),
            ({**body, "config": {"distill_stpes": 3}}, 400),
            ({**body, "resources": {"num_gpus": -1}}, 400),
            ({"target_base_model": transfer.target}, 400),
            ({**body, "name": 5}, 400),
        ]:
            got = client.post("/v1/transfers", json=bad, headers=h)
            assert got.status_code == status, (bad, got.text)
            assert set(got.json()) >= {"status_code", "detail"}
        got = client.post("/v1/transfers", json={**body, "name": "a/b"}, headers=h)
        assert got.status_code == 400 and "adapter name 'a/b' must be" in got.json()["detail"]
        schema = client.get("/schema/openapi.json").json()
        op = schema["paths"]["/v1/transfers"]["post"]
        assert "202" in op["responses"] and "404" in op["responses"]
        assert "gemma3-270m" in json.dumps(op["requestBody"])
    reg.cancel_job(job["id"])


def test_the_admin_ui_starts_a_transfer_and_its_job_page_follows_it(
    transfer: TransferWorld,
) -> None:
    """The adapter page's transfer form queues the job and lands on its page; bad input
    re-renders the form with the reason and queues nothing."""
    from litestar.testing import TestClient

    from api.app import create_app
    from registry.settings import ApiSettings
    from tests.api.ui.test_ui_security import log_in

    reg: Registry = transfer.registry
    admin = reg.create_api_key("ui-ops", "admin")[1]
    before = len(reg.list_jobs())
    with TestClient(create_app(reg, ApiSettings())) as client:
        token = log_in(client, admin)
        page = client.get(f"/ui/adapters/{transfer.source_id}")
        assert "Transfer to another base model" in page.text and "gemma3-270m" in page.text
        url = f"/ui/adapters/{transfer.source_id}/transfer"
        for bad, status, reason in [
            ({"target_base_model": "no-such-model", "samples": "3"}, 404, "no-such-model"),
            ({"target_base_model": transfer.target, "samples": "many"}, 400, "whole number"),
            ({"target_base_model": transfer.base, "samples": "3"}, 400, "already an adapter"),
            ({"target_base_model": transfer.target, "settings": "colour=red"}, 400, "colour"),
            ({"target_base_model": transfer.target, "settings": "steps"}, 400, "KEY=VALUE"),
        ]:
            r = client.post(url, data={**bad, "csrf_token": token}, follow_redirects=False)
            assert r.status_code == status and reason in r.text, (bad, r.status_code)
            assert 'role="alert"' in r.text or "form-error" in r.text
        assert len(reg.list_jobs()) == before  # nothing queued
        body = {
            "target_base_model": transfer.target, "samples": "3", "csrf_token": token,
            "settings": "distill_steps=7\n\n soft_filter=false",
        }  # fmt: skip
        r = client.post(url, data=body, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/jobs/"), r.text
        job_id = int(r.headers["location"].rsplit("/", 1)[1])
        job = reg.get_job(job_id)
        assert job.kind == "transfer" and job.params["samples"] == 3
        assert job.params["config"]["distill_steps"] == 7
        assert job.params["config"]["soft_filter"] is False
        followed = client.get(r.headers["location"])
        assert "Queued the transfer" in followed.text and "transfer" in followed.text
    reg.cancel_job(job_id)


def test_ray_engine_runs_each_job_as_a_ray_task(transfer: TransferWorld) -> None:
    ray = pytest.importorskip("ray")
    from api.engines import RayEngine

    reg: Registry = transfer.registry
    job = submit_transfer(
        reg, transfer.source_id, transfer.target, config=FAST,
        resources={"num_cpus": 1, "num_gpus": 0},
    )  # fmt: skip
    greedy = submit_transfer(
        reg, transfer.source_id, transfer.target, config=FAST, resources={"num_gpus": 2}
    )
    try:
        engine = RayEngine(
            reg, init={"num_cpus": 2, "num_gpus": 0, "object_store_memory": 80 * 2**20}
        )
        engine.run(poll=0.5, once=True)
    finally:
        ray.shutdown()
    done = reg.get_job(job.id)
    assert done.state == "succeeded", done.error
    assert (done.worker or "").startswith("ray:") and "'CPU': 1.0" in done.log
    assert done.result is not None
    assert reg.get_adapter(done.result["adapter_id"]).base_model == transfer.target
    refused = reg.get_job(greedy.id)
    assert refused.state == "failed" and "the Ray cluster has 0" in (refused.error or "")


def test_killed_worker_resumes_the_transfer_with_one_result(
    tmp_path: Path, tiny_base: Path, tiny_gemma: Path, embedder: MiniLMEmbedder
) -> None:
    w = transfer_world(tmp_path, tiny_base, tiny_gemma, embedder)
    reg: Registry = w.registry
    settings: Settings = w.settings
    env = cli_env(settings, LORAMINT_JOB_LEASE_S="4")
    # the CLI queues it; slow enough stages that the kill lands mid-job
    slow = {**FAST, "disc_steps": 24, "distill_steps": 12}
    cli = [sys.executable, "-m", "api.cli"]
    sets = [arg for k, v in slow.items() for arg in ("--set", f"{k}={v}")]
    queued = subprocess.run(
        [*cli, "transfer", str(w.source_id), "--to", w.target, "--json", *sets],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert queued.returncode == 0, queued.stderr
    job_id = json.loads(queued.stdout)["job_id"]
    first = subprocess.Popen([*cli, "worker", "--poll", "0.2"], env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for(
            lambda: (
                reg.get_job(job_id).stage == "discriminator"
                and artifact_name("synthesize") in reg.get_job(job_id).artifacts
            ),
            240,
            "the synthesize stage to finish",
        )
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    killed = reg.get_job(job_id)
    assert killed.state == "running" and killed.attempts == 1
    assert killed.stage == "discriminator"
    assert reg.list_adapters(provenance="transferred") == []
    synthesized = reg.job_artifact(job_id, artifact_name("synthesize"))
    second = subprocess.Popen([*cli, "worker", "--poll", "0.2"], env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for(
            lambda: reg.get_job(job_id).state in ("succeeded", "failed"), 600, "the job to end"
        )
    finally:
        second.terminate()
        second.wait(timeout=60)
    final = reg.get_job(job_id)
    assert final.state == "succeeded", final.error
    assert final.attempts == 2 and "lost its lease" in final.log
    assert "synthesize: reused the output of an earlier attempt" in final.log
    assert reg.job_artifact(job_id, artifact_name("synthesize")) == synthesized
    moved = reg.list_adapters(provenance="transferred")
    assert final.result is not None
    assert [a.id for a in moved] == [final.result["adapter_id"]]
    reg.close()
