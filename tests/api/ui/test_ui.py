"""The admin UI in a real browser: Debian's Chromium driven by Playwright against the real
server (``loramint serve``, with its job worker) on a free loopback port, over a tiny
random-weight zoo with a trained generator.

An admin logs in, uploads a PEFT zip, finds it by a paraphrase, generates an adapter,
downloads it, deletes one, sees a bad upload rejected with a readable message and
watches a training job finish live; a reader sees no write controls; every page fits a
phone-width screen, labels every control and works from the keyboard. Screenshots of
every page go to ``$LORAMINT_TEST_OUTPUT/ui-screenshots`` (else the test's tmp dir).
Playwright never downloads a browser: it launches /usr/bin/chromium (``make test``
installs the Debian package); without it these tests are skipped, saying so.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from generator.fit.config import GeneratorConfig
from generator.fit.train import train_generator
from generator.sandbox import build_world
from registry.embeddings import MiniLMEmbedder
from registry.settings import Settings, ToolSettings
from tests.conftest import make_lora
from tests.worlds import FAST, live_server, server_env

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="the browser tests need Debian's Chromium at /usr/bin/chromium "
    "(`apt-get install chromium`; `make test` installs it)",
)
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
PIRATE = "Translate pirate speak into plain English"
MOON = "Does the text mention the moon? Answer yes or no."


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_base: Path,
    tiny_gemma: Path,
    embedder: MiniLMEmbedder,
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("ui")
    world = build_world(root, embedder=embedder, base=tiny_base)
    reg = world.registry
    train_generator(reg, world.base, GeneratorConfig(hidden=32, latent=4, steps=10))
    # an adapter measured on the held-out task, to compare with that task's oracle
    oracle = reg.find_adapter(world.base, "zoo-moon")
    assert oracle is not None and oracle.metrics.get("base_accuracy") is not None
    bare = oracle.metrics["base_accuracy"]
    candidate = reg.add_adapter(
        make_lora(tiny_base, root / "candidate", seed=5), base_model=world.base,
        description="Is the moon in this text?", name="moon-candidate",
        metrics={"accuracy": (bare + oracle.metrics["accuracy"]) / 2, "base_accuracy": bare,
                 "eval_task": "moon", "eval_n": 8},
    )  # fmt: skip
    # the held-out evaluation the generators page charts, by the real command
    evaluated = subprocess.run(
        [sys.executable, "-m", "api.cli", "eval", "generators", "--base-model", world.base,
         "--suite", str(world.suite.root), "--device", "cpu"],
        env=os.environ | world.environment(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    # a job for the worker to finish at start-up, so the jobs pages have one to show
    first_job = reg.submit_job(
        "train-generator", {"base_model": world.base, "config": {"steps": 3}}
    )
    admin = reg.create_api_key("ui-admin", "admin")[1]
    reader = reg.create_api_key("ui-reader", "reader")[1]
    reg.close()
    settings: Settings = world.settings
    env = server_env(settings)
    env.pop("LORAMINT_SESSION_SECRET", None)  # the server makes and keeps its own
    with live_server(env, root / "server.log") as url:
        lora = make_lora(tiny_base, root / "pirate", seed=11)
        yield {
            "url": url, "admin": admin, "reader": reader, "base": world.base,
            "root": root, "lora": lora, "job": first_job.id, "home": settings.home,
            "gemma": str(tiny_gemma), "oracle": oracle.id, "candidate": candidate.id,
        }  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(server: dict[str, Any]) -> Path:
    out = (ToolSettings.from_env().test_output or Path(server["root"])) / "ui-screenshots"
    out.mkdir(parents=True, exist_ok=True)
    return out


# What each page shows as (state, stage), noted at load and at each change, kept in
# sessionStorage across the job page's reloads.
WATCH_STAGES = """addEventListener("DOMContentLoaded", () => {
  const text = (f) => (document.querySelector(`[data-field=${f}]`) || {}).textContent || "";
  const note = () => {
    const shown = JSON.parse(sessionStorage.getItem("stagesShown") || "[]");
    shown.push([text("state").trim(), text("stage").trim()]);
    sessionStorage.setItem("stagesShown", JSON.stringify(shown));
  };
  note();
  new MutationObserver(note).observe(document.body,
    {subtree: true, childList: true, characterData: true});
});"""


def new_page(browser: Any, server: dict[str, Any], viewport: dict[str, int]) -> Any:
    context = browser.new_context(base_url=server["url"], viewport=viewport, accept_downloads=True)
    context.set_default_timeout(30_000)
    return context.new_page()


def shoot(page: Any, shots: Path, name: str) -> None:
    width = page.viewport_size["width"]
    page.screenshot(path=str(shots / f"{width}px-{name}.png"), full_page=True)


def log_in(page: Any, key: str) -> None:
    page.goto("/ui/login")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/ui$"))


def alert_text(page: Any) -> str:
    return str(page.get_by_role("alert").first.inner_text())


def zip_of(folder: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w") as z:
        for f in folder.iterdir():
            z.write(f, f.name)
    return out


def adapter_total(server: dict[str, Any]) -> int:
    r = httpx.get(
        f"{server['url']}/v1/adapters",
        params={"limit": 1},
        headers={"Authorization": f"Bearer {server['admin']}"},
    )
    return int(r.json()["total"])


def test_admin_uploads_finds_generates_downloads_deletes(
    server: dict[str, Any], browser: Any, shots: Path, tmp_path: Path
) -> None:
    page = new_page(browser, server, DESKTOP)
    page.goto("/ui")
    page.wait_for_url(re.compile(r"/ui/login\?next=%2Fui$"))
    shoot(page, shots, "login")
    page.get_by_label("API key").fill("lm_not-a-real-key")
    page.get_by_role("button", name="Log in").click()
    assert "not valid or has been revoked" in alert_text(page)
    shoot(page, shots, "login-error")
    log_in(page, server["admin"])
    assert page.get_by_role("heading", level=1).inner_text() == "Dashboard"
    shoot(page, shots, "dashboard")

    # upload a PEFT zip
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Upload").click()
    page.get_by_label("Task description").fill(PIRATE)
    page.get_by_label("Base model").fill(server["base"])
    page.get_by_label("Name (optional)").fill("pirate-translator")
    page.get_by_label("PEFT zip").set_input_files(str(zip_of(server["lora"], tmp_path / "p.zip")))
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"input": "Ahoy, matey!", "output": "Hello, friend!"}\n')
    page.get_by_label("Seed examples (optional)").set_input_files(str(seeds))
    shoot(page, shots, "upload")
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url(re.compile(r"/ui/adapters/\d+$"))
    pirate_url = page.url
    kept = httpx.get(
        f"{server['url']}/v1/adapters/{pirate_url.rsplit('/', 1)[1]}",
        headers={"Authorization": f"Bearer {server['admin']}"},
    ).json()
    assert "seeds.jsonl" in kept["artifacts"], kept  # it can be transferred later
    assert page.get_by_role("heading", level=1).inner_text() == "pirate-translator"
    assert "Uploaded adapter pirate-translator" in page.get_by_role("status").inner_text()
    # tiny Llama: 2 layers x (q_proj, v_proj), one bar each, of positive height
    heights = page.locator("figure.chart rect.bar").evaluate_all(
        "bars => bars.map(b => parseFloat(b.getAttribute('height')))"
    )
    assert len(heights) == 4 and all(h > 0 for h in heights)
    shoot(page, shots, "adapter")

    # a bad upload is refused with a readable message, and nothing is stored
    before = adapter_total(server)
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is not a zip file at all")
    page.goto("/ui/upload")
    page.get_by_label("Task description").fill("A broken adapter")
    page.get_by_label("Base model").fill(server["base"])
    page.get_by_label("PEFT zip").set_input_files(str(junk))
    page.get_by_role("button", name="Upload").click()
    message = alert_text(page)
    assert "Nothing was changed" in message and "zip" in message.lower(), message
    assert page.get_by_label("Task description").input_value() == "A broken adapter"
    assert adapter_total(server) == before
    shoot(page, shots, "upload-error")

    # find it by a paraphrase
    page.goto("/ui/adapters")
    shoot(page, shots, "adapters")
    page.get_by_label("Search by meaning").fill("decode what a pirate says")
    page.get_by_role("button", name="Search").click()
    first = page.locator("table.adapters tbody tr").first
    assert first.get_by_role("link").inner_text() == "pirate-translator"
    shoot(page, shots, "search")

    # generate an adapter; its neighbours and weights are shown; download it
    page.get_by_role("link", name="Generate").click()
    page.get_by_label("Task description").fill(MOON)
    page.get_by_label("Method").select_option("sg-lora")
    page.get_by_role("button", name="Generate").click()
    result = page.locator("section.result")
    assert result.get_by_role("heading", level=2).inner_text().startswith("Generated:")
    weights = result.locator("table.neighbours meter").evaluate_all("ms => ms.map(m => m.value)")
    assert weights and abs(sum(weights) - 1) < 1e-3, weights
    shoot(page, shots, "generate")
    with page.expect_download() as download:
        result.get_by_role("link", name="Download PEFT zip").click()
    saved = tmp_path / "generated.zip"
    download.value.save_as(saved)
    assert sorted(zipfile.ZipFile(saved).namelist()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    result.get_by_role("heading", level=2).get_by_role("link").click()
    assert "Generated by generator" in page.get_by_role("region", name="Lineage").inner_text()
    facts = page.get_by_role("region", name="Adapter", exact=True)
    assert "as a recipe" in facts.inner_text()
    shoot(page, shots, "generated-adapter")
    # keep its weights: the download does not change
    page.get_by_role("button", name="Store the weights").click()
    assert "Stored the weights" in page.get_by_role("status").inner_text()
    assert "as a recipe" not in page.get_by_role("region", name="Adapter", exact=True).inner_text()
    with page.expect_download() as again:
        page.get_by_role("link", name="Download PEFT zip").click()
    again.value.save_as(tmp_path / "stored.zip")
    assert (tmp_path / "stored.zip").read_bytes() == saved.read_bytes()
    generated_name = page.get_by_role("heading", level=1).inner_text()

    # lineage the other way: the first expert lists it, and its delete form warns
    lineage = page.get_by_role("region", name="Lineage")
    lineage.get_by_role("table").get_by_role("link").first.click()
    built = page.get_by_role("table", name="Adapters built from this one")
    assert generated_name in built.inner_text()
    assert "Expert of generator" in page.get_by_role("region", name="Lineage").inner_text()
    warning = page.get_by_role("note")
    assert "built from this one" in warning.inner_text()
    # the zoo evaluated it: its quality panel compares it with the bare model
    quality = page.get_by_role("table", name="Measured quality")
    assert "test split" in quality.inner_text()
    assert quality.get_by_role("meter").count() == 2
    shoot(page, shots, "expert-lineage")
    page.goto("/ui/adapters")
    assert "Accuracy" in page.get_by_role("table").first.inner_text()
    # a favicon of its own (nothing fetched from elsewhere) and the way to the REST API
    icon = page.locator("link[rel=icon]").get_attribute("href")
    assert icon == "/ui/static/favicon.svg" and page.request.get(icon).status == 200
    api_docs = page.get_by_role("contentinfo").get_by_role("link", name="its OpenAPI document")
    assert api_docs.get_attribute("href") == "/schema/openapi.json"

    # delete the uploaded one
    page.goto(pirate_url)
    page.get_by_role("button", name="Delete adapter").click()  # the box is not ticked
    assert page.url == pirate_url  # the browser's own check held it back
    page.get_by_label(re.compile("Yes, delete pirate-translator")).check()
    page.get_by_role("button", name="Delete adapter").click()
    page.wait_for_url(re.compile(r"/ui/adapters$"))
    assert "Deleted adapter pirate-translator" in page.get_by_role("status").inner_text()
    assert page.goto(pirate_url).status == 404
    assert "no adapter with id" in alert_text(page)
    shoot(page, shots, "deleted")

    # train a generator as a job and watch it finish live
    page.goto("/ui/generators")
    shoot(page, shots, "generators")
    page.get_by_label("Steps").fill("abc")
    page.get_by_role("button", name="Start training").click()
    assert "steps must be a whole number" in alert_text(page)
    page.get_by_label("Steps").fill("4")
    page.get_by_label("Similarity gate (optional)").fill("-1")
    page.get_by_role("button", name="Start training").click()
    assert "gate must be non-negative" in alert_text(page)
    page.get_by_label("Similarity gate (optional)").fill("")
    page.get_by_label("Name (optional)").fill("from-the-ui")
    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if r.url.endswith("/status") else None)
    page.get_by_role("button", name="Start training").click()
    page.wait_for_url(re.compile(r"/ui/jobs/\d+$"))
    badge = page.locator("[data-field=state]")
    shown_first = badge.inner_text()
    badge.filter(has_text="succeeded").wait_for(timeout=90_000)
    if shown_first != "succeeded":  # it was queued or running: the page polled for it
        assert polls, "the job page did not poll its status"
    assert page.locator("progress[data-field=progress]").evaluate("p => p.value") == 1
    assert page.get_by_role("link", name="The generator it trained").is_visible()
    assert re.search(r"step (\d+)/\1, loss \d", page.locator("[data-field=live]").inner_text())
    shoot(page, shots, "job")
    page.goto("/ui/jobs")
    shoot(page, shots, "jobs")

    # pin the first generator: it serves sg-lora, newer ones or not, until unpinned
    page.goto("/ui/generators")
    newest = page.locator("tr", has_text="from-the-ui")
    assert "yes, newest" in newest.inner_text()
    first = page.locator("#generator-1")
    first.get_by_role("button", name=re.compile("^Pin ")).click()
    page.wait_for_url(re.compile(r"/ui/generators"))
    assert "now serves sg-lora" in page.get_by_role("status").inner_text()
    assert "yes, pinned" in page.locator("#generator-1").inner_text()
    assert "yes," not in page.locator("tr", has_text="from-the-ui").inner_text()
    shoot(page, shots, "generator-pinned")
    page.locator("#generator-1").get_by_role("button", name=re.compile("^Unpin ")).click()
    page.wait_for_url(re.compile(r"/ui/generators"))
    assert "Unpinned" in page.get_by_role("status").inner_text()
    assert "yes, newest" in page.locator("tr", has_text="from-the-ui").inner_text()

    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(re.compile(r"/ui/login$"))
    page.goto("/ui/upload")
    page.wait_for_url(re.compile(r"/ui/login\?next="))
    page.context.close()


def test_reader_sees_no_write_controls(server: dict[str, Any], browser: Any, shots: Path) -> None:
    page = new_page(browser, server, DESKTOP)
    log_in(page, server["reader"])
    nav = page.get_by_role("navigation", name="Main")
    assert nav.get_by_role("link", name="Adapters").is_visible()
    assert nav.get_by_role("link", name="Upload").count() == 0
    assert nav.get_by_role("link", name="Generate").count() == 0
    assert "read-only" in page.locator("main").inner_text()
    for url in ("/ui/adapters/1", "/ui/generators", f"/ui/jobs/{server['job']}"):
        page.goto(url)
        assert page.locator("main form[method=post]").count() == 0, url
    shoot(page, shots, "reader-adapter")
    response = page.goto("/ui/upload")
    assert response.status == 403 and "needs an admin key" in alert_text(page)
    page.context.close()


UNLABELLED = """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
    .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                 && !(e.tagName === 'BUTTON' && e.innerText.trim()))
    .map(e => e.outerHTML)"""


def test_every_page_fits_a_phone_labels_controls_and_works_by_keyboard(
    server: dict[str, Any], browser: Any, shots: Path
) -> None:
    page = new_page(browser, server, PHONE)
    # keyboard only: skip link first, then the key field; Enter submits
    page.goto("/ui/login")
    shoot(page, shots, "login")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "api_key"
    page.keyboard.type(server["admin"])
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/ui$"))
    pages = {
        "dashboard": "/ui",
        "adapters": "/ui/adapters?q=moon",
        "adapter": "/ui/adapters/1",
        "upload": "/ui/upload",
        "generate": "/ui/generate",
        "generators": "/ui/generators",
        "jobs": "/ui/jobs",
        "job": f"/ui/jobs/{server['job']}",
        "compare": f"/ui/compare?ids={server['candidate']},{server['oracle']},1",
        "map": "/ui/map",
        "not-found": "/ui/keys",
        "error": "/ui/adapters/999999",
    }
    for name, url in pages.items():
        page.goto(url)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{url} is {overflow}px wider than a phone screen"
        assert page.evaluate(UNLABELLED) == [], url
        shoot(page, shots, name)
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(re.compile(r"/ui/login$"))
    assert page.evaluate(UNLABELLED) == []
    page.context.close()


def test_compare_sort_and_a_transfer_watched_live(
    server: dict[str, Any], browser: Any, shots: Path
) -> None:
    """Adapters sorted by accuracy, two ticked and compared on a task beside the bare
    model and the oracle; then a transfer started from an adapter's page, its job page
    followed live to the adapter it made."""
    for viewport in (DESKTOP, PHONE):
        page = new_page(browser, server, viewport)
        log_in(page, server["admin"])
        page.goto("/ui/adapters")
        accuracy = page.get_by_role("columnheader", name=re.compile("^Accuracy"))
        accuracy.get_by_role("link").click()
        page.wait_for_url(re.compile(r"sort=accuracy&order=asc"))
        page.get_by_role("columnheader", name=re.compile("^Accuracy")).get_by_role("link").click()
        page.wait_for_url(re.compile(r"sort=accuracy&order=desc"))
        header = page.get_by_role("columnheader", name=re.compile("^Accuracy"))
        assert header.get_attribute("aria-sort") == "descending"
        shown = page.locator("table.adapters tbody tr td:nth-child(6)").all_inner_texts()
        measured = [float(t.split()[0]) for t in shown if t.strip() not in ("", "–")]
        assert measured and measured == sorted(measured, reverse=True), shown
        shoot(page, shots, "adapters-sorted")
        page.get_by_label("Compare moon-candidate").check()
        page.get_by_label("Compare zoo-moon").check()
        page.get_by_role("button", name="Compare ticked adapters").click()
        page.wait_for_url(re.compile(r"/ui/compare\?"))
        assert page.get_by_role("heading", level=1).inner_text() == "Compare adapters"
        bars = page.locator("figure.accuracy rect.bar")
        kinds = bars.evaluate_all("bs => bs.map(b => b.classList[1])")
        assert kinds == ["bare", "adapter", "oracle"], kinds
        side = page.get_by_role("table", name="The adapters side by side")
        assert "moon-candidate" in side.inner_text() and "zoo-moon" in side.inner_text()
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the compare view is {overflow}px wider than the screen"
        shoot(page, shots, "compare")
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Map").click()
        for figure in ("Description space", "Weight space"):
            plot = page.get_by_role("img", name=re.compile(figure))
            assert plot.locator("circle").count() >= 3, figure
        shoot(page, shots, "map")
        page.goto("/ui/generators")
        heldout = page.get_by_role("region", name="Held-out tasks")
        chart = heldout.get_by_role("img", name=re.compile("^Mean accuracy over 1 held-out task,"))
        kinds = chart.locator("rect.bar").evaluate_all("bs => bs.map(b => b.classList[1])")
        assert kinds[0] == "bare" and kinds[-1] == "oracle" and "method" in kinds, kinds
        shoot(page, shots, "generators-heldout")
        page.context.close()

    page = new_page(browser, server, DESKTOP)
    log_in(page, server["admin"])
    page.goto(f"/ui/adapters/{server['oracle']}")
    page.get_by_label("Target base model").fill(server["gemma"])
    page.get_by_label("Synthetic samples").fill("4")
    # long enough (a few seconds) that the page, polling each second, sees it run
    slow = FAST | {"distill_steps": 150}
    settings = "\n".join(f"{k}={v}" for k, v in slow.items() if k != "samples")
    page.get_by_label(re.compile("^Other settings")).fill(settings)
    page.add_init_script(WATCH_STAGES)
    page.get_by_role("button", name="Start transfer").click()
    page.wait_for_url(re.compile(r"/ui/jobs/\d+$"))
    assert "Queued the transfer" in page.get_by_role("status").inner_text()
    shoot(page, shots, "transfer-job-running")
    page.locator("[data-field=state]").filter(has_text="succeeded").wait_for(timeout=180_000)
    shown = page.evaluate("() => JSON.parse(sessionStorage.getItem('stagesShown') || '[]')")
    live = [stage for state, stage in shown if stage and state != "succeeded"]
    assert live, f"the job page showed no stage while the transfer ran: {shown}"
    assert page.locator("progress[data-field=progress]").evaluate("p => p.value") == 1
    shoot(page, shots, "transfer-job-done")
    page.get_by_role("link", name="The adapter it made").click()
    lineage = page.get_by_role("region", name="Lineage")
    assert "zoo-moon" in lineage.inner_text()
    assert "transferred" in page.get_by_role("region", name="Adapter", exact=True).inner_text()
    shoot(page, shots, "transferred-adapter")
    page.context.close()


def test_session_secret_is_private(server: dict[str, Any]) -> None:
    secret = Path(server["home"]) / "session_secret"
    assert secret.exists() and secret.stat().st_mode & 0o077 == 0
