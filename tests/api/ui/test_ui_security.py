"""The admin UI's sessions, roles and CSRF over plain HTTP (Litestar's TestClient on the
real app and a real SQLite registry): a request without a session, with a bad CSRF token
or with a reader's session changes nothing; the same request done right does."""

from __future__ import annotations

import contextlib
import io
import re
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from api.app import create_app
from api.ui.sessions import session_secret
from registry.embeddings import MiniLMEmbedder
from registry.errors import InvalidInput
from registry.service import Registry
from registry.settings import ApiSettings, Settings, UiSettings
from tests.conftest import make_lora

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def zipped(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in folder.iterdir():
            z.write(f, f.name)
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, embedder: MiniLMEmbedder
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("ui-security")
    settings = Settings(
        home=root / "home", database_url=f"sqlite:///{root}/r.db", model_cache=root / "models"
    )
    reg = Registry(settings, embedder=embedder)
    lora = zipped(make_lora(tiny_base, root / "lora", seed=1))
    first = reg.add_adapter(
        make_lora(tiny_base, root / "keep", seed=2), base_model=str(tiny_base),
        description="Keep me: classify the sentiment of a movie review",
    )  # fmt: skip
    job = reg.submit_job("train-generator", {"base_model": str(tiny_base), "steps": 3})
    keys = {role: reg.create_api_key(f"ui-{role}", role)[1] for role in ("admin", "reader")}
    yield {
        "registry": reg, "base": str(tiny_base), "zip": lora, "adapter": first.id,
        "job": job.id, **keys,
    }  # fmt: skip
    reg.close()


@pytest.fixture
def client(world: dict[str, Any]) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(world["registry"], ApiSettings())) as c:
        yield c


def csrf_of(html: str) -> str:
    found = CSRF_RE.search(html)
    assert found, "the page has no CSRF field"
    return found.group(1)


@contextlib.contextmanager
def logged_in_client(reg: Registry, key: str) -> Iterator[TestClient[Any]]:
    """A TestClient on the real app over ``reg``, logged in to the UI with ``key``."""
    with TestClient(create_app(reg, ApiSettings())) as client:
        log_in(client, key)
        yield client


def log_in(client: TestClient[Any], key: str) -> str:
    """Log in through the form; the new session's CSRF token."""
    token = csrf_of(client.get("/ui/login").text)
    r = client.post("/ui/login", data={"csrf_token": token, "api_key": key}, follow_redirects=False)
    assert r.status_code == 303, r.text
    page = client.get("/ui")
    assert page.status_code == 200
    fresh = csrf_of(page.text)
    assert fresh != token  # rotated at login
    return fresh


def snapshot(reg: Registry) -> tuple[Any, ...]:
    """Everything a UI form could change."""
    return (
        [(a.id, a.name, a.stored) for a in reg.list_adapters(limit=1000)],
        [g.id for g in reg.list_generators()],
        [(j.id, j.state) for j in reg.list_jobs()],
        [(k.id, k.revoked_at) for k in reg.list_api_keys()],
    )


def forms(world: dict[str, Any]) -> list[tuple[str, dict[str, str], dict[str, Any] | None]]:
    """Every state-changing UI route with a valid body."""
    return [
        ("/ui/upload", {"description": "A pirate translator", "base_model": world["base"]},
         {"file": ("a.zip", world["zip"], "application/zip")}),
        ("/ui/generate", {"description": "Is it about the moon?", "base_model": world["base"],
                          "method": "sg-lora"}, None),
        (f"/ui/adapters/{world['adapter']}/delete", {"confirm": "yes"}, None),
        (f"/ui/adapters/{world['adapter']}/materialise", {}, None),
        ("/ui/generators", {"base_model": world["base"], "method": "sg-lora", "steps": "3"}, None),
        (f"/ui/jobs/{world['job']}/cancel", {}, None),
    ]  # fmt: skip


def post(client: TestClient[Any], url: str, data: dict[str, str], files: Any) -> Any:
    return client.post(url, data=data, files=files, follow_redirects=False)


def test_no_session_changes_nothing(client: TestClient[Any], world: dict[str, Any]) -> None:
    reg: Registry = world["registry"]
    before = snapshot(reg)
    for url, data, files in forms(world):
        r = post(client, url, data, files)
        assert r.status_code == 401, (url, r.status_code)
        assert "not logged in" in r.text and "text/html" in r.headers["content-type"]
        # a forged session cookie is no session
        client.cookies.set("loramint_session", "bm90IGEgc2Vzc2lvbg==", path="/ui")
        assert post(client, url, data, files).status_code == 401
        client.cookies.clear()
    assert client.post("/ui/logout", follow_redirects=False).status_code == 403
    assert snapshot(reg) == before


