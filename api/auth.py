"""API keys, roles and per-key rate limits for the REST API.

A route declares the role it needs in its ``opt`` (``reader`` or ``admin``);
one app-wide guard resolves the ``Authorization: Bearer`` key (cached for a
short time so a request costs no database read), checks the role, then takes
a token from that key's bucket. An admin key can do everything a reader can.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from litestar.connection import ASGIConnection
from litestar.exceptions import (
    NotAuthorizedException,
    PermissionDeniedException,
    TooManyRequestsException,
)
from litestar.handlers.base import BaseRouteHandler

ROLES = {"reader": 1, "admin": 2}
CACHE_SECONDS = 30.0


@dataclass(frozen=True)
class Principal:
    role: str | None  # None: anonymous (open mode)
    key_id: int | None
    name: str

    def allows(self, needed: str) -> bool:
        return self.role is not None and ROLES[self.role] >= ROLES[needed]


class TokenBuckets:
    """Token buckets keyed by caller; ``take`` returns the seconds to wait (0 = allowed)."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst = rate, burst
        self.clock = clock  # seconds, never going back
        self._state: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    MAX_CALLERS = 10_000

    def take(self, who: str) -> float:
        now = self.clock()
        with self._lock:
            if who not in self._state and len(self._state) >= self.MAX_CALLERS:
                self._forget_refilled(now)
            tokens, last = self._state.get(who, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._state[who] = (tokens - 1, now)
                return 0.0
            self._state[who] = (tokens, now)
            return (1 - tokens) / self.rate

    def _forget_refilled(self, now: float) -> None:
        """Drop callers whose bucket has refilled (a fresh one is the same), so an
        open server seeing many addresses keeps a bounded table."""
        full = [
            who
            for who, (tokens, last) in self._state.items()
            if tokens + (now - last) * self.rate >= self.burst
        ]
        for who in full:
            del self._state[who]

    def __len__(self) -> int:
        return len(self._state)


class KeyCache:
    """secret sha256 -> (principal or None, expiry): keys are looked up once per ``ttl``."""

    def __init__(self, ttl: float = CACHE_SECONDS) -> None:
        self.ttl = ttl
        self._cache: dict[str, tuple[Principal | None, float]] = {}

    def get(self, digest: str) -> tuple[bool, Principal | None]:
        hit = self._cache.get(digest)
        if hit is None or hit[1] < time.monotonic():
            return False, None
        return True, hit[0]

    def put(self, digest: str, principal: Principal | None) -> None:
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (principal, time.monotonic() + self.ttl)

    def clear(self) -> None:
        self._cache.clear()


def bearer(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def resolve(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    state = connection.app.state
    secret = bearer(connection)
    if secret is None:
        client = connection.client.host if connection.client else "unknown"
        return Principal(None, None, f"anonymous@{client}")
    digest = hashlib.sha256(secret.encode()).hexdigest()
    cache: KeyCache = state.key_cache
    found, principal = cache.get(digest)
    if not found:
        record = await anyio.to_thread.run_sync(state.registry.authenticate, secret)
        principal = Principal(record.role, record.id, record.name) if record else None
        cache.put(digest, principal)
    elif principal is not None and principal.key_id is not None:
        # the cache saves the hash lookup, never the revocation check: a key revoked by
        # any process is refused on its very next request
        live = await anyio.to_thread.run_sync(state.registry.key_is_live, principal.key_id)
        if not live:
            principal = None
            cache.put(digest, None)
    if principal is None:
        raise NotAuthorizedException("invalid or revoked API key")
    return principal


async def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """The app-wide guard: authentication, role, rate limit."""
    needed = handler.opt.get("role")
    if needed is None:
        return
    state = connection.app.state
    principal = await resolve(connection)
    connection.scope["state"]["principal"] = principal
    open_ok = state.api_settings.open_access and needed == "reader"
    if not principal.allows(needed) and not open_ok:
        if principal.role is None:
            raise NotAuthorizedException(
                f"this endpoint needs a{'n' if needed == 'admin' else ''} {needed} key: "
                "send `Authorization: Bearer <key>` (create one with `loramint keys create`)"
            )
        raise PermissionDeniedException(f"a {principal.role} key cannot do this; it needs {needed}")
    wait = state.buckets.take(
        principal.name if principal.key_id is None else f"key{principal.key_id}"
    )
    if wait > 0:
        raise TooManyRequestsException(
            f"rate limit exceeded; retry in {wait:.2f} s",
            headers={"Retry-After": str(max(1, round(wait)))},
        )
