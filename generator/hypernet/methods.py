"""The generator methods' names (no torch here: the CLI reads them at start-up)."""

from __future__ import annotations

from registry.errors import InvalidInput

SG_LORA = "sg-lora"
ICM_LORA = "icm-lora"
METHODS = (SG_LORA, ICM_LORA)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise InvalidInput(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    return method