@pytest.mark.parametrize("how", ["missing", "wrong", "another session's", "reader"])
def test_bad_csrf_or_role_changes_nothing(world: dict[str, Any], how: str) -> None:
    reg: Registry = world["registry"]
    app = create_app(reg, ApiSettings())
    with TestClient(app) as c, TestClient(app) as other:
        token = log_in(c, world["reader" if how == "reader" else "admin"])
        sent = {
            "missing": None,
            "wrong": token[:-2] + "xx",
            "another session's": log_in(other, world["admin"]),
            "reader": token,
        }[how]
        before = snapshot(reg)
        for url, data, files in forms(world):
            body = data if sent is None else data | {"csrf_token": sent}
            r = post(c, url, body, files)
            assert r.status_code == 403, (url, r.status_code, r.text[:300])
            expected = "needs an admin key" if how == "reader" else "did not come from this site"
            assert expected in r.text
        assert snapshot(reg) == before
        if how != "reader":  # a logout with a bad token does not end the session either
            post(c, "/ui/logout", {} if sent is None else {"csrf_token": sent}, None)
            assert c.get("/ui/upload", follow_redirects=False).status_code == 200


def test_the_same_requests_done_right_do_change_the_registry(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """The control for the two tests above: with an admin session and its token, the
    delete and the cancel they sent go through."""
    reg: Registry = world["registry"]
    extra = reg.add_adapter(
        make_lora(Path(world["base"]), tmp_path / "x", seed=5), base_model=world["base"],
        description="Delete me later",
    )  # fmt: skip
    job = reg.submit_job("train-generator", {"base_model": world["base"], "steps": 3})
    with TestClient(create_app(reg, ApiSettings())) as c:
        token = log_in(c, world["admin"])
        r = post(
            c, f"/ui/adapters/{extra.id}/delete", {"confirm": "yes", "csrf_token": token}, None
        )
        assert r.status_code == 303 and r.headers["location"] == "/ui/adapters"
        assert extra.id not in [a.id for a in reg.list_adapters(limit=1000)]
        r = post(c, f"/ui/jobs/{job.id}/cancel", {"csrf_token": token}, None)
        assert r.status_code == 303 and reg.get_job(job.id).state == "cancelled"
        unconfirmed = post(
            c, f"/ui/adapters/{world['adapter']}/delete", {"csrf_token": token}, None
        )
        assert unconfirmed.status_code == 400 and "Tick the box" in unconfirmed.text
        assert post(c, "/ui/logout", {"csrf_token": token}, None).status_code == 303
        assert c.get("/ui/upload", follow_redirects=False).status_code == 303


def test_pages_need_a_login_and_the_cookie_is_locked_down(
    client: TestClient[Any], world: dict[str, Any]
) -> None:
    r = client.get("/ui/adapters?q=moon", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/ui/login?next=%2Fui%2Fadapters%3Fq%3Dmoon"
    assert client.get("/", follow_redirects=False).headers["location"] == "/ui"
    login = client.get("/ui/login")
    assert "Content-Security-Policy" in login.headers
    cookie = login.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/ui" in cookie
    token = csrf_of(login.text)
    bad = client.post("/ui/login", data={"csrf_token": token, "api_key": "lm_nope"})
    assert bad.status_code == 401 and "not valid or has been revoked" in bad.text
    empty = client.post("/ui/login", data={"csrf_token": token, "api_key": " "})
    assert empty.status_code == 400 and "Enter an API key" in empty.text
    # an open redirect after login is refused
    r = client.post(
        "/ui/login",
        data={"csrf_token": token, "api_key": world["reader"], "next": "//evil.example/ui"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/ui"
    # the reader sees pages but no write controls
    for url in ("/ui", "/ui/adapters", f"/ui/adapters/{world['adapter']}", "/ui/generators"):
        html = client.get(url).text
        assert 'action="/ui/upload"' not in html and "/delete" not in html
        assert 'href="/ui/generate"' not in html and 'action="/ui/generators"' not in html
    assert client.get("/ui/upload", follow_redirects=False).status_code == 403


def test_a_revoked_key_ends_its_sessions(world: dict[str, Any], tmp_path: Path) -> None:
    reg: Registry = world["registry"]
    record, secret = reg.create_api_key("short-lived", "admin")
    app = create_app(reg, ApiSettings())
    with TestClient(app) as c:
        log_in(c, secret)
        assert c.get("/ui/upload").status_code == 200
        reg.revoke_api_key(record.id)
        assert c.get("/ui/upload", follow_redirects=False).status_code == 303  # at once


def test_logging_out_ends_the_session_on_the_server(world: dict[str, Any]) -> None:
    """A copy of the session cookie taken before logging out logs nobody in afterwards."""
    reg: Registry = world["registry"]
    with TestClient(create_app(reg, ApiSettings())) as c:
        token = log_in(c, world["admin"])
        copied = dict(c.cookies)
        assert post(c, "/ui/logout", {"csrf_token": token}, None).status_code == 303
    with TestClient(create_app(reg, ApiSettings())) as thief:
        thief.cookies.update(copied)
        assert thief.get("/ui/upload", follow_redirects=False).status_code == 303
        assert "Log in" in thief.get("/ui").text
    with TestClient(create_app(reg, ApiSettings())) as c:  # the key itself still works
        log_in(c, world["admin"])
        assert c.get("/ui/upload").status_code == 200


def test_open_mode_shows_pages_but_writes_still_need_an_admin(world: dict[str, Any]) -> None:
    reg: Registry = world["registry"]
    before = snapshot(reg)
    with TestClient(create_app(reg, ApiSettings(open_access=True))) as c:
        page = c.get("/ui/adapters")
        assert page.status_code == 200 and "Open mode" in page.text
        assert c.get("/ui/upload", follow_redirects=False).status_code == 303
        token = csrf_of(c.get("/ui/login").text)
        for url, data, files in forms(world):
            assert post(c, url, data | {"csrf_token": token}, files).status_code == 401
    assert snapshot(reg) == before


def test_the_json_api_is_untouched(client: TestClient[Any], world: dict[str, Any]) -> None:
    """Bearer requests need no CSRF token and never get a session cookie."""
    r = client.post(
        "/v1/generators",
        json={"base_model": "no/such-model", "steps": 3},
        headers={"Authorization": f"Bearer {world['admin']}"},
    )
    assert r.status_code == 404 and r.json()["status_code"] == 404 and "set-cookie" not in r.headers
    paths = client.get("/schema/openapi.json").json()["paths"]
    assert paths and not [p for p in paths if p == "/" or p.startswith("/ui")]


def test_an_oversized_upload_is_a_readable_413(world: dict[str, Any]) -> None:
    import dataclasses

    reg: Registry = world["registry"]
    small = Registry(
        dataclasses.replace(reg.settings, max_adapter_bytes=1000), embedder=reg.embedder
    )
    before = snapshot(small)
    with TestClient(create_app(small, ApiSettings())) as c:
        token = log_in(c, world["admin"])
        form = {"description": "d", "base_model": world["base"], "csrf_token": token}
        # over the adapter limit but under the request limit: the form says so
        r = post(c, "/ui/upload", form, {"file": ("a.zip", world["zip"], "application/zip")})
        assert r.status_code == 413 and "Nothing was changed" in r.text, r.text[-600:]
        # over the request limit: a page saying so, not a JSON error
        r = post(c, "/ui/upload", form, {"file": ("a.zip", b"0" * 3_000_000, "application/zip")})
        assert r.status_code == 413 and "text/html" in r.headers["content-type"]
        assert "larger than the 1,000 bytes limit" in r.text
    assert snapshot(small) == before
    small.close()


def test_session_secret_is_made_once_with_0600(tmp_path: Path) -> None:
    first = session_secret(tmp_path, UiSettings())
    path = tmp_path / "session_secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert session_secret(tmp_path, UiSettings()) == first and len(first) == 32
    assert session_secret(tmp_path, UiSettings(session_secret="x" * 40)) != first
    with pytest.raises(InvalidInput, match="at least 32"):
        UiSettings(session_secret="short")
    path.chmod(0o644)
    with pytest.raises(InvalidInput, match="chmod 600"):
        session_secret(tmp_path, UiSettings())


@pytest.mark.parametrize("url", ["/ui/adapters/abc", "/ui/keys", "/ui/generators/1", "/ui/x/y"])
def test_an_address_no_ui_route_matches_is_a_styled_404(client: TestClient[Any], url: str) -> None:
    """Not the API's JSON: the UI's own error page, for a person (with or without a login)."""
    r = client.get(url, follow_redirects=False)
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "There is no page at this address." in r.text and "<nav" in r.text
    api = client.get("/v1/nothing-here")
    assert api.status_code == 404 and api.headers["content-type"] == "application/json"


@pytest.mark.parametrize("url", ["/ui/x/y", "/ui/keys"])
def test_a_logged_in_visitor_at_an_unknown_address_can_still_log_out(
    world: dict[str, Any], url: str
) -> None:
    with logged_in_client(world["registry"], world["admin"]) as c:
        r = c.get(url, follow_redirects=False)
    assert r.status_code == 404 and "There is no page at this address." in r.text
    assert "Log out" in r.text and "ui-admin" in r.text
    assert r.headers["x-frame-options"] == "DENY"  # the UI's headers, not the API's
