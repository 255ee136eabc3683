"""Serving checks of registered adapters: `loramint adapters check` and
`GET /v1/adapters/{id}/check` on the sandbox world (tiny Llama, its zoo, a trained
generator); adapters made by `generate` pass PEFT's, vLLM's and LoRAX's rules and the
smoke test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from litestar.testing import TestClient

from api.app import create_app
from generator.fit.config import GeneratorConfig
from generator.fit.train import train_generator
from generator.sandbox import SandboxWorld
from generator.serve.generate import generate_adapters
from generator.serve.generator import Request
from generator.serve.smoke import check_adapter
from registry.lora_spec import parse_weights, weights_bytes
from registry.peft_format import PeftFiles, read_adapter
from registry.settings import ApiSettings
from tests.conftest import make_lora


@pytest.fixture(scope="module")
def checked(world: SandboxWorld, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A generated adapter, one LoRAX cannot serve (a subset of layers) and one whose B
    matrices are zero, registered in the world, and a reader key."""
    reg, base = world.registry, world.base
    train_generator(reg, base, GeneratorConfig(hidden=32, latent=4, steps=10))
    [(generated, _)] = generate_adapters(
        reg, [Request("Does the text mention the moon? Answer yes or no.", seed=1)],
        base_model=base, method="sg-lora",
    )  # fmt: skip
    tmp = tmp_path_factory.mktemp("checks")
    partial = reg.add_adapter(
        make_lora(Path(base), tmp / "partial", layers_to_transform=[0]),
        base_model=base, description="Only the first layer.", name="partial",
    )  # fmt: skip
    files = read_adapter(make_lora(Path(base), tmp / "zero", seed=3), max_bytes=2**30)
    tensors = parse_weights(files.weights)
    zeroed = {k: torch.zeros_like(v) if "lora_B" in k else v for k, v in tensors.items()}
    zero = reg.add_adapter(
        PeftFiles(files.config, weights_bytes(zeroed)),
        base_model=base, description="Does nothing at all.", name="zero",
    )  # fmt: skip
    reader = reg.create_api_key("checker", "reader")[1]
    return {"generated": generated.id, "partial": partial.id, "zero": zero.id, "reader": reader}


def test_generated_and_zoo_adapters_pass_every_target(
    world: SandboxWorld, checked: dict[str, Any]
) -> None:
    report = check_adapter(world.registry, checked["generated"])
    assert report.ok, report
    assert [t.target for t in report.rules.targets] == ["peft", "vllm", "lorax"]
    assert all(t.findings == [] for t in report.rules.targets)
    assert report.rules.targets[1].settings["max_lora_rank"] == 8  # the sandbox's r = 4
    assert report.smoke is not None and report.smoke.passed
    for rec in world.registry.list_adapters(provenance="trained"):
        assert check_adapter(world.registry, rec.id, smoke=False).ok


@pytest.fixture(scope="module")
def client(world: SandboxWorld) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(world.registry, ApiSettings())) as c:
        yield c


def test_rest_check(client: TestClient[Any], checked: dict[str, Any]) -> None:
    h = {"Authorization": f"Bearer {checked['reader']}"}
    r = client.get(f"/v1/adapters/{checked['generated']}/check", headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] and [t["target"] for t in body["targets"]] == ["peft", "vllm", "lorax"]
    assert body["smoke"]["passed"] and body["smoke"]["max_abs_diff"] > body["smoke"]["tolerance"]
    partial = client.get(
        f"/v1/adapters/{checked['partial']}/check?target=lorax&smoke=false", headers=h
    ).json()
    assert not partial["ok"] and partial["smoke"] is None
    [lorax] = partial["targets"]
    assert lorax["findings"][0]["rule"] == "lorax.layers" and not lorax["ok"]
    zero = client.get(f"/v1/adapters/{checked['zero']}/check?target=vllm", headers=h).json()
    assert not zero["ok"] and zero["targets"][0]["ok"] and not zero["smoke"]["passed"]
    bad = client.get(f"/v1/adapters/{checked['generated']}/check?target=tgi", headers=h)
    assert bad.status_code == 400 and "target" in bad.json()["detail"]
    assert client.get("/v1/adapters/999999/check?smoke=false", headers=h).status_code == 404
    assert client.get(f"/v1/adapters/{checked['generated']}/check").status_code == 401
    schema = client.get("/schema/openapi.json").json()
    params = schema["paths"]["/v1/adapters/{adapter_id}/check"]["get"]["parameters"]
    [target] = [p for p in params if p["name"] == "target"]
    assert set(json.dumps(target["schema"]).split('"')) >= {"all", "peft", "vllm", "lorax"}


def test_cli_check(world: SandboxWorld, checked: dict[str, Any]) -> None:
    env = os.environ | world.environment()
    cli = [sys.executable, "-m", "api.cli", "adapters", "check"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], env=env, capture_output=True, text=True, timeout=600)

    ok = run(str(checked["generated"]), "--json")
    assert ok.returncode == 0, ok.stderr
    payload = json.loads(ok.stdout)
    assert payload["ok"] and payload["smoke"]["passed"] and len(payload["targets"]) == 3
    table = run(str(checked["partial"]), "--target", "lorax", "--no-smoke")
    assert table.returncode == 1, table.stderr
    assert "lorax.layers" in table.stdout and "smoke test skipped" in table.stdout
    zero = run(str(checked["zero"]), "--target", "peft")
    assert zero.returncode == 1 and "smoke test FAILED" in zero.stdout
    bad = run(str(checked["generated"]), "--target", "tgi")
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown target 'tgi'")
    assert len(bad.stderr.strip().splitlines()) == 1
    missing = run("999999", "--no-smoke")
    assert missing.returncode == 3 and missing.stderr.startswith("error: ")
