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

from registry.devices import check_device_name
from registry.errors import InvalidInput

__all__ = ["check_device_name", "model_device", "resolve_device"]


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
