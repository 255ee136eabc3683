"""Input checks shared by the adapter and generator halves of the registry."""

from __future__ import annotations

import json
import re
from typing import Any

from registry.errors import InvalidInput

NAME_RE = re.compile(r"^[\w][\w.\-]{0,199}$")


def check_json(what: str, value: dict[str, Any] | None) -> None:
    """JSON columns must hold what every backend stores alike: no NaN, no objects."""
    if value is None:
        return
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} must be JSON-serialisable with finite numbers: {exc}") from exc
