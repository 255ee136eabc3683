"""`loramint generate`, `generator list` and the generators `eval generators` scores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from generator.fit.config import GeneratorConfig
from generator.fit.train import train_generator
from generator.sandbox import SandboxWorld
from registry.errors import GeneratorNotFound, InvalidInput
from registry.service import Registry
from registry.settings import Settings


def test_cli_generate_and_list(world: SandboxWorld, tmp_path: Path) -> None:
    settings: Settings = world.settings
    reg: Registry = world.registry
    if reg.latest_generator(world.base, "sg-lora") is None:
        train_generator(reg, world.base, GeneratorConfig(hidden=32, latent=4, steps=10))
    env = os.environ | {
        "LORAMINT_HOME": str(settings.home),
        "LORAMINT_DATABASE_URL": settings.database_url,
        "LORAMINT_MODEL_CACHE": str(settings.model_cache),
    }
    cli = [sys.executable, "-m", "api.cli"]
    run = subprocess.run(
        [*cli, "generate", "Does the text mention a sun?", "--base-model", world.base,
         "--seed", "3", "--out", str(tmp_path / "a"), "--json"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    payload = json.loads(run.stdout)
    assert payload["seed"] == 3 and (tmp_path / "a" / "adapter_model.safetensors").exists()
    bad = subprocess.run(
        [*cli, "generate", "x", "--base-model", world.base, "--method", "nope"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown method")
    listed = subprocess.run(
        [*cli, "generator", "list", "--json"], env=env, capture_output=True, text=True, timeout=300
    )
    assert listed.returncode == 0 and json.loads(listed.stdout)[0]["method"] in (
        "sg-lora",
        "icm-lora",
    )


def test_eval_scores_the_generators_asked_for(world: SandboxWorld) -> None:
    from api.cli_eval import chosen_generators, evaluated_generators

    reg: Registry = world.registry
    base = world.base
    a, _ = train_generator(reg, base, GeneratorConfig(hidden=32, latent=4, steps=2), name="pick-a")
    b, _ = train_generator(reg, base, GeneratorConfig(hidden=32, latent=4, steps=2), name="pick-b")
    cols = chosen_generators(reg, base, f"{a.id},{b.id}")
    assert {c: r.id for c, r in cols.items()} == {f"sg-lora#{a.id}": a.id, f"sg-lora#{b.id}": b.id}
    assert chosen_generators(reg, base, None).keys() == evaluated_generators(reg, base).keys()
    with pytest.raises(InvalidInput, match="comma-separated ids"):
        chosen_generators(reg, base, f"{a.id},b")
    with pytest.raises(InvalidInput, match="not smollm2"):
        chosen_generators(reg, "smollm2-135m-instruct", str(a.id))
    with pytest.raises(GeneratorNotFound):
        chosen_generators(reg, base, "999999")


def test_cli_multitask_baseline_and_eval_generators_report(world: SandboxWorld) -> None:
    """`loramint zoo multitask` trains and registers the baseline once; `loramint eval
    generators` scores it as a column and prints each method's share of the oracle's gain
    with its interval; a --min-gain above every task's gain is refused by name."""
    reg: Registry = world.registry
    if reg.latest_generator(world.base, "sg-lora") is None:
        train_generator(reg, world.base, GeneratorConfig(hidden=32, latent=4, steps=10))
    env = os.environ | world.environment()
    common = ["--base-model", world.base, "--suite", str(world.suite.root)]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "api.cli", *args], env=env, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip

    bad = cli("zoo", "multitask", *common, "--tasks", "moon")
    assert bad.returncode != 0 and "held out" in bad.stderr
    trained = cli("zoo", "multitask", *common, "--steps-per-task", "1")
    assert trained.returncode == 0, trained.stderr
    assert "baseline-multitask" in trained.stdout and "5 tasks, 5 steps" in trained.stdout
    again = cli("zoo", "multitask", *common)
    assert again.returncode == 0 and "already registered" in again.stdout
    bad_name = cli("zoo", "multitask", *common, "--name", "two words")
    assert bad_name.returncode != 0 and "adapter name 'two words'" in bad_name.stderr
    named = cli("zoo", "multitask", *common, "--steps-per-task", "1", "--name", "mt-part")
    assert named.returncode == 0, named.stderr
    assert "(mt-part, 5 tasks, 5 steps" in named.stdout
    part = reg.find_adapter(world.base, "mt-part")
    assert part is not None and part.meta["baseline"] == "multi-task"
    reg.delete_adapter(part.id)  # the module's other tests see the registry as it was
    run = cli("eval", "generators", *common)
    assert run.returncode == 0, run.stderr
    assert "| multi-task |" in run.stdout and "share of its gain" in run.stdout
    assert "sg-lora - nearest" in run.stdout and "sg-lora - multi-task" in run.stdout
    strict = cli("eval", "generators", *common, "--min-gain", "0.9")
    assert strict.returncode != 0 and "moon dropped" in strict.stderr
    zero = cli("eval", "generators", *common, "--min-gain", "0")
    assert zero.returncode != 0 and "--min-gain must be in (0, 1]" in zero.stderr


