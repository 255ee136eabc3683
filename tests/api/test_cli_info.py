"""``loramint info``: what a machine runs where, without writing anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from registry.embeddings import native_bf16

GPU = torch.cuda.is_available()


def info(home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LORAMINT_")}
    return subprocess.run(
        [sys.executable, "-m", "api.cli", "info", "--json"],
        env=base | {"LORAMINT_HOME": str(home), **env}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_info_reports_the_devices_and_precisions_auto_means_here(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run = info(home, LORAMINT_DATABASE_URL="postgresql+psycopg://ops:s3cret@db/loramint")
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    expected = "cuda" if GPU else "cpu"
    assert got["training_device"] == expected and got["cuda_gpus"] == (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    )
    assert got["service_device"] == {"setting": "auto", "device": expected}
    assert got["cpu_native_bfloat16"] == native_bf16()
    assert got["embedder_precision"]["runs_in"] == ("bfloat16" if native_bf16() else "float32")
    assert got["torch"] == torch.__version__ and got["cpus"] == os.cpu_count()
    assert got["home"] == str(home) and "s3cret" not in run.stdout
    assert got["database"] == "postgresql+psycopg://ops:***@db/loramint"
    assert not home.exists()  # nothing written, not even the home
    floats = info(home, LORAMINT_EMBED_PRECISION="float32")
    assert json.loads(floats.stdout)["embedder_precision"]["runs_in"] == "float32"


@pytest.mark.skipif(GPU, reason="this machine has a GPU: asking for one is not an error")
def test_info_exits_1_when_the_service_device_is_missing(tmp_path: Path) -> None:
    run = info(tmp_path / "home", LORAMINT_DEVICE="cuda:0")
    assert run.returncode == 1
    got = json.loads(run.stdout)  # everything else is still reported
    assert got["service_device"]["device"] is None and got["training_device"] == "cpu"
    assert "LORAMINT_DEVICE" in run.stderr and "no CUDA GPU" in run.stderr


def test_info_refuses_a_misspelt_device_like_every_command(tmp_path: Path) -> None:
    run = info(tmp_path / "home", LORAMINT_DEVICE="gpu")
    assert run.returncode != 0 and "LORAMINT_DEVICE" in run.stderr and not run.stdout
