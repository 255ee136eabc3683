"""Where the base model runs: ``--device auto`` (a CUDA GPU when one is visible, else
the CPU), ``cpu``, ``cuda`` or ``cuda:N``.

Tensors that feed a model are made on the model's device (``model_device``);
what leaves a computation (LoRA weights, scores) comes back to the CPU, so the
registry, the recipes and every file written are the same wherever it ran.
Weights stay float32 on every device: a GPU's results differ from the CPU's
only by float rounding.
"""

from __future__ import annotations

from typing import Any

import torch

from registry.errors import InvalidInput

DEVICES = ("auto", "cpu", "cuda")


def check_device_name(name: str) -> str:
    """``name`` normalised (auto, cpu, cuda or cuda:N) without looking for the device: a
    job may run on a worker with GPUs this machine lacks. ``InvalidInput`` otherwise."""
    text = (name or "auto").strip().lower()
    if text in DEVICES:
        return text
    if text.startswith("cuda:"):
        if not text.partition(":")[2].isdigit():
            raise InvalidInput(f"device {name!r}: write cuda or cuda:N, N a GPU's number")
        return text
    raise InvalidInput(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")


def resolve_device(name: str = "auto") -> torch.device:
    """The device ``name`` stands for; ``InvalidInput`` for a GPU that is not there."""
    text = check_device_name(name)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text.startswith("cuda"):
        index = text.partition(":")[2]
        if not torch.cuda.is_available():
            raise InvalidInput(
                f"device {name!r} asked for, but this machine has no CUDA GPU that torch can "
                "use (torch.cuda.is_available() is False); use --device cpu or auto"
            )
        if index and int(index) >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise InvalidInput(f"device {name!r}: this machine has {count} CUDA GPU(s)")
    return torch.device(text)


def model_device(model: Any) -> torch.device:
    """The device of ``model``'s parameters (the CPU for a model without any)."""
    for parameter in model.parameters():
        return torch.device(parameter.device)
    return torch.device("cpu")


PRECISIONS = ("auto", "float32", "bfloat16")


def native_bfloat16(device: torch.device, cpu_flags: str | None = None) -> bool:
    """Whether ``device`` multiplies bfloat16 in hardware: a CUDA GPU that says so, or
    a CPU with AVX512-BF16, AMX or Arm's BF16 (``cpu_flags``: /proc/cpuinfo's text,
    read when not given; a CPU without them emulates bfloat16, slower than float32)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    if cpu_flags is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpu_flags = f.read()
        except OSError:
            return False
    words = set(cpu_flags.replace(":", " ").split())
    return bool(words & {"avx512_bf16", "amx_bf16", "bf16"})


def scoring_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype candidates are compared in: ``auto`` is bfloat16 where ``device`` has
    it natively (2-3x faster on such CPUs), float32 elsewhere."""
    if precision not in PRECISIONS:
        raise InvalidInput(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bfloat16" or (precision == "auto" and native_bfloat16(device)):
        return torch.bfloat16
    return torch.float32
