"""Device names as an operator writes them (``--device``, ``LORAMINT_DEVICE``):
checked without looking for the device, since a job or a setting may name a GPU
that only the machine running it has. ``generator.tasks.device`` resolves them."""

from __future__ import annotations

from registry.errors import InvalidInput

DEVICES = ("auto", "cpu", "cuda")


def check_device_name(name: str) -> str:
    """``name`` normalised (auto, cpu, cuda or cuda:N); ``InvalidInput`` otherwise."""
    text = (name or "auto").strip().lower()
    if text in DEVICES:
        return text
    if text.startswith("cuda:"):
        if not text.partition(":")[2].isdigit():
            raise InvalidInput(f"device {name!r}: write cuda or cuda:N, N a GPU's number")
        return text
    raise InvalidInput(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