def test_cli_materialise_generator_delete_and_gc(world: SandboxWorld) -> None:
    """`adapters materialise`, `generator delete [--materialise]` and `gc [--apply]`,
    with the errors a user meets on the way."""
    from generator.serve.generate import generate_adapters
    from generator.serve.generator import Request

    reg: Registry = world.registry
    gen, _ = train_generator(
        reg, world.base, GeneratorConfig(hidden=32, latent=4, steps=10), name="cli-recipes"
    )
    made = generate_adapters(
        reg, [Request(f"Is a {w} named? Answer yes or no.") for w in ("cat", "dog")],
        base_model=world.base, method="sg-lora", generator_id=gen.id,
    )  # fmt: skip
    first, second = (r.id for r, _ in made)
    env = os.environ | world.environment()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "api.cli", *args],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    done = cli("adapters", "materialise", str(first))
    assert done.returncode == 0 and "bytes stored" in done.stdout, done.stderr
    assert json.loads(cli("adapters", "show", str(first), "--json").stdout)["stored"] == "weights"
    missing = cli("adapters", "materialise", "999999")
    assert missing.returncode == 3 and missing.stderr.startswith("error: no adapter")

    refused = cli("generator", "delete", str(gen.id), "--yes")
    assert refused.returncode == 2 and f"ids {second}" in refused.stderr
    assert reg.get_generator(gen.id).id == gen.id
    deleted = cli("generator", "delete", str(gen.id), "--yes", "--materialise")
    assert deleted.returncode == 0, deleted.stderr
    assert reg.get_adapter(second).stored == "weights"

    orphan = reg.blobs.put(b"written by an upload that was killed before its commit")
    report = cli("gc", "--json")
    assert report.returncode == 0 and orphan in json.loads(report.stdout)["orphans"]
    assert reg.blobs.exists(orphan)  # without --apply nothing changes
    applied = cli("gc", "--apply")
    assert applied.returncode == 0 and "orphans" in applied.stdout
    assert not reg.blobs.exists(orphan)


def test_eval_records_the_accuracy_the_adapter_page_and_card_show(world: SandboxWorld) -> None:
    """`loramint eval --adapter ID --task T` prints both accuracies and records them: the
    admin UI's quality panel and the model card read them back."""
    from registry.model_card import measurements

    reg: Registry = world.registry
    target = reg.find_adapter(world.base, "zoo-cat")
    assert target is not None
    run = subprocess.run(
        [sys.executable, "-m", "api.cli", "eval", "--adapter", str(target.id), "--task", "cat",
         "--suite", str(world.suite.root), "--json"],
        env=os.environ | world.environment(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)
    rec = reg.get_adapter(target.id)
    assert rec.metrics["accuracy"] == round(printed["accuracy"], 4)
    assert rec.metrics["base_accuracy"] == round(printed["base_accuracy"], 4)
    assert rec.metrics["eval_task"] == "cat"
    [measured] = measurements(rec)
    assert measured.bare == rec.metrics["base_accuracy"] and "test split" in measured.where
    assert f"{rec.metrics['accuracy']:.3f}" in reg.model_card(target.id)


def test_cli_eval_fewshot_writes_its_table_and_names_what_it_skipped(world: SandboxWorld) -> None:
    """`loramint eval fewshot` on the sandbox: the held-out task scored (one draw of two
    examples, selection only), its table printed and written beside the cells; without
    ``--tasks``, a held-out task whose oracle gains too little is skipped, saying so."""
    settings: Settings = world.settings
    reg: Registry = world.registry
    if reg.latest_generator(world.base, "sg-lora") is None:
        train_generator(reg, world.base, GeneratorConfig(hidden=32, latent=4, steps=10))
    env = os.environ | settings.environment()
    cli = [sys.executable, "-m", "api.cli", "eval", "fewshot", "--base-model", world.base,
           "--suite", str(world.suite.root), "--ks", "2", "--draws", "1", "--methods", "selection"]  # fmt: skip
    run = subprocess.run(
        [*cli, "--tasks", "moon"], env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stderr
    assert "**k = 2**" in run.stdout and "| selection |" in run.stdout
    results = settings.home / "results" / f"fewshot-{world.base.replace('/', '_')}.json"
    assert results.with_suffix(".md").read_text() in run.stdout
    strict = subprocess.run(
        [*cli, "--min-gain", "2"], env=env, capture_output=True, text=True, timeout=600
    )
    assert strict.returncode != 0 and "skipped moon: oracle gain" in strict.stderr
    assert "no tasks to evaluate" in strict.stderr
