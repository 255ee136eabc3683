"""Quality across the admin UI over plain HTTP (Litestar's TestClient on the real app and
a real SQLite registry): the compare view charts adapters on a task beside the bare model
and the oracle; the adapters list sorts (also over REST) and shows the oracle; the
adapter page gives its share of the oracle's gain; the generators page charts the last
held-out evaluation."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from generator.quality.heldout import report_path
from registry.embeddings import MiniLMEmbedder
from registry.service import Registry
from tests.api.ui.test_ui_security import logged_in_client
from tests.conftest import make_lora
from tests.worlds import sqlite_settings

ROW_NAME = re.compile(r'<th scope="row"><a href="/ui/adapters/\d+">([^<]+)</a></th>')
BAR = re.compile(r'<rect class="bar (\w+)"[^>]*data-value="([\d.]+)"><title>([^<]*)</title>')


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, embedder: MiniLMEmbedder
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("ui-compare")
    reg = Registry(sqlite_settings(root), embedder=embedder)
    made = {
        "zoo-plant": {"accuracy": 0.9, "base_accuracy": 0.5, "task": "plant", "eval_n": 40},
        "made-for-plants": {"accuracy": 0.7, "base_accuracy": 0.5, "eval_task": "plant"},
        "loner": {},
        "boat-thing": {"accuracy": 0.6, "base_accuracy": 0.55, "eval_task": "boat"},
    }
    ids = {}
    for i, (name, metrics) in enumerate(made.items()):
        rec = reg.add_adapter(
            make_lora(tiny_base, root / name, seed=i), base_model=str(tiny_base),
            description=f"Adapter {name}", name=name, metrics=metrics,
            provenance="trained" if name.startswith("zoo-") else "imported",
        )  # fmt: skip
        ids[name] = rec.id
    reader = reg.create_api_key("ui-reader", "reader")[1]
    yield {"registry": reg, "ids": ids, "reader": reader, "base": str(tiny_base)}
    reg.close()


@pytest.fixture
def client(world: dict[str, Any]) -> Iterator[TestClient[Any]]:
    with logged_in_client(world["registry"], world["reader"]) as c:
        yield c


def test_compare_charts_adapters_beside_the_bare_model_and_the_oracle(
    client: TestClient[Any], world: dict[str, Any]
) -> None:
    ids = world["ids"]
    r = client.get(
        "/ui/compare",
        params=[("ids", ids["made-for-plants"]), ("ids", ids["zoo-plant"]), ("ids", ids["loner"])],
    )
    assert r.status_code == 200, r.text
    bars = BAR.findall(r.text)
    assert [(kind, float(v)) for kind, v, _ in bars] == [
        ("bare", 0.5), ("adapter", 0.7), ("oracle", 0.9),
    ], bars  # fmt: skip
    assert "50% of the oracle&#39;s gain" in bars[1][2]  # (0.7 - 0.5) / (0.9 - 0.5)
    assert "On plant" in r.text and "Not measured on plant" in r.text
    assert re.search(r"Not measured on plant:\s*<a href=\"/ui/adapters/\d+\">loner</a>", r.text)
    side = r.text[r.text.index('aria-label="The adapters side by side"') :]
    assert side.index("made-for-plants") < side.index("zoo-plant") < side.index("loner")
    # one comma-separated ids field works too, and another task can be chosen
    r = client.get("/ui/compare", params={"ids": f"{ids['boat-thing']},{ids['zoo-plant']}"})
    assert r.status_code == 200 and "On boat" in r.text  # a tie: the first task by name
    r = client.get(
        "/ui/compare", params={"ids": f"{ids['boat-thing']},{ids['zoo-plant']}", "task": "boat"}
    )
    assert [(k, float(v)) for k, v, _ in BAR.findall(r.text)] == [("bare", 0.55), ("adapter", 0.6)]


@pytest.mark.parametrize(
    ("ids", "task", "status", "reason"),
    [
        ("1", "", 400, "choose 2 to 8 adapters"),
        ("1,x", "", 400, "whole numbers"),
        ("1,999999", "", 404, "999999"),
        ("1,2", "no-such-task", 400, "none of these adapters was measured on task"),
        ("1,2,3,4,5,6,7,8,9", "", 400, "choose 2 to 8 adapters"),
    ],
)
def test_compare_refuses_a_bad_choice_with_a_styled_page(
    client: TestClient[Any], ids: str, task: str, status: int, reason: str
) -> None:
    r = client.get("/ui/compare", params={"ids": ids, "task": task})
    assert r.status_code == status and reason in r.text, (r.status_code, r.text[-400:])
    assert r.headers["content-type"].startswith("text/html") and 'role="alert"' in r.text


def test_the_adapters_list_sorts_and_shows_the_oracle(
    client: TestClient[Any], world: dict[str, Any]
) -> None:
    r = client.get("/ui/adapters", params={"sort": "accuracy", "order": "desc"})
    assert ROW_NAME.findall(r.text) == ["zoo-plant", "made-for-plants", "boat-thing", "loner"]
    assert re.search(r'aria-sort="descending"><a href="[^"]*sort=accuracy&amp;order=asc"', r.text)
    row = r.text[r.text.index(">made-for-plants<") :].split("</tr>")[0]
    assert "bare 0.500" in row and "oracle 0.900" in row
    own = r.text[r.text.index(">zoo-plant<") :].split("</tr>")[0]
    assert "oracle" not in own  # an oracle is not shown beside itself
    r = client.get("/ui/adapters", params={"sort": "name"})
    assert ROW_NAME.findall(r.text) == sorted(world["ids"])
    r = client.get("/ui/adapters", params={"sort": "colour"})
    assert r.status_code == 400 and "sort must be one of" in r.text
    # the REST API sorts the same way
    h = {"Authorization": f"Bearer {world['reader']}"}
    got = client.get("/v1/adapters", params={"sort": "accuracy", "order": "asc"}, headers=h)
    assert [a["name"] for a in got.json()["items"]] == [
        "boat-thing", "made-for-plants", "zoo-plant", "loner",
    ]  # fmt: skip
    assert client.get("/v1/adapters", params={"sort": "colour"}, headers=h).status_code == 400


def test_the_adapter_page_gives_its_share_of_the_oracle_gain(
    client: TestClient[Any], world: dict[str, Any]
) -> None:
    r = client.get(f"/ui/adapters/{world['ids']['made-for-plants']}")
    assert f'<a href="/ui/adapters/{world["ids"]["zoo-plant"]}">zoo-plant</a>' in r.text
    assert "<strong>0.900</strong>" in r.text and "<strong>50 %</strong>" in r.text


def test_the_generators_page_charts_the_last_held_out_evaluation(
    client: TestClient[Any], world: dict[str, Any]
) -> None:
    reg: Registry = world["registry"]
    path = report_path(reg.settings.results_dir, world["base"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    r = client.get("/ui/generators")
    assert r.status_code == 200 and "No held-out evaluation yet" in r.text
    report = {
        "columns": ["base", "nearest", "sg-lora", "oracle"],
        "tasks": [
            {"task": "plant", "base": 0.5, "nearest": 0.6, "sg-lora": 0.7, "oracle": 0.9},
            {"task": "boat", "base": 0.4, "nearest": 0.8, "sg-lora": 0.5, "oracle": 0.8},
        ],
        "mean": {"base": 0.45, "nearest": 0.7, "sg-lora": 0.6, "oracle": 0.85},
        "relative_to_oracle": {"base": 0.53, "nearest": 0.81, "sg-lora": 0.7},
    }
    path.write_text(json.dumps(report))
    r = client.get("/ui/generators")
    assert "Mean accuracy over 2 held-out tasks" in r.text
    assert [(k, float(v)) for k, v, _ in BAR.findall(r.text)] == [
        ("bare", 0.45), ("method", 0.7), ("method", 0.6), ("oracle", 0.85),
    ]  # fmt: skip
    assert "81% of the oracle" in r.text
    assert re.search(r'<th scope="row">boat</th><td>0.400</td><td>0.800</td>', r.text)
    assert "Share of the oracle&#39;s gain" not in r.text  # an older report has no splits

    def estimate(value: float, low: float, high: float) -> dict[str, float]:
        return {"value": value, "low": low, "high": high}

    report["splits"] = {
        "held_out": {
            "tasks": 2,
            "gain_share": {"base": estimate(0, 0, 0), "nearest": estimate(0.625, 0.5, 0.75),
                           "sg-lora": estimate(0.25, -0.1, 0.5), "oracle": estimate(1, 1, 1)},
            "differences": [{"method": "sg-lora", "against": "nearest",
                             **estimate(-0.375, -0.6, -0.25)}],
        },
        "new_family": {"tasks": 1, "gain_share": {"nearest": estimate(0.1, 0.0, 0.2)}},
    }  # fmt: skip
    path.write_text(json.dumps(report))
    r = client.get("/ui/generators")
    assert "on 2 tasks within the training families" in r.text
    assert '<th scope="row">nearest</th><td>62 [50, 75] %</td>' in r.text
    assert '<th scope="row">sg-lora - nearest</th><td>-37.5 [-60.0, -25.0] points</td>' in r.text
    assert "on 1 task of a family with no training task" in r.text
