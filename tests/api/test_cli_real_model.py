"""End to end through the real ``loramint`` command on the real SmolLM2-135M.

The base model is converted from its PyPI GGUF into a fresh cache by two
``models prepare`` processes started together: the file lock must make exactly
one of them convert.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.slow

BASE = "smollm2-135m-instruct"
CLI = [sys.executable, "-m", "api.cli"]


class Cli:
    def __init__(self, home: Path, cache: Path) -> None:
        self.env = {
            **os.environ,
            "LORAMINT_HOME": str(home),
            "LORAMINT_MODEL_CACHE": str(cache),
            "LORAMINT_DATABASE_URL": f"sqlite:///{home / 'registry.db'}",
        }
        self.env.pop("LORAMINT_ALLOW_HUB", None)

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*CLI, *args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*CLI, *args], env=self.env, capture_output=True, text=True, timeout=600
        )
        if ok:
            assert proc.returncode == 0, proc.stderr
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)


@pytest.fixture(scope="module")
def cli(smollm2_cache: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return Cli(tmp_path_factory.mktemp("cli") / "home", smollm2_cache["cache"])


def test_concurrent_prepare_converts_once(smollm2_cache: dict[str, Any]) -> None:
    for code, _out, errs in smollm2_cache["results"]:
        assert code == 0, errs
    conversions = sum(errs.count("converting") for _, _, errs in smollm2_cache["results"])
    assert conversions == 1, "the lock must let exactly one process convert the GGUF"
    assert (smollm2_cache["cache"] / BASE / "config.json").is_file()


@pytest.fixture(scope="module")
def base_path(cli: Cli) -> Path:
    return Path(cli.env["LORAMINT_MODEL_CACHE"]) / BASE


def _load_base(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.eval()


DISTRACTORS = {
    "python": "Write a Python function from a docstring.",
    "summarise": "Summarise a long news article in two sentences.",
    "math": "Solve grade-school arithmetic word problems step by step.",
    "toxicity": "Flag comments that contain insults or hate speech.",
}
TARGET = "Classify the sentiment of a product review as positive or negative."
PARAPHRASE = "tell whether a customer's opinion of an item is favourable or unfavourable"


def test_round_trip_through_the_cli(cli: Cli, base_path: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    original = get_peft_model(
        _load_base(base_path),
        LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        ),
    ).eval()
    target_dir = tmp_path / "target"
    original.save_pretrained(str(target_dir))

    ids = {}
    for i, (name, description) in enumerate(DISTRACTORS.items()):
        d = tmp_path / name
        d.mkdir()
        (d / "adapter_config.json").write_bytes((target_dir / "adapter_config.json").read_bytes())
        g = torch.Generator().manual_seed(i + 1)
        weights = {
            k: torch.randn(v.shape, generator=g) * 0.01
            for k, v in load_file(target_dir / "adapter_model.safetensors").items()
        }
        save_file(weights, d / "adapter_model.safetensors")
        ids[name] = cli.json(
            "adapters",
            "add",
            str(d),
            "--base-model",
            BASE,
            "--description",
            description,
            "--name",
            name,
        )["id"]
    rec = cli.json(
        "adapters", "add", str(target_dir), "-m", BASE, "-d", TARGET, "--name", "review-sentiment"
    )
    assert rec["rank"] == 8 and rec["provenance"] == "imported"

    hits = cli.json("adapters", "search", PARAPHRASE, "-k", "3")
    assert hits[0]["id"] == rec["id"], hits

    listed = cli.json("adapters", "list")
    assert len(listed) == 5
    shown = cli.json("adapters", "show", str(rec["id"]))
    assert shown["description"] == TARGET

    out = tmp_path / "exported"
    cli.run("adapters", "export", str(rec["id"]), str(out))
    assert (out / "adapter_model.safetensors").read_bytes() == (
        target_dir / "adapter_model.safetensors"
    ).read_bytes()
    cli.run("adapters", "export", str(rec["id"]), str(tmp_path / "exported.zip"))
    with zipfile.ZipFile(tmp_path / "exported.zip") as zf:
        assert set(zf.namelist()) == {
            "adapter_config.json", "adapter_model.safetensors", "README.md"
        }  # fmt: skip

    loaded = PeftModel.from_pretrained(_load_base(base_path), out).eval()
    tok = AutoTokenizer.from_pretrained(base_path)
    batch = tok(
        ["This blender is wonderful, I use it every day.", "Broke after a week."],
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        expected = original(**batch).logits
        got = loaded(**batch).logits
        bare = _load_base(base_path)(**batch).logits
    assert torch.equal(got, expected)
    assert not torch.allclose(bare, expected)  # the adapter really changes the model

    cli.run("adapters", "delete", str(ids["math"]), "--yes")
    assert cli.run("adapters", "show", str(ids["math"]), ok=False).returncode != 0


def _registry_state(cli: Cli) -> tuple[tuple[list[Any], ...], list[str]]:
    """Rows of every table plus the blob files: what a failed command must not change."""
    home = Path(cli.env["LORAMINT_HOME"])
    blobs = (
        sorted(str(p) for p in (home / "blobs").rglob("*") if p.is_file())
        if (home / "blobs").exists()
        else []
    )
    with sqlite3.connect(home / "registry.db") as conn:
        tables = (
            "adapters",
            "description_embeddings",
            "adapter_parents",
            "base_models",
            "registry_state",
        )
        rows = tuple(conn.execute(f"select * from {t} order by 1").fetchall() for t in tables)
    return rows, blobs


def _make(kind: str, base_path: Path, d: Path) -> tuple[Path, list[str]]:
    from peft import LoraConfig, get_peft_model

    src = d / "src"
    if not src.exists():
        torch.manual_seed(1)
        get_peft_model(
            _load_base(base_path),
            LoraConfig(
                r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
            ),
        ).save_pretrained(str(src))
    bad = d / kind
    bad.mkdir()
    config = (src / "adapter_config.json").read_bytes()
    weights = load_file(src / "adapter_model.safetensors")
    extra: list[str] = []
    if kind == "pickle":
        (bad / "adapter_config.json").write_bytes(config)
        torch.save(weights, bad / "adapter_model.bin")
    elif kind == "shape":
        (bad / "adapter_config.json").write_bytes(config)
        key = next(k for k in weights if "q_proj.lora_B" in k)
        weights[key] = torch.zeros(192, 8)  # a v_proj shape where q_proj's belongs
        save_file(weights, bad / "adapter_model.safetensors")
    elif kind == "nan":
        (bad / "adapter_config.json").write_bytes(config)
        key = sorted(weights)[3]
        weights[key][0, 0] = float("nan")
        save_file(weights, bad / "adapter_model.safetensors")
    elif kind == "no-config":
        save_file(weights, bad / "adapter_model.safetensors")
    elif kind == "truncated-zip":
        z = d / "truncated.zip"
        with zipfile.ZipFile(z, "w") as zf:
            zf.write(src / "adapter_config.json", "adapter_config.json")
            zf.write(src / "adapter_model.safetensors", "adapter_model.safetensors")
        z.write_bytes(z.read_bytes()[:-200])
        return z, extra
    elif kind == "unknown-base":
        return src, ["--base-model", "llama-9000"]
    elif kind == "empty-description":
        return src, ["--description", ""]
    return bad, extra


@pytest.mark.parametrize(
    "kind, message",
    [
        ("pickle", "pickle weights"),
        ("shape", "has shape [192, 8], expected [576, 8]"),
        ("nan", "NaN or Inf"),
        ("no-config", "missing adapter_config.json"),
        ("truncated-zip", "truncated or corrupt"),
        ("unknown-base", "unknown base model 'llama-9000'"),
        ("empty-description", "description is empty"),
    ],
)
def test_bad_inputs_give_one_clear_line_and_change_nothing(
    cli: Cli, base_path: Path, tmp_path_factory: pytest.TempPathFactory, kind: str, message: str
) -> None:
    d = tmp_path_factory.getbasetemp() / "bad-inputs"
    d.mkdir(exist_ok=True)
    path, extra = _make(kind, base_path, d)
    before = _registry_state(cli)
    args = ["adapters", "add", str(path), "--base-model", BASE, "--description", "a task", *extra]
    proc = cli.run(*args, ok=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert _registry_state(cli) == before
