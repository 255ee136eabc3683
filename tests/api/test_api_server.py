"""The real server (``loramint serve``) on a free loopback port: generate by
description, download the zip, load it with PEFT; then a bounded
schemathesis run against the live OpenAPI with every check."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from generator.fit.config import GeneratorConfig
from generator.fit.train import train_generator
from generator.sandbox import build_world
from registry.embeddings import MiniLMEmbedder
from registry.settings import ToolSettings
from tests.worlds import live_server, server_env


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, embedder: MiniLMEmbedder
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("server")
    world = build_world(root, embedder=embedder, base=tiny_base)
    reg = world.registry
    train_generator(reg, world.base, GeneratorConfig(hidden=32, latent=4, steps=10))
    admin = reg.create_api_key("ops", "admin")[1]
    reg.close()
    env = server_env(world.settings)
    with live_server(env, root / "server.log", "--no-worker") as url:
        yield {
            "url": url, "admin": admin, "base": world.base, "root": root, "env": env,
            "world": world,
        }  # fmt: skip


def test_generate_download_and_load_with_peft(server: dict[str, Any], tmp_path: Path) -> None:
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


def test_sixteen_examples_over_http_give_the_estimate_and_the_harness_adapter(
    server: dict[str, Any], tmp_path: Path
) -> None:
    """Few-shot generation through the real server: the response carries the choice and
    its held-back estimate, and the zip, loaded with PEFT, holds the weights the
    evaluation harness makes from the same examples and scores what it scores."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from generator.quality.fewshot import FewShotSettings, draw, method_makers
    from generator.serve.generate import generator_for
    from generator.serve.generator import Generator, Request
    from generator.tasks.evaluation import Evaluator
    from registry.service import Registry

    world = server["world"]
    task = world.held_out()
    shots = draw(task, 16, 0)
    body = {
        "description": task.description, "base_model": server["base"], "method": "sg-lora",
        "seed": 0, "labels": list(task.labels), "refine_steps": 3, "time_budget_s": 600,
        "examples": [{"input": e.input, "output": e.output} for e in shots.examples],
    }  # fmt: skip
    h = {"Authorization": f"Bearer {server['admin']}"}
    r = httpx.post(f"{server['url']}/v1/generate", json=body, headers=h, timeout=300)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["job"] is None
    report = out["fewshot"]
    assert report["examples"] == 16 and report["method"] == "selection+refine"
    estimate = report["estimate"]
    assert estimate["adapter"] is not None and 0.0 <= estimate["adapter"] <= 1.0
    assert estimate["bare"] == report["candidates"]["none"]
    z = httpx.get(server["url"] + out["download_url"], headers=h, timeout=60)
    folder = tmp_path / "adapter"
    zipfile.ZipFile(io.BytesIO(z.content)).extractall(folder)

    reg = Registry(world.settings)
    try:
        evaluator = Evaluator.from_path(Path(server["base"]))
        sg = Generator.from_registry(
            reg, generator_for(reg, server["base"], "sg-lora"), base=evaluator
        )
        zero_shot = sg.generate([Request(task.description, seed=0)])[0]
        settings = FewShotSettings(ks=(16,), refine_steps=3)
        makers = method_makers(
            evaluator, sg, None, task, shots, zero_shot, dict(zero_shot.config), [], settings
        )
        harness = makers["refine"]()
    finally:
        reg.close()
    assert harness is not None
    served = load_file(str(folder / "adapter_model.safetensors"))
    assert sorted(served) == sorted(harness[1])
    for name, tensor in harness[1].items():
        assert torch.equal(served[name], tensor.to(served[name].dtype)), name
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(server["base"]), folder)
    peft_eval = Evaluator(model.eval(), AutoTokenizer.from_pretrained(server["base"]))
    with torch.no_grad():
        assert peft_eval.accuracy(task).accuracy == evaluator.accuracy(task, harness).accuracy


