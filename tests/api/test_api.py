"""The REST API in process (Litestar's TestClient over the real app, registry,
tiny zoo and generators): contract, auth, errors, limits, jobs, metrics."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from api.app import create_app, process_cpus, process_id
from api.worker import HANDLERS, run_one
from generator.fit.config import GeneratorConfig
from generator.fit.train import train_generator
from generator.sandbox import SandboxWorld, build_world
from registry.embeddings import MiniLMEmbedder
from registry.errors import Conflict
from registry.service import Registry
from registry.settings import ApiSettings
from tests.conftest import make_lora

DESC = "Does the text mention the moon? Answer yes or no."


@dataclass
class KeyedWorld(SandboxWorld):
    """The sandbox world with a trained generator and an admin and a reader key."""

    admin: str = ""
    reader: str = ""


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, embedder: MiniLMEmbedder
) -> Iterator[KeyedWorld]:
    w = build_world(tmp_path_factory.mktemp("api"), embedder=embedder, base=tiny_base)
    train_generator(w.registry, w.base, GeneratorConfig(hidden=32, latent=4, steps=10))
    admin = w.registry.create_api_key("ops", "admin")[1]
    reader = w.registry.create_api_key("app", "reader")[1]
    yield KeyedWorld(**vars(w), admin=admin, reader=reader)
    w.close()


def client_for(world: KeyedWorld, **settings: Any) -> TestClient[Any]:
    app = create_app(world.registry, ApiSettings(**settings))
    return TestClient(app)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def client(world: KeyedWorld) -> Iterator[TestClient[Any]]:
    with client_for(world) as c:
        yield c


def test_health_ready_and_request_ids(client: TestClient[Any]) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["process"] == process_id()
    ready = client.get("/ready", headers={"X-Request-ID": "abc123"})
    assert ready.status_code == 200 and ready.headers["x-request-id"] == "abc123"
    body = ready.json()
    assert body["auth"].startswith("keys:") and body["generators"]
    assert body["database"] == "sqlite"  # the kind, never the path or URL
    assert client.get("/health").headers["x-request-id"]


def test_generate_contract_and_download(client: TestClient[Any], world: KeyedWorld) -> None:
    body = {"description": DESC, "base_model": world.base, "method": "sg-lora", "seed": 4}
    r = client.post("/v1/generate", json=body, headers=auth(world.reader))
    assert r.status_code == 201, r.text
    out = r.json()
    adapter = out["adapter"]
    assert adapter["id"] and adapter["provenance"] == "generated"
    assert out["download_url"] == f"/v1/adapters/{adapter['id']}/download"
    assert out["neighbours"] and out["seed"] == 4
    again = client.post("/v1/generate", json=body, headers=auth(world.reader)).json()
    assert again["adapter"]["id"] == adapter["id"]
    z = client.get(out["download_url"], headers=auth(world.reader))
    assert z.status_code == 200 and z.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(z.content)).namelist()
    assert sorted(names) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    card = client.get(f"{out['download_url']}?file=card", headers=auth(world.reader))
    assert card.headers["content-type"].startswith("text/markdown")
    assert card.text == zipfile.ZipFile(io.BytesIO(z.content)).read("README.md").decode()
    cfg = client.get(f"{out['download_url']}?file=config", headers=auth(world.reader))
    assert cfg.json()["r"] == 4
    bad = client.get(f"{out['download_url']}?file=pickle", headers=auth(world.reader))
    assert bad.status_code == 400


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"description": DESC, "base_model": "no/such-model"}, 404, "no/such-model"),
        ({"description": DESC, "method": "magic"}, 400, "method"),
        ({"description": "   "}, 400, "description: Expected text: not blank"),
        ({"description": "x" * 5000}, 400, "description: Expected `str` of length <= 2000"),
        ({"description": "\x1b\x1b\x00"}, 400, "no control character"),
        ({"description": DESC, "examples": [{"input": "a"}]}, 400, ""),
        ({"description": DESC, "surprise": 1}, 400, ""),
        ({"base_model": "x"}, 400, ""),
    ],
)
def test_generate_rejects_bad_input_with_4xx(
    client: TestClient[Any], world: KeyedWorld, body: dict[str, Any], status: int, detail: str
) -> None:
    if "base_model" not in body:
        body = body | {"base_model": world.base}
    before = world.registry.count_adapters()
    r = client.post("/v1/generate", json=body, headers=auth(world.reader))
    assert r.status_code == status, r.text
    assert r.json()["status_code"] == status and detail in r.json()["detail"]
    assert world.registry.count_adapters() == before


def shots(world: KeyedWorld, n: int = 16) -> list[dict[str, str]]:
    return [{"input": e.input, "output": e.output} for e in world.held_out().train[:n]]


YES_NO = [{"input": "a b", "output": "yes"}, {"input": "c d", "output": "no"}]


def test_generate_with_examples_reports_what_it_chose(
    client: TestClient[Any], world: KeyedWorld
) -> None:
    body = {"description": DESC, "base_model": world.base, "examples": shots(world)}
    r = client.post("/v1/generate", json=body, headers=auth(world.reader))
    assert r.status_code == 201, r.text
    out = r.json()
    report = out["fewshot"]
    assert out["job"] is None and report["chosen"] in report["candidates"]
    assert report["examples"] == 16 and report["metric"] == "balanced accuracy"
    estimate = report["estimate"]
    assert {"adapter", "bare", "nearest", "how"} <= set(estimate)
    assert estimate["bare"] == report["candidates"]["none"]
    assert out["adapter"]["meta"]["fewshot"] == report  # the record says the same
    again = client.post("/v1/generate", json=body, headers=auth(world.reader)).json()
    assert again["adapter"]["id"] == out["adapter"]["id"]  # the same request, the same adapter
    zipped = client.get(out["download_url"], headers=auth(world.reader))
    assert zipped.status_code == 200


def test_training_over_the_time_budget_runs_as_a_job(
    client: TestClient[Any], world: KeyedWorld
) -> None:
    reg = world.registry
    body = {
        "description": DESC, "base_model": world.base, "examples": shots(world, 12),
        "refine_steps": 2, "time_budget_s": 0,
    }  # fmt: skip
    r = client.post("/v1/generate", json=body, headers=auth(world.reader))
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["job"]["kind"] == "generate" and out["fewshot"]["method"] == "selection"
    done = run_one(reg, "test-worker", HANDLERS)
    assert done is not None
    assert done.state == "succeeded", done.error
    assert done.result is not None
    trained = reg.get_adapter(done.result["adapter_id"])
    assert trained.meta["fewshot"]["method"] == "selection+refine"
    assert trained.id != out["adapter"]["id"]
    job = client.get(out["job"]["url"], headers=auth(world.reader)).json()
    assert job["state"] == "succeeded" and job["result"]["adapter_id"] == trained.id
    # a budget the training fits in: trained in the request itself
    inline = client.post(
        "/v1/generate", json=body | {"time_budget_s": 600, "seed": 5}, headers=auth(world.reader)
    ).json()
    assert inline["job"] is None and inline["fewshot"]["method"] == "selection+refine"


@pytest.mark.parametrize(
    ("extra", "detail"),
    [
        ({"examples": YES_NO + [{"input": "e", "output": "maybe"}], "labels": ["yes", "no"]},
         "are not among the labels"),
        ({"examples": [{"input": "a", "output": "yes"}] * 3}, "one label only"),
        ({"examples": [{"input": " ", "output": "yes"}, *YES_NO]}, "input is empty"),
        ({"examples": YES_NO * 33}, "examples"),  # 66: over the 64 allowed
        ({"examples": [{"input": "x" * 7000, "output": f"o{i}"} for i in range(40)]},
         "over 256000"),
        ({"refine_steps": 3}, "learn from examples"),
        ({"examples": YES_NO, "refine_steps": -1}, "refine_steps"),
    ],
)  # fmt: skip
def test_bad_examples_are_refused_and_nothing_is_registered(
    client: TestClient[Any], world: KeyedWorld, extra: dict[str, Any], detail: str
) -> None:
    before = world.registry.count_adapters()
    body = {"description": DESC, "base_model": world.base} | extra
    r = client.post("/v1/generate", json=body, headers=auth(world.reader))
    assert r.status_code == 400, r.text
    assert detail in r.text
    assert world.registry.count_adapters() == before


def test_examples_that_are_not_utf8_are_refused(client: TestClient[Any], world: KeyedWorld) -> None:
    before = world.registry.count_adapters()
    body = (
        b'{"description": "moon?", "base_model": "' + world.base.encode() + b'", '
        b'"examples": [{"input": "\xff\xfe", "output": "yes"}, {"input": "b", "output": "no"}]}'
    )
    assert b"\xff" in body  # a byte that is not UTF-8, inside a JSON string
    headers = auth(world.reader) | {"content-type": "application/json"}
    r = client.post("/v1/generate", content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert world.registry.count_adapters() == before


def test_pinned_generator_serves_until_unpinned(client: TestClient[Any], world: KeyedWorld) -> None:
    reg: Registry = world.registry
    [first] = reg.list_generators(base_model=world.base, method="sg-lora")
    # a newer generator of the same method (the same checkpoint under another name)
    newer = reg.add_generator(
        reg.generator_checkpoint(first.id), base_model=world.base, method="sg-lora",
        name="newer",
    )  # fmt: skip
    admin, reader = auth(world.admin), auth(world.reader)
    body = {"description": DESC, "base_model": world.base, "seed": 11}

    def served() -> int:
        r = client.post("/v1/generate", json=body, headers=reader)
        assert r.status_code == 201, r.text
        return int(r.json()["generator_id"])

    try:
        assert served() == newer.id  # unpinned: the newest serves
        assert client.put(f"/v1/generators/{first.id}/pin", headers=reader).status_code == 403
        r = client.put(f"/v1/generators/{first.id}/pin", headers=admin)
        assert r.status_code == 200 and r.json()["pinned"] is True, r.text
        assert served() == first.id
        listed = client.get("/v1/generators", headers=reader).json()
        assert {g["id"]: g["pinned"] for g in listed} == {first.id: True, newer.id: False}
        # one request may still name a generator; the method defaults to the generator's
        named = client.post("/v1/generate", json=body | {"generator_id": newer.id}, headers=reader)
        assert named.status_code == 201 and named.json()["generator_id"] == newer.id
        assert named.json()["method"] == "sg-lora"
        r = client.post(
            "/v1/generate", json=body | {"generator_id": newer.id, "method": "icm-lora"},
            headers=reader,
        )  # fmt: skip
        assert r.status_code == 409 and "is sg-lora" in r.json()["detail"]
        r = client.post("/v1/generate", json=body | {"generator_id": 9999}, headers=reader)
        assert r.status_code == 404
        r = client.post("/v1/generate", json=body | {"generator_id": 0}, headers=reader)
        assert r.status_code == 400 and "generator_id" in r.json()["detail"]
        # a pinned generator is not deleted behind the clients' backs
        with pytest.raises(Conflict, match="unpin it first"):
            reg.delete_generator(first.id)
        assert client.delete(f"/v1/generators/{newer.id}/pin", headers=admin).status_code == 409
        assert client.delete(f"/v1/generators/{first.id}/pin", headers=admin).status_code == 204
        assert served() == newer.id
        assert client.put("/v1/generators/9999/pin", headers=admin).status_code == 404
    finally:
        if first.id in reg.pinned_generator_ids():
            reg.unpin_generator(first.id)
        # what it generated is kept as recipes: their weights are stored first
        reg.delete_generator(newer.id, materialise=True)


def test_auth_roles(client: TestClient[Any], world: KeyedWorld) -> None:
    reg: Registry = world.registry

    def state() -> tuple[int, int, int]:
        return reg.count_adapters(), len(reg.list_generators()), len(reg.list_jobs())

    before = state()
    assert client.get("/v1/adapters").status_code == 401
    assert client.get("/v1/adapters", headers=auth("lm_wrong")).status_code == 401
    assert client.get("/v1/adapters", headers=auth(world.reader)).status_code == 200
    r = client.delete("/v1/adapters/1", headers=auth(world.reader))
    assert r.status_code == 403 and "needs admin" in r.json()["detail"]
    # every write, without a key, with a wrong one and with a reader's, is refused
    writes: list[tuple[str, str, dict[str, Any]]] = [
        ("delete", "/v1/adapters/1", {}),
        ("post", "/v1/generators", {"json": {"base_model": world.base, "steps": 5}}),
        ("post", "/v1/adapters", {"data": {"description": "x", "base_model": world.base}}),
    ]
    for method, path, kwargs in writes:
        for headers, code in (({}, 401), (auth("lm_wrong"), 401), (auth(world.reader), 403)):
            got = getattr(client, method)(path, headers=headers, **kwargs).status_code
            assert got == code, (method, path, headers, got)
    assert client.post("/v1/generate", json={"description": "x"}).status_code == 401
    assert state() == before  # nothing was changed
    with client_for(world, open_access=True) as open_client:
        assert open_client.get("/v1/adapters").status_code == 200
        assert open_client.delete("/v1/adapters/1").status_code == 401
        assert "open" in open_client.get("/ready").json()["auth"]
    assert state() == before


def test_upload_search_get_delete(
    client: TestClient[Any], world: KeyedWorld, tmp_path: Path
) -> None:
    folder = make_lora(Path(world.base), tmp_path / "lora", r=4, seed=3)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in folder.iterdir():
            z.write(f, f.name)
    form = {"description": "Translate pirate speak into plain English", "base_model": world.base}
    r = client.post(
        "/v1/adapters",
        data=form,
        files={"file": ("a.zip", buf.getvalue(), "application/zip")},
        headers=auth(world.admin),
    )
    assert r.status_code == 201, r.text
    new_id = r.json()["id"]
    assert r.json()["serving_warnings"] == []  # rank 4 on q/v of a Llama: every engine serves it
    hits = client.get(
        "/v1/adapters", params={"q": "decode what a pirate says", "k": 3},
        headers=auth(world.reader),
    ).json()  # fmt: skip
    assert hits["items"][0]["adapter"]["id"] == new_id
    detail = client.get(f"/v1/adapters/{new_id}", headers=auth(world.reader)).json()
    assert detail["config"]["r"] == 4 and detail["provenance"] == "imported"

    def two_files(lora: Path) -> Any:
        return client.post(
            "/v1/adapters",
            data=form | {"name": "two-files"},
            files={
                "config": ("adapter_config.json", (lora / "adapter_config.json").read_bytes()),
                "weights": ("w", (lora / "adapter_model.safetensors").read_bytes()),
            },
            headers=auth(world.admin),
        )

    # the same weights again, under another name: reported as the adapter they are
    count = world.registry.count_adapters()
    twin = two_files(folder)
    assert twin.status_code == 409 and f"as adapter {new_id} " in twin.json()["detail"], twin.text
    assert world.registry.count_adapters() == count
    two = two_files(make_lora(Path(world.base), tmp_path / "other", r=4, seed=4))
    assert two.status_code == 201, two.text
    assert client.delete(f"/v1/adapters/{new_id}", headers=auth(world.admin)).status_code == 204
    gone = client.get(f"/v1/adapters/{new_id}", headers=auth(world.reader))
    assert gone.status_code == 404 and gone.json()["status_code"] == 404
    page = client.get("/v1/adapters", params={"limit": 2, "offset": 1}, headers=auth(world.reader))
    assert len(page.json()["items"]) == 2 and page.json()["total"] >= 3


def test_bad_uploads_change_nothing(client: TestClient[Any], world: KeyedWorld) -> None:
    reg: Registry = world.registry
    before = reg.count_adapters()
    form = {"description": "d", "base_model": world.base}
    cases: list[dict[str, tuple[str, bytes] | tuple[str, bytes, str]]] = [
        {"file": ("a.zip", b"not a zip", "application/zip")},
        {"config": ("c.json", b"{broken"), "weights": ("w", b"x")},
        {"config": ("c.json", json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                                          "target_modules": ["q_proj"]}).encode()),
         "weights": ("w", b"garbage")},
    ]  # fmt: skip
    for files in cases:
        r = client.post("/v1/adapters", data=form, files=files, headers=auth(world.admin))
        assert r.status_code == 400, r.text
        assert r.json()["detail"]
    r = client.post(
        "/v1/adapters", data=form, files={"other": ("x", b"1")}, headers=auth(world.admin)
    )
    assert r.status_code == 400 and "either" in r.json()["detail"]
    r = client.post("/v1/adapters", data=form, headers=auth(world.admin))  # not multipart
    assert r.status_code == 400 and "multipart" in r.json()["detail"]
    assert reg.count_adapters() == before


def test_upload_keeps_seeds_and_labels_for_transfers(
    client: TestClient[Any], world: KeyedWorld, tmp_path: Path
) -> None:
    from generator.zoo.artifacts import SEEDS, read_seeds

    reg: Registry = world.registry
    folder = make_lora(Path(world.base), tmp_path / "lora", r=4, seed=5)
    files = {
        "config": ("adapter_config.json", (folder / "adapter_config.json").read_bytes()),
        "weights": ("w", (folder / "adapter_model.safetensors").read_bytes()),
    }
    form = {"description": "Does the text mention a ship? Answer yes or no.",
            "base_model": world.base}  # fmt: skip
    seeds = b'{"input": "a ship at sea", "output": "yes"}\n{"input": "a cat", "output": "no"}\n'
    before = reg.count_adapters()
    bad = [
        ({"labels": "yes,no"}, {"seeds": ("s.jsonl", b"{not json")}, "seed line 1"),
        ({"labels": "yes,maybe"}, {"seeds": ("s.jsonl", seeds)}, "not among the labels"),
        ({"labels": "yes,yes"}, {}, "distinct"),
    ]
    for extra_form, extra_files, message in bad:
        r = client.post(
            "/v1/adapters", data=form | extra_form, files=files | extra_files,
            headers=auth(world.admin),
        )  # fmt: skip
        assert r.status_code == 400 and message in r.json()["detail"], r.text
    assert reg.count_adapters() == before
    r = client.post(
        "/v1/adapters", data=form | {"labels": "yes, no", "name": "ship"},
        files=files | {"seeds": ("s.jsonl", seeds, "application/jsonl")},
        headers=auth(world.admin),
    )  # fmt: skip
    assert r.status_code == 201, r.text
    rec = reg.get_adapter(r.json()["id"])
    assert rec.meta["labels"] == ["yes", "no"]
    assert [(e.input, e.output) for e in read_seeds(reg.artifact(rec.id, SEEDS))] == [
        ("a ship at sea", "yes"), ("a cat", "no"),
    ]  # fmt: skip
    reg.delete_adapter(rec.id)


def test_too_large_upload_is_413(world: KeyedWorld) -> None:
    import dataclasses

    reg: Registry = world.registry
    small = Registry(
        dataclasses.replace(reg.settings, max_adapter_bytes=1000), embedder=reg.embedder
    )
    with TestClient(create_app(small, ApiSettings())) as c:
        r = c.post(
            "/v1/adapters",
            data={"description": "d", "base_model": world.base},
            files={"file": ("a.zip", b"0" * 3_000_000, "application/zip")},
            headers=auth(world.admin),
        )
        assert r.status_code == 413
    small.close()


def test_generator_training_job_runs_on_the_worker(
    client: TestClient[Any], world: KeyedWorld
) -> None:
    reg: Registry = world.registry
    body = {"base_model": world.base, "method": "sg-lora", "steps": 5, "name": "from-api"}
    r = client.post("/v1/generators", json=body, headers=auth(world.admin))
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] == "queued" and job["kind"] == "train-generator"
    done = run_one(reg, "test-worker", HANDLERS)
    assert done is not None and done.state == "succeeded", done
    shown = client.get(job["url"], headers=auth(world.reader)).json()
    assert shown["state"] == "succeeded" and shown["progress"] == 1.0
    gens = client.get("/v1/generators", headers=auth(world.reader)).json()
    assert any(g["name"] == "from-api" for g in gens)
    bad = client.post("/v1/generators", json=body | {"method": "x"}, headers=auth(world.admin))
    assert bad.status_code == 400
    jobs_before = reg.count_jobs()
    wrongs = (
        {"gate": -0.5},
        {"select": "local"},  # the local policy lost its experiment and was removed
        {"tau": 0},
        {"anchor_steps": 50},  # so did the multi-task anchor: an unknown field now
    )
    for wrong in wrongs:
        r = client.post("/v1/generators", json=body | wrong, headers=auth(world.admin))
        assert r.status_code == 400 and next(iter(wrong)) in r.text, r.text
    assert reg.count_jobs() == jobs_before  # a refused request queues nothing
    missing = client.post(
        "/v1/generators", json=body | {"base_model": "nope/nope"}, headers=auth(world.admin)
    )
    assert missing.status_code == 404


def test_a_generator_for_a_base_model_without_adapters_is_refused_before_queueing(
    client: TestClient[Any], world: KeyedWorld, tiny_gemma: Path
) -> None:
    empty = world.registry.prepare_base_model(str(tiny_gemma)).name
    jobs = world.registry.count_jobs()
    r = client.post("/v1/generators", json={"base_model": empty}, headers=auth(world.admin))
    assert r.status_code == 400 and "nothing to learn from" in r.json()["detail"], r.text
    assert world.registry.count_jobs() == jobs


def test_admins_cancel_jobs_over_rest(client: TestClient[Any], world: KeyedWorld) -> None:
    body = {"base_model": world.base, "steps": 5}
    job = client.post("/v1/generators", json=body, headers=auth(world.admin)).json()
    url = f"/v1/jobs/{job['id']}"
    assert client.delete(url, headers=auth(world.reader)).status_code == 403
    assert world.registry.get_job(job["id"]).state == "queued"  # a refused cancel changes nothing
    r = client.delete(url, headers=auth(world.admin))
    assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
    again = client.delete(url, headers=auth(world.admin))
    assert again.status_code == 409 and "cancelled already" in again.json()["detail"]
    assert client.delete("/v1/jobs/999999", headers=auth(world.admin)).status_code == 404


@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/v1/adapters?provenance=bogus", "provenance"),
        ("/v1/adapters?q=moon&provenance=bogus", "provenance"),  # search checks it too
        ("/v1/generators?method=bogus", "method"),
        ("/v1/jobs?state=bogus", "state"),
        ("/v1/jobs?kind=bogus", "kind"),
    ],
)
def test_every_filter_is_checked(
    client: TestClient[Any], world: KeyedWorld, url: str, field: str
) -> None:
    """A misspelt filter is a 400 naming it on every route, never an empty answer."""
    r = client.get(url, headers=auth(world.reader))
    assert r.status_code == 400 and field in r.json()["detail"], r.text


def test_the_openapi_enums_are_the_code_s() -> None:
    from typing import get_args

    from api.dto import JobKind, Method
    from generator.hypernet.methods import METHODS

    assert get_args(Method) == METHODS
    assert set(get_args(JobKind)) == set(HANDLERS)


@pytest.mark.parametrize("spelling", ["+1", "01", "1_0", "%201", "%EF%BC%91", "-0"])
def test_an_id_has_one_spelling(client: TestClient[Any], world: KeyedWorld, spelling: str) -> None:
    """``+1`` or ``01`` is not adapter 1 (nor ``１``, full-width)."""
    listed = client.get("/v1/adapters", headers=auth(world.reader)).json()["items"]
    assert listed
    first = listed[0]["id"]
    assert client.get(f"/v1/adapters/{first}", headers=auth(world.reader)).status_code == 200
    odd = spelling.replace("1", str(first)) if spelling not in ("1_0", "-0") else spelling
    r = client.get(f"/v1/adapters/{odd}", headers=auth(world.reader))
    assert r.status_code == 404, (odd, r.text)
    r = client.delete(f"/v1/adapters/{odd}", headers=auth(world.admin))
    assert r.status_code == 404 and world.registry.get_adapter(first)


def test_limits_jobs_and_rate(world: KeyedWorld) -> None:
    body = {"base_model": world.base, "steps": 5}
    with client_for(world, max_jobs=1) as c:
        first = c.post("/v1/generators", json=body, headers=auth(world.admin))
        second = c.post("/v1/generators", json=body, headers=auth(world.admin))
        assert first.status_code == 202 and second.status_code == 429
        world.registry.cancel_job(first.json()["id"])
    with client_for(world, rate=0.01, burst=2) as c:
        codes = [c.get("/v1/base-models", headers=auth(world.reader)).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
    with client_for(world, max_k=5) as c:
        r = c.get("/v1/adapters", params={"q": "x", "k": 50}, headers=auth(world.reader))
        assert r.status_code == 400


def test_metrics_and_openapi(client: TestClient[Any], world: KeyedWorld) -> None:
    client.get("/v1/base-models", headers=auth(world.reader))
    text = client.get("/metrics").text
    assert "loramint_http_request_seconds_bucket" in text
    assert "loramint_generation_batch_size" in text
    spec = client.get("/schema/openapi.json").json()
    paths = spec["paths"]
    for p in (
        "/v1/generate",
        "/v1/adapters",
        "/v1/adapters/{adapter_id}/download",
        "/v1/jobs/{job_id}",
    ):
        assert p in paths
    assert paths["/v1/generate"]["post"]["requestBody"]


def test_token_buckets_limit_each_caller_and_stay_bounded() -> None:
    from api.auth import TokenBuckets

    buckets = TokenBuckets(rate=1e-6, burst=2.0)  # no refill within the test, however slow
    assert buckets.take("a") == 0 and buckets.take("a") == 0
    assert buckets.take("a") > 0  # the third call waits
    assert buckets.take("b") == 0  # another caller has its own bucket
    buckets.MAX_CALLERS = 3
    buckets.take("c")
    # "a" is empty, "b" and "c" have each used a token; a fourth caller finds no
    # refilled bucket to forget, so the table grows by one...
    assert buckets.take("d") == 0 and len(buckets) == 4
    # ...but refilled buckets are forgotten once the table is full.
    now = [0.0]
    fresh = TokenBuckets(rate=1.0, burst=1.0, clock=lambda: now[0])
    fresh.MAX_CALLERS = 3
    for who in "abc":
        fresh.take(who)
    now[0] = 0.5
    fresh.take("d")  # nobody has refilled yet: the table grows
    assert len(fresh) == 4
    now[0] = 2.0
    fresh.take("e")  # a, b, c and d have refilled (1 token/s): dropped
    assert len(fresh) == 1


def test_jobs_say_how_long_they_ran_and_have_left(
    client: TestClient[Any], world: KeyedWorld
) -> None:
    import dataclasses
    from datetime import timedelta

    from api.dto import duration, job_timing

    job = world.registry.submit_job("train-generator", {"base_model": world.base})
    try:
        shown = client.get(f"/v1/jobs/{job.id}", headers=auth(world.reader)).json()
        assert shown["timing"] == "waiting for a worker" and shown["elapsed_s"] is None
        started = job.created_at
        running = dataclasses.replace(job, state="running", started_at=started, progress=0.25)
        now = started + timedelta(seconds=100)
        assert job_timing(running, now) == (
            100.0,
            300.0,
            "running for 1 min 40 s, about 5 min 0 s left",
        )
        done = dataclasses.replace(running, state="succeeded", finished_at=now, progress=1.0)
        assert job_timing(done, now + timedelta(hours=1)) == (100.0, None, "ran 1 min 40 s")
        assert [duration(s) for s in (45, 190, 7500)] == ["45 s", "3 min 10 s", "2 h 5 min"]
    finally:
        world.registry.cancel_job(job.id)


def test_forms_offer_first_the_base_model_that_works(world: KeyedWorld, tiny_gemma: Path) -> None:
    """The generate and train forms default to the first name: a base model with a
    generator and adapters, not the alphabetically first one that has none."""
    from api.ui.views import base_model_names

    world.registry.prepare_base_model(str(tiny_gemma))  # registered, no adapters
    names = base_model_names(world.registry)
    assert names[0] == world.base and str(tiny_gemma) in names


def test_an_upload_reports_what_serving_engines_would_object_to(
    client: TestClient[Any], world: KeyedWorld, tmp_path: Path
) -> None:
    """PEFT's rules refuse an upload; vLLM's and LoRAX's are reported with the 201."""
    lora = make_lora(Path(world.base), tmp_path / "wide", r=40, seed=11)
    files = {
        "config": ("adapter_config.json", (lora / "adapter_config.json").read_bytes()),
        "weights": ("w", (lora / "adapter_model.safetensors").read_bytes()),
    }
    form = {"description": "A rank-40 adapter", "base_model": world.base}
    r = client.post("/v1/adapters", data=form, files=files, headers=auth(world.admin))
    assert r.status_code == 201, r.text
    warnings = r.json()["serving_warnings"]
    assert any(w.startswith("vllm:") and "64" in w for w in warnings), warnings


def test_each_server_process_has_its_own_id() -> None:
    """``serve --workers`` processes tell themselves apart on /health: a forked child
    gets an id of its own, and a process keeps its id."""
    import multiprocessing

    fork = multiprocessing.get_context("fork")
    parent = process_id()
    with fork.Pool(1) as pool:
        child = pool.apply(process_id)
    assert child != parent and process_id() == parent and len(parent) == 12


def test_each_server_process_generates_on_its_share_of_the_cpus(world: KeyedWorld) -> None:
    """``serve --workers N``: a process's CPUs are the machine's / N (at least one), and by
    default it runs one generation batch worker on each."""
    assert [process_cpus(n, cpus=4) for n in (1, 2, 3, 4, 8)] == [4, 2, 1, 1, 1]
    for cpus in (1, 3):
        app = create_app(world.registry, ApiSettings(), cpus=cpus)
        assert app.state.batcher.workers == cpus and app.state.batcher.threads == 1
    app = create_app(world.registry, ApiSettings(batch_workers=2, batch_threads=2), cpus=1)
    assert (app.state.batcher.workers, app.state.batcher.threads) == (2, 2)
