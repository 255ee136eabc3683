"""bench/transfer.py end to end on the tiny transfer world."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from generator.sandbox import tiny_task
from generator.zoo.build import build_zoo
from generator.zoo.trainer import TrainConfig
from registry.blobs import write_atomic
from registry.embeddings import MiniLMEmbedder
from registry.settings import Settings
from tests.worlds import TransferWorld, cli_env, transfer_world

BENCH = Path(__file__).resolve().parents[2] / "bench" / "transfer.py"


def bench_world(
    tmp_path: Path, tiny_base: Path, tiny_gemma: Path, embedder: MiniLMEmbedder
) -> tuple[TransferWorld, dict[str, str]]:
    """The tiny transfer world with a one-task default suite (held-out "cat"), closed so
    that bench/transfer.py can open it, and the environment that points there."""
    from generator.tasks.task import TaskSuite

    w = transfer_world(tmp_path, tiny_base, tiny_gemma, embedder)
    settings: Settings = w.settings
    TaskSuite(settings.tasks_dir / "default").write_all([tiny_task("cat", "cat", held_out=True)])
    w.registry.close()
    return w, cli_env(settings)


def test_bench_prints_the_table_on_tiny_models(
    tmp_path: Path, tiny_base: Path, tiny_gemma: Path, embedder: MiniLMEmbedder
) -> None:
    """bench/transfer.py end to end: source, bare target, transferred and both ablations."""
    w, env = bench_world(tmp_path, tiny_base, tiny_gemma, embedder)
    settings: Settings = w.settings
    run = subprocess.run(
        [
            sys.executable, str(BENCH), "--source", w.base, "--target", w.target,
            "--samples", "3", "--steps", "3", "--disc-steps", "3", "--max-rounds", "1",
            "--min-kept", "0", "--eval-n", "6", "--min-gain", "0",  # the tiny zoo is not scored
        ],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    table = run.stdout.splitlines()
    row = next(line for line in table if line.startswith("| cat |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 7 and all(0.0 <= float(c) <= 1.0 for c in cells[1:6]), row
    assert any(line.startswith("| cat |") and "synthesize" not in line for line in table[-3:])
    written = list(settings.results_dir.glob("transfer-*.json"))
    assert len(written) == 1
    [task] = json.loads(written[0].read_text())["tasks"]
    assert set(task["wall_seconds"]) == {"synthesize", "discriminator", "filter", "distill"}
    assert task["transferred_adapter_id"] and task["eval_n"] == 6

    # a second run reuses the job and the figures, and adds the balanced, soft and bound
    # columns; the row of a task it does not score (here: written by hand) stays. The
    # target model gets its own zoo adapter for the task: the "target oracle" bound
    other = {"task": "elsewhere", "adapter_id": 99, "eval_n": 6, "job_id": 99, "source": 0.5}
    payload = json.loads(written[0].read_text())
    write_atomic(written[0], json.dumps({**payload, "tasks": [task, other]}).encode())
    config = TrainConfig(rank=4, alpha=8, steps=3, batch_size=8, lr=1e-2, snapshots=1)
    cat = tiny_task("cat", "cat", held_out=True)
    [oracle] = build_zoo(w.registry, [cat], base_model=w.target, config=config, evaluate=False)
    w.registry.close()
    again = subprocess.run(
        [*run.args, "--balanced", "--soft", "--hard", "--bounds"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"reusing transfer job {task['job_id']}" in again.stderr
    [second, kept] = json.loads(written[0].read_text())["tasks"]
    assert kept == other and "| elsewhere | 0.500 |" in again.stdout
    assert {k: second[k] for k in task} == task  # nothing measured twice
    assert 0.0 <= second["balanced"] <= 1.0 and 0.0 <= second["no_filter_balanced"] <= 1.0
    # the job has the default soft filter: --soft adds nothing, --hard the paper's filter
    assert 0.0 <= second["hard_filter"] <= 1.0 and "soft_filter" not in second
    assert 0.0 <= second["real_inputs"] <= 1.0 and 0.0 <= second["target_oracle"] <= 1.0
    assert second["target_oracle_id"] == oracle.adapter_id
    # a run without those flags keeps the columns the row has
    plain = subprocess.run(run.args, env=env, capture_output=True, text=True, timeout=600)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert json.loads(written[0].read_text())["tasks"][0] == second
    assert "| hard filter |" in plain.stdout
    header = next(line for line in again.stdout.splitlines() if line.startswith("| task |"))
    assert header.split("|")[-7:-1] == [
        " no filter, balanced ",
        " soft filter ",
        " hard filter ",
        " real inputs (bound) ",
        " target oracle (bound) ",
        " kept / generated ",
    ]

    # another setting is another job, named in the table's first line
    third = subprocess.run(
        [*run.args, "--set", "kd_temperature=2"], env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert third.returncode == 0, third.stderr[-3000:]
    [row3, _] = json.loads(written[0].read_text())["tasks"]
    assert row3["job_id"] != task["job_id"] and "settings kd_temperature=2" in third.stdout
    assert w.registry.get_job(row3["job_id"]).params["config"]["kd_temperature"] == 2

    # a job with the paper's hard filter: its transferred column is the kept inputs, so
    # --hard adds nothing and --soft adds every scored input, drawn by p(real)
    fourth = subprocess.run(
        [*run.args, "--set", "soft_filter=false", "--soft", "--hard"], env=env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    [row4, _] = json.loads(written[0].read_text())["tasks"]
    assert w.registry.get_job(row4["job_id"]).params["config"]["soft_filter"] is False
    assert 0.0 <= row4["soft_filter"] <= 1.0 and "hard_filter" not in row4
    assert row4["scored"] >= 1 and "| soft filter |" in fourth.stdout


def test_bench_skips_adapters_that_do_nothing_on_their_own_model(
    tmp_path: Path, tiny_base: Path, tiny_gemma: Path, embedder: MiniLMEmbedder
) -> None:
    """Without --names the bench transfers only adapters whose zoo gain reaches --min-gain;
    an unscored one (the tiny zoo's) does not, and the bench says so before loading models."""
    w, env = bench_world(tmp_path, tiny_base, tiny_gemma, embedder)
    settings: Settings = w.settings
    run = subprocess.run(
        [sys.executable, str(BENCH), "--source", w.base, "--target", w.target],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode != 0
    assert "skipped (source gain < 0.1): cat" in run.stderr
    assert "source gain >= 0.1" in run.stderr
    assert not list(settings.results_dir.glob("transfer-*"))
    assert w.registry.list_jobs(kind="transfer", limit=10) == []

    bad = subprocess.run(
        [*run.args, "--min-gain", "0", "--set", "kd_temprature=2"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and "unknown transfer settings kd_temprature" in bad.stderr
    assert w.registry.list_jobs(kind="transfer", limit=10) == []
