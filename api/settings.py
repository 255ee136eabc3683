"""Settings of the HTTP service, read once from the environment.

| variable | default | meaning |
|---|---|---|
| LORAMINT_API_OPEN | 0 | 1: reading and generating need no key (local use); changes always do |
| LORAMINT_API_RATE | 20 | requests per second per key (or per client address when open) |
| LORAMINT_API_BURST | 200 | bucket size of the rate limiter |
| LORAMINT_API_MAX_JOBS | 4 | queued + running jobs accepted at once |
| LORAMINT_API_MAX_K | 100 | largest `k` of a semantic search |
| LORAMINT_BATCH_WINDOW_MS | 10 | micro-batching window for generation (0: no batching) |
| LORAMINT_BATCH_MAX | 32 | largest generation batch |
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from registry.errors import InvalidInput


def _num(name: str, default: float, *, minimum: float = 0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise InvalidInput(f"{name} must be at least {minimum}, got {raw!r}")
    return value


@dataclass(frozen=True)
class ApiSettings:
    open_access: bool = False
    rate: float = 20.0
    burst: float = 200.0
    max_jobs: int = 4
    max_k: int = 100
    batch_window: float = 0.01
    batch_max: int = 32

    @classmethod
    def from_env(cls) -> ApiSettings:
        flag = os.environ.get("LORAMINT_API_OPEN", "0").strip().lower()
        if flag not in ("0", "1", "true", "false", "yes", "no", ""):
            raise InvalidInput(f"LORAMINT_API_OPEN must be 0 or 1, got {flag!r}")
        return cls(
            open_access=flag in ("1", "true", "yes"),
            rate=_num("LORAMINT_API_RATE", 20.0, minimum=0.001),
            burst=_num("LORAMINT_API_BURST", 200.0, minimum=1),
            max_jobs=int(_num("LORAMINT_API_MAX_JOBS", 4, minimum=1)),
            max_k=int(_num("LORAMINT_API_MAX_K", 100, minimum=1)),
            batch_window=_num("LORAMINT_BATCH_WINDOW_MS", 10.0) / 1000,
            batch_max=int(_num("LORAMINT_BATCH_MAX", 32, minimum=1)),
        )

    @property
    def auth_mode(self) -> str:
        return (
            "open: reading and generating need no key; changes need an admin key"
            if self.open_access
            else "keys: every /v1 request needs a Bearer key (reader or admin)"
        )