def test_recipe_adapters_survive_a_restart_and_a_generator_delete(
    tmp_path: Path, tiny_base: Path, embedder: MiniLMEmbedder
) -> None:
    """Adapters kept as recipes download the same zip after the server restarts (an
    empty cache, a fresh process); materialising keeps the zip; deleting their
    generator is a 409 naming them, or with materialise=true stores them first."""
    world = build_world(tmp_path / "world", embedder=embedder, base=tiny_base)
    reg = world.registry
    gen, _ = train_generator(reg, world.base, GeneratorConfig(hidden=32, latent=4, steps=10))
    admin = reg.create_api_key("ops", "admin")[1]
    reg.close()
    env = server_env(world.settings)
    h = {"Authorization": f"Bearer {admin}"}
    zips: dict[int, bytes] = {}
    with live_server(env, tmp_path / "first.log", "--no-worker") as url:
        for word in ("moon", "fish"):
            body = {
                "description": f"Is there a {word}? Answer yes or no.",
                "base_model": world.base,
            }
            r = httpx.post(f"{url}/v1/generate", json=body, headers=h, timeout=120)
            assert r.status_code == 201 and r.json()["adapter"]["stored"] == "recipe", r.text
            adapter_id = r.json()["adapter"]["id"]
            zips[adapter_id] = httpx.get(f"{url}{r.json()['download_url']}", headers=h).content
    first, second = sorted(zips)
    with live_server(env, tmp_path / "second.log", "--no-worker") as url:
        for adapter_id, content in zips.items():
            again = httpx.get(f"{url}/v1/adapters/{adapter_id}/download", headers=h, timeout=60)
            assert again.status_code == 200 and again.content == content
        metrics = httpx.get(f"{url}/metrics").text  # both rebuilt: the cache was empty
        assert 'loramint_recipe_cache{what="misses"} 2.0' in metrics, metrics[-2000:]
        r = httpx.post(f"{url}/v1/adapters/{first}/materialise", headers=h, timeout=60)
        assert r.status_code == 200 and r.json()["stored"] == "weights", r.text
        assert httpx.get(f"{url}/v1/adapters/{first}/download", headers=h).content == zips[first]
        r = httpx.delete(f"{url}/v1/generators/{gen.id}", headers=h, timeout=60)
        assert r.status_code == 409 and str(second) in r.json()["detail"], r.text
        r = httpx.delete(f"{url}/v1/generators/{gen.id}?materialise=true", headers=h, timeout=60)
        assert r.status_code == 204, r.text
        assert httpx.get(f"{url}/v1/generators/{gen.id}", headers=h).status_code in (404, 405)
        for adapter_id, content in zips.items():
            got = httpx.get(f"{url}/v1/adapters/{adapter_id}/download", headers=h, timeout=60)
            assert got.content == content


def test_schemathesis_with_every_check_passes(server: dict[str, Any]) -> None:
    st = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert st, "schemathesis is a dev dependency"
    run = subprocess.run(
        [
            st, "--config-file", str(Path(__file__).parent / "schemathesis.toml"),
            "run", f"{server['url']}/schema/openapi.json",
            "--checks", "all",
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


def test_a_revoked_key_is_refused_on_the_next_request_by_every_worker(
    tmp_path: Path, tiny_base: Path, embedder: MiniLMEmbedder
) -> None:
    """``loramint serve --workers 2``: both processes have the key cached (it used to
    stay good there for up to 30 s); after ``loramint keys revoke`` the very next
    requests, to either process, are refused."""
    import subprocess
    import sys

    from registry.service import Registry
    from registry.settings import Settings

    settings = Settings(
        home=tmp_path / "home", database_url=f"sqlite:///{tmp_path}/r.db",
        model_cache=tmp_path / "models",
    )  # fmt: skip
    reg = Registry(settings, embedder=embedder)
    record, secret = reg.create_api_key("soon-revoked", "reader")
    reg.close()
    env = server_env(settings)
    headers = {"Authorization": f"Bearer {secret}"}
    with live_server(env, tmp_path / "server.log", "--no-worker", "--workers", "2") as url:
        for _ in range(40):  # new connections: the kernel spreads them over both processes
            r = httpx.get(f"{url}/v1/adapters", headers=headers, timeout=30)
            assert r.status_code == 200, r.text
        revoke = subprocess.run(
            [sys.executable, "-m", "api.cli", "keys", "revoke", str(record.id)],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert revoke.returncode == 0, revoke.stderr
        refused = [httpx.get(f"{url}/v1/adapters", headers=headers, timeout=30) for _ in range(20)]
        assert [r.status_code for r in refused] == [401] * 20
