"""Where the base model runs (``--device``): ``auto`` takes a CUDA GPU when torch sees
one; asking for a GPU that is not there is refused before anything is trained or
registered; and, on a machine with a GPU, a zoo adapter trained and scored there
matches the CPU's within float rounding (skipped, saying so, without one)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from generator.sandbox import ZOO_CONFIG, tiny_task
from generator.tasks.device import check_device_name, model_device, resolve_device
from generator.tasks.evaluation import Evaluator, load_base
from generator.zoo.trainer import train_lora
from registry.errors import InvalidInput
from registry.service import Registry
from tests.worlds import sqlite_settings

GPU = torch.cuda.is_available()


def test_auto_takes_a_gpu_only_when_there_is_one() -> None:
    assert resolve_device("auto").type == ("cuda" if GPU else "cpu")
    assert resolve_device("").type == resolve_device("auto").type
    assert resolve_device(" CPU ") == torch.device("cpu")


@pytest.mark.parametrize(
    ("name", "reason"),
    [("tpu", "auto, cpu, cuda or cuda:N"), ("cuda:x", "cuda:N"), ("cuda:99", "CUDA GPU")],
)
def test_a_device_that_cannot_be_had_is_refused(name: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        resolve_device(name)


def test_a_job_names_a_device_without_this_machine_having_it(tmp_path: Path) -> None:
    """A queued zoo build may ask for a GPU this machine lacks (its worker may have one),
    but a misspelt device is refused at once and nothing is queued."""
    assert check_device_name(" CUDA:1 ") == "cuda:1" and check_device_name("") == "auto"
    settings = sqlite_settings(tmp_path)
    suite = tmp_path / "suite"
    from generator.tasks.task import TaskSuite

    TaskSuite(suite).write_all([tiny_task("cat", "cat")])

    def queue(device: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "api.cli", "zoo", "build", "--suite", str(suite), "--as-job",
             "--device", device],
            env=os.environ | settings.environment(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    bad = queue("gpu0")
    assert bad.returncode != 0 and "auto, cpu, cuda or cuda:N" in bad.stderr, bad.stderr
    good = queue("cuda:1")
    assert good.returncode == 0, good.stderr
    reg = Registry(settings)
    try:
        [job] = reg.list_jobs()
        assert job.params["device"] == "cuda:1"
    finally:
        reg.close()


@pytest.mark.skipif(GPU, reason="this machine has a GPU: asking for one is not an error")
def test_asking_for_a_missing_gpu_changes_nothing(tmp_path: Path, tiny_base: Path) -> None:
    settings = sqlite_settings(tmp_path)
    suite = tmp_path / "suite"
    from generator.tasks.task import TaskSuite

    TaskSuite(suite).write_all([tiny_task("cat", "cat")])
    run = subprocess.run(
        [sys.executable, "-m", "api.cli", "zoo", "build", "--base-model", str(tiny_base),
         "--suite", str(suite), "--steps", "2", "--device", "cuda"],
        env=os.environ | settings.environment(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode != 0 and "no CUDA GPU" in run.stderr, run.stderr
    reg = Registry(settings)
    try:
        assert reg.count_adapters() == 0 and reg.list_base_models() == []
    finally:
        reg.close()


@pytest.mark.skipif(GPU, reason="this machine has a GPU: asking for one is not an error")
def test_a_service_or_worker_set_to_a_missing_gpu_does_not_start(tmp_path: Path) -> None:
    """``LORAMINT_DEVICE=cuda`` on a machine without one: the app and the worker refuse
    to start with the reason, before any job is claimed."""
    from api.app import create_app

    settings = dataclasses.replace(sqlite_settings(tmp_path), device="cuda")
    reg = Registry(settings)
    try:
        with pytest.raises(InvalidInput, match="no CUDA GPU"):
            create_app(reg)
        reg.submit_job("build-zoo", {"tasks": []})
    finally:
        reg.close()
    run = subprocess.run(
        [sys.executable, "-m", "api.cli", "worker", "--once"],
        env=os.environ | settings.environment(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode != 0 and "no CUDA GPU" in run.stderr, run.stderr
    reg = Registry(sqlite_settings(tmp_path))
    try:
        [job] = reg.list_jobs()
        assert job.state == "queued" and job.attempts == 0  # nothing claimed it
    finally:
        reg.close()


def test_the_cpu_path_keeps_weights_and_scores_on_the_cpu(tiny_base: Path) -> None:
    model, tokenizer = load_base(tiny_base, "cpu")
    evaluator = Evaluator(model, tokenizer)
    task = tiny_task("cat", "cat")
    result = train_lora(model, evaluator.format, task.description, task.train, ZOO_CONFIG)
    assert {t.device.type for t in result.weights.values()} == {"cpu"}
    assert model_device(model).type == "cpu"


@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_a_gpu_trains_and_scores_like_the_cpu(tiny_base: Path) -> None:
    task = tiny_task("cat", "cat")
    runs = {}
    for device in ("cpu", "cuda"):
        model, tokenizer = load_base(tiny_base, device)
        evaluator = Evaluator(model, tokenizer)
        result = train_lora(model, evaluator.format, task.description, task.train, ZOO_CONFIG)
        scores = evaluator.label_scores(task, (result.peft_config, result.weights))
        runs[device] = (result, scores)
    cpu, gpu = runs["cpu"], runs["cuda"]
    assert {t.device.type for t in gpu[0].weights.values()} == {"cpu"}  # back on the CPU
    for name, weight in cpu[0].weights.items():
        torch.testing.assert_close(gpu[0].weights[name], weight, atol=2e-3, rtol=2e-2)
    torch.testing.assert_close(gpu[1], cpu[1], atol=2e-3, rtol=1e-3)
    assert (gpu[1].argmax(-1) == cpu[1].argmax(-1)).float().mean() >= 0.95


def test_few_shot_weighting_and_lorahub_run_on_a_gpu_like_on_the_cpu(tiny_base: Path) -> None:
    """Few-shot adaptation where the base model is on a GPU (``LORAMINT_DEVICE``, ``eval
    fewshot --device``): the mixture fit and LoraHub's search run there, and what they
    return is on the CPU, close to the CPU's. Without a GPU the second run is on the CPU
    again, which keeps this test's own code exercised."""
    from generator.adapt.weighting import fit_weights
    from generator.quality.lorahub import lorahub

    task = tiny_task("cat", "cat")
    runs = []
    for device in ("cpu", "cuda" if GPU else "cpu"):
        model, tokenizer = load_base(tiny_base, device)
        evaluator = Evaluator(model, tokenizer)
        experts = [
            train_lora(model, evaluator.format, tiny_task(n, n).description,
                       tiny_task(n, n).train, ZOO_CONFIG)
            for n in ("cat", "dog")
        ]  # fmt: skip
        template = experts[0].peft_config
        weights = [e.weights for e in experts]
        fitted = fit_weights(
            evaluator, task.description, task.train[:8], template, weights,
            torch.tensor([0.6, 0.4]), steps=3,
        )  # fmt: skip
        hub = lorahub(evaluator, task.description, task.train[:8], template, weights, budget=4)
        runs.append((fitted, hub))
    (cpu_fit, cpu_hub), (gpu_fit, gpu_hub) = runs
    for tensors in (gpu_fit.adapter[1], gpu_hub.adapter[1]):
        assert {t.device.type for t in tensors.values()} == {"cpu"}
    assert gpu_fit.weights.device.type == "cpu"
    torch.testing.assert_close(gpu_fit.weights, cpu_fit.weights, atol=2e-2, rtol=0)
    assert gpu_hub.loss == pytest.approx(cpu_hub.loss, rel=5e-2)
