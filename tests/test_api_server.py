"""The real server (``loramint serve``) on a free loopback port: generate by
description, download the zip, load it with PEFT; then a bounded
schemathesis run against the live OpenAPI (no 5xx, no schema violation)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from generator.fit.config import GeneratorConfig
from generator.fit.train import train_generator
from registry.settings import Settings, ToolSettings
from tests.test_generators import tiny_world


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(settings: Settings) -> dict[str, str]:
    """The environment of a test server on ``settings``' registry (rate limits lifted)."""
    return os.environ | {
        "LORAMINT_HOME": str(settings.home),
        "LORAMINT_DATABASE_URL": settings.database_url,
        "LORAMINT_MODEL_CACHE": str(settings.model_cache),
        "LORAMINT_API_RATE": "1000",
        "LORAMINT_API_BURST": "100000",
    }


@contextlib.contextmanager
def live_server(env: dict[str, str], log_path: Path, *args: str) -> Iterator[str]:
    """``loramint serve ARGS`` on a free loopback port; yields its URL once /health
    answers, and stops it on exit. Its output goes to ``log_path``."""
    port = free_port()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--port", str(port), *args],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        try:
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(log_path.read_text())
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, embedder) -> Iterator[dict]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("server")
    world = tiny_world(root, tiny_base, embedder)
    reg = world["registry"]
    train_generator(reg, world["base"], GeneratorConfig(hidden=32, latent=4, steps=10))
    admin = reg.create_api_key("ops", "admin")[1]
    reg.close()
    env = server_env(world["settings"])
    with live_server(env, root / "server.log", "--no-worker") as url:
        yield {"url": url, "admin": admin, "base": world["base"], "root": root, "env": env}


def test_generate_download_and_load_with_peft(server: dict, tmp_path: Path) -> None:
    h = {"Authorization": f"Bearer {server['admin']}"}
    body = {
        "description": "Does the text mention the moon? Answer yes or no.",
        "base_model": server["base"],
        "method": "sg-lora",
    }
    r = httpx.post(f"{server['url']}/v1/generate", json=body, headers=h, timeout=120)
    assert r.status_code == 201, r.text
    z = httpx.get(server["url"] + r.json()["download_url"], headers=h, timeout=60)
    assert z.status_code == 200 and z.headers["content-type"] == "application/zip"
    out = tmp_path / "adapter"
    zipfile.ZipFile(io.BytesIO(z.content)).extractall(out)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(server["base"]), out)
    assert any("lora_B" in n for n, _ in model.named_parameters())


def test_schemathesis_finds_no_server_errors(server: dict) -> None:
    st = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert st, "schemathesis is a dev dependency"
    run = subprocess.run(
        [
            st, "run", f"{server['url']}/schema/openapi.json",
            "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance",
            "--max-examples", "12", "--seed", "1", "--workers", "1",
            "--header", f"Authorization: Bearer {server['admin']}",
            "--request-timeout", "60",
        ],
        capture_output=True, text=True, timeout=900, env=server["env"], cwd=server["root"],
    )  # fmt: skip
    report = (ToolSettings.from_env().test_output or Path(server["root"])) / "schemathesis.txt"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(run.stdout + run.stderr)
    assert run.returncode == 0, f"schemathesis failed; full report in {report}"
