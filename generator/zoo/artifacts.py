"""What a zoo adapter keeps besides its weights: registry artifacts.

- ``trajectory.safetensors``: the running mean and variance of the LoRA weights
  over the late part of training and a few snapshots (what SG-LoRA and ICM-LoRA
  learn from; ``generator.zoo.trainer`` records them).
- ``seeds.jsonl``: a handful of training examples, one ``{"input", "output"}``
  object a line (what Trans-LoRA starts from; uploads carry them with
  ``--seeds``), checked by ``read_seeds`` whoever wrote them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from generator.tasks.task import Example
from generator.zoo.trainer import TrainResult
from registry.errors import InvalidInput
from registry.lora_spec import Tensors

TRAJECTORY = "trajectory.safetensors"

SEEDS = "seeds.jsonl"


def trajectory_bytes(result: TrainResult) -> bytes:
    tensors: Tensors = {}
    for k, v in result.mean.items():
        tensors[f"mean.{k}"] = v
        tensors[f"var.{k}"] = result.var[k]
    for i, snap in enumerate(result.snapshots):
        for k, v in snap.items():
            tensors[f"snapshot{i}.{k}"] = v
    return save_safetensors(
        {k: v.contiguous() for k, v in tensors.items()},
        metadata={"format": "pt", "snapshots": str(len(result.snapshots))},
    )


@dataclass(frozen=True)
class Trajectory:
    mean: Tensors
    var: Tensors
    snapshots: list[Tensors]


def load_trajectory(raw: bytes) -> Trajectory:
    tensors = load_safetensors(raw)
    mean = {k[5:]: v for k, v in tensors.items() if k.startswith("mean.")}
    var = {k[4:]: v for k, v in tensors.items() if k.startswith("var.")}
    n = 1 + max(
        (int(k.split(".", 1)[0][8:]) for k in tensors if k.startswith("snapshot")), default=-1
    )
    snaps = [
        {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"snapshot{i}.")}
        for i in range(n)
    ]
    return Trajectory(mean, var, snaps)


def read_seeds(raw: bytes) -> tuple[Example, ...]:
    """Seed examples from JSONL (one ``{"input", "output"}`` object per line)."""
    out = []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"seed examples must be UTF-8 JSONL: {exc}") from exc
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"seed line {number} is not JSON: {exc}") from exc
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("input"), str)
            or not isinstance(row.get("output"), str)
        ):
            raise InvalidInput(f'seed line {number} must be {{"input": str, "output": str}}')
        if row["input"].strip():
            out.append(Example(row["input"], row["output"]))
    if not out:
        raise InvalidInput("no seed example with a non-empty input")
    if len(out) > 1000:
        raise InvalidInput(f"at most 1000 seed examples (a handful is enough), got {len(out)}")
    return tuple(out)


def seeds_bytes(seeds: tuple[Example, ...]) -> bytes:
    lines = [json.dumps({"input": e.input, "output": e.output}, ensure_ascii=False) for e in seeds]
    return ("\n".join(lines) + "\n").encode("utf-8")


def seed_artifacts(
    raw: bytes | None, labels: list[str] | None
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The artifacts and meta an uploaded adapter carries for later transfers: its seed
    examples (checked, re-serialised) and its label set, which the seeds must fit."""
    artifacts: dict[str, bytes] = {}
    meta: dict[str, Any] = {}
    seeds = read_seeds(raw) if raw is not None else None
    if seeds is not None:
        artifacts[SEEDS] = seeds_bytes(seeds)
    if labels is not None:
        if not labels or not all(labels) or len(set(labels)) != len(labels):
            raise InvalidInput(f"labels must be distinct non-empty strings, got {labels!r}")
        if seeds is not None:
            stray = sorted({e.output for e in seeds} - set(labels))
            if stray:
                raise InvalidInput(f"seed outputs {stray[:3]} are not among the labels {labels}")
        meta["labels"] = list(labels)
    return artifacts, meta
