"""What callers put into job rows, checked and normalised before anything is written:
kinds, worker names, leases, progress, stages, states, JSON parameters and results,
and the job log (kept to its newest lines)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from registry.errors import InvalidInput
from registry.models import JobState
from registry.validation import check_json

KIND_RE = re.compile(r"^[\w][\w.\-]{0,49}$")

ARTIFACT_NAME_RE = re.compile(r"^[\w][\w.\-]{0,99}$")

# the log keeps its newest lines within this many characters; errors keep their end
LOG_MAX_CHARS = 64 * 1024

ERROR_MAX_CHARS = 16 * 1024

MAX_LEASE_SECONDS = 7 * 24 * 3600


def append_log(log: str, entry: str) -> str:
    """``log`` plus ``entry`` as whole lines, trimmed to its newest LOG_MAX_CHARS at a
    line boundary (a single longer line is cut)."""
    entry = clean(entry)
    text = log + (entry if entry.endswith("\n") else entry + "\n")
    if len(text) <= LOG_MAX_CHARS:
        return text
    tail = text[-LOG_MAX_CHARS:]
    cut = tail.find("\n")
    return tail[cut + 1 :] if 0 <= cut < len(tail) - 1 else tail


def clean(text: str) -> str:
    # PostgreSQL text cannot hold NUL; a worker's captured output sometimes does
    return text.replace("\x00", "\ufffd")


def check_kind(kind: str) -> None:
    if not isinstance(kind, str) or not KIND_RE.match(kind):
        raise InvalidInput(f"job kind {kind!r} must be 1-50 letters, digits, '_', '-' or '.'")


def check_kinds(kinds: Sequence[str]) -> list[str]:
    if isinstance(kinds, str | bytes):
        raise InvalidInput("kinds must be a sequence of job kinds, not one string")
    wanted = list(kinds)
    for kind in wanted:
        check_kind(kind)
    return wanted


def check_dict(what: str, value: dict[str, Any] | None) -> None:
    if value is not None and not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {type(value).__name__}")
    check_json(what, value)


def check_worker(worker: str) -> None:
    if not isinstance(worker, str) or not worker.strip() or len(worker) > 200:
        raise InvalidInput(f"worker {worker!r} must be a name of 1-200 characters")
    if not worker.isprintable():
        raise InvalidInput(f"worker {worker!r} must be printable")


def lease_of(seconds: float) -> timedelta:
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 < seconds <= MAX_LEASE_SECONDS
    ):
        raise InvalidInput(
            f"lease_seconds must be a number in (0, {MAX_LEASE_SECONDS}], got {seconds!r}"
        )
    return timedelta(seconds=seconds)


def check_progress(value: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= 1
    ):
        raise InvalidInput(f"progress must be a number between 0 and 1, got {value!r}")
    return float(value)


def check_stage(value: str) -> str:
    if not isinstance(value, str) or len(value) > 100 or not value.isprintable():
        raise InvalidInput(f"stage {value!r} must be printable text of at most 100 characters")
    return value


def check_state(value: str) -> str:
    try:
        return JobState(value).value
    except ValueError as exc:
        allowed = ", ".join(s.value for s in JobState)
        raise InvalidInput(f"job state must be one of {allowed}, got {value!r}") from exc
