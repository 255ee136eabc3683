"""Property-based fuzzing of every JSON request body (seeded, so a failure reproduces):
whatever a client sends to POST /v1/generate, /v1/generators or /v1/transfers, the
answer is never a 5xx, and a refused request changes nothing in the registry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from litestar.testing import TestClient

from api.app import create_app
from generator.fit.config import GeneratorConfig
from generator.fit.train import train_generator
from generator.sandbox import SandboxWorld, build_world
from registry.embeddings import MiniLMEmbedder
from registry.settings import ApiSettings
from tests.fuzzing import json_values, seeded

JSON = json_values(["sg-lora", "icm-lora", "\x00", "\x1b[2J", "+1", "-1", "", " "], leaves=10)
FIELDS = {
    "/v1/generate": (
        "description", "base_model", "method", "seed", "examples", "labels", "weighting",
        "refine_steps", "time_budget_s", "generator_id",
    ),
    "/v1/generators": (*GeneratorConfig.__dataclass_fields__, "base_model", "name"),
    "/v1/transfers": (
        "adapter_id", "target_base_model", "samples", "name", "config", "resources",
    ),
}  # fmt: skip
FUZZ = seeded(60)


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, embedder: MiniLMEmbedder
) -> Iterator[tuple[SandboxWorld, str]]:
    w = build_world(tmp_path_factory.mktemp("fuzz"), embedder=embedder, base=tiny_base)
    train_generator(w.registry, w.base, GeneratorConfig(hidden=32, latent=4, steps=10))
    admin = w.registry.create_api_key("fuzz", "admin")[1]
    yield w, admin
    w.close()


@pytest.fixture(scope="module")
def client(world: tuple[SandboxWorld, str]) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(world[0].registry, ApiSettings(rate=1e6, burst=1e6))) as c:
        yield c


def bodies(path: str, base: str) -> st.SearchStrategy[bytes]:
    """Mostly objects over the route's own fields (sometimes with a valid base model),
    sometimes any JSON at all, sometimes bytes that are not JSON."""
    known = st.dictionaries(st.sampled_from(FIELDS[path]), JSON | st.just(base), max_size=6)
    return st.one_of(
        known.map(lambda d: json.dumps(d).encode()),
        JSON.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=64),
    )


def snapshot(world: SandboxWorld) -> tuple[int, int, int]:
    reg = world.registry
    return reg.count_adapters(), reg.count_jobs(), len(reg.list_generators())


@pytest.mark.parametrize("path", list(FIELDS))
def test_no_body_is_a_server_error_and_refusals_change_nothing(
    client: TestClient[Any], world: tuple[SandboxWorld, str], path: str
) -> None:
    w, admin = world
    headers = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}

    @FUZZ
    @given(bodies(path, w.base))
    def check(raw: bytes) -> None:
        before = snapshot(w)
        r = client.post(path, content=raw, headers=headers)
        assert r.status_code < 500, (raw, r.text)
        if r.status_code >= 400:
            assert snapshot(w) == before, (raw, r.text)
            assert r.json()["detail"], r.text
        for job in w.registry.list_jobs(state="queued"):  # keep the queue from filling up
            w.registry.cancel_job(job.id)

    check()
