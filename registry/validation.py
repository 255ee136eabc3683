"""Input checks shared by the adapter and generator halves of the registry."""

from __future__ import annotations

import json
import re
from typing import Any

from registry.errors import InvalidInput

NAME_RE = re.compile(r"^[\w][\w.\-]{0,199}$")


def slug(text: str, limit: int) -> str:
    """``text`` as a readable name part: lowercase words joined by '-', at most
    ``limit`` characters ('adapter' when nothing is left)."""
    out = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")
    return out or "adapter"


def check_json(what: str, value: dict[str, Any] | None) -> None:
    """JSON columns must hold what every backend stores alike: no NaN, no objects."""
    if value is None:
        return
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} must be JSON-serialisable with finite numbers: {exc}") from exc
