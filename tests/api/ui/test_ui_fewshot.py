"""The admin UI's generate form with examples (through the real app in process): the
report of what was chosen, and the same report on the adapter's page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from api.app import create_app
from generator.fit.config import GeneratorConfig
from generator.fit.train import train_generator
from generator.sandbox import SandboxWorld
from registry.settings import ApiSettings
from tests.api.ui.test_ui_security import log_in


@pytest.fixture(scope="module")
def admin(world: SandboxWorld) -> str:
    train_generator(world.registry, world.base, GeneratorConfig(hidden=32, latent=4, steps=4))
    return world.registry.create_api_key("ui-fewshot", "admin")[1]


@pytest.fixture
def client(world: SandboxWorld) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(world.registry, ApiSettings())) as c:
        yield c


def test_the_generate_form_reports_the_few_shot_choice(
    client: TestClient[Any], world: SandboxWorld, admin: str, tmp_path: Path
) -> None:
    token = log_in(client, admin)
    moon = world.held_out()
    lines = "\n".join(f"{e.input} => {e.output}" for e in moon.train[:12])
    form = {
        "csrf_token": token, "description": moon.description, "base_model": world.base,
        "method": "sg-lora", "seed": "0", "examples": lines, "labels": "yes, no",
    }  # fmt: skip
    page = client.post("/ui/generate", data=form)
    assert page.status_code == 200, page.text
    assert "(chosen)" in page.text and "Held-back balanced accuracy" in page.text
    adapter_id = re.search(r'href="/ui/adapters/(\d+)"', page.text)
    assert adapter_id is not None
    shown = client.get(f"/ui/adapters/{adapter_id.group(1)}")
    assert "Few-shot adaptation" in shown.text and "(chosen)" in shown.text
    bad = client.post("/ui/generate", data=form | {"labels": "yes"})
    assert bad.status_code == 400 and "are not among the labels" in bad.text
    # two steps of refinement on the tiny model fit in the request's time budget
    refined = client.post("/ui/generate", data=form | {"refine_steps": "2", "seed": "3"})
    assert refined.status_code == 200 and "selection+refine on 12 examples" in refined.text
