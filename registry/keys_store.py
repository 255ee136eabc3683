"""API keys: who may call the registry's REST API, and in which role.

A key's secret is shown once, when it is created; the registry keeps only its
sha256, so a leaked database or backup grants nothing. A secret is 256 random
bits: an unsalted fast hash is enough (there is nothing to guess), and the
timing of a lookup by hash leaks nothing about the secret.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from registry.db import changed_rows, transaction
from registry.errors import InvalidInput, KeyNotFound
from registry.models import ApiKeyRole, ApiKeyRow, EndedSessionRow, utcnow
from registry.records import ApiKeyRecord

SECRET_PREFIX = "lm_"
# "lm_" and 8 characters of the secret: enough to tell keys apart, useless to guess with
PREFIX_CHARS = 11
MAX_SECRET_CHARS = 200
# last_used_at is a hint, not an audit log: at most one write a minute per key
LAST_USED_EVERY = timedelta(minutes=1)


class _Host(Protocol):
    """What ``KeyStore`` needs from the registry it is mixed into."""

    _sessions: sessionmaker[Session]


class KeyStore:
    """The API key half of ``Registry`` (kept apart so service.py stays readable)."""

    def create_api_key(self: _Host, name: str, role: str) -> tuple[ApiKeyRecord, str]:
        """A new key and its secret: the only time the secret is returned."""
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise InvalidInput(f"API key name {name!r} must be 1-200 characters")
        if not name.isprintable():
            raise InvalidInput(f"API key name {name!r} must be printable")
        try:
            checked = ApiKeyRole(role)
        except ValueError as exc:
            allowed = ", ".join(r.value for r in ApiKeyRole)
            raise InvalidInput(f"API key role must be one of {allowed}, got {role!r}") from exc
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        with transaction(self._sessions) as s:
            row = ApiKeyRow(
                name=name,
                role=checked.value,
                prefix=secret[:PREFIX_CHARS],
                key_hash=_digest(secret),
                created_at=utcnow(),
            )
            s.add(row)
            s.flush()
            return ApiKeyRecord.of(row), secret

    def authenticate(self: _Host, secret: str) -> ApiKeyRecord | None:
        """The live key whose secret this is; None for an unknown or revoked one."""
        if (
            not isinstance(secret, str)
            or not secret.startswith(SECRET_PREFIX)
            or len(secret) > MAX_SECRET_CHARS
            or not secret.isascii()
        ):
            return None
        digest = _digest(secret)
        with self._sessions() as s:
            row = s.scalar(sa.select(ApiKeyRow).where(ApiKeyRow.key_hash == digest))
            if row is None or row.revoked_at is not None:
                return None
            if not hmac.compare_digest(row.key_hash, digest):
                return None
            record = ApiKeyRecord.of(row)
        now = utcnow()
        if record.last_used_at is not None and now - record.last_used_at < LAST_USED_EVERY:
            return record
        with transaction(self._sessions) as s:
            recorded = changed_rows(
                s,
                sa.update(ApiKeyRow)
                .where(
                    ApiKeyRow.id == record.id,
                    ApiKeyRow.revoked_at.is_(None),
                    sa.or_(
                        ApiKeyRow.last_used_at.is_(None),
                        ApiKeyRow.last_used_at < now - LAST_USED_EVERY,
                    ),
                )
                .values(last_used_at=now),
            )
        # nothing changed: a concurrent request recorded the use first
        return dataclasses.replace(record, last_used_at=now) if recorded else record

    def list_api_keys(self: _Host) -> list[ApiKeyRecord]:
        """Every key, revoked ones included (``revoked_at`` says so), oldest first."""
        with self._sessions() as s:
            rows = s.scalars(sa.select(ApiKeyRow).order_by(ApiKeyRow.id)).all()
            return [ApiKeyRecord.of(r) for r in rows]

    def get_api_key(self: _Host, key_id: int) -> ApiKeyRecord:
        """One key by id, revoked or not (``revoked_at`` says so)."""
        with self._sessions() as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                raise KeyNotFound(f"no API key with id {key_id}")
            return ApiKeyRecord.of(row)

    def key_is_live(self: _Host, key_id: int) -> bool:
        """Whether key ``key_id`` exists and is not revoked: one primary-key read, cheap
        enough for every request (a revocation holds from the next request on)."""
        with self._sessions() as s:
            revoked = s.execute(_REVOKED_AT, {"key_id": key_id}).first()
            return revoked is not None and revoked[0] is None

    def revoke_api_key(self: _Host, key_id: int) -> ApiKeyRecord:
        """Revoke a key for good; revoking it again changes nothing."""
        with transaction(self._sessions) as s:
            changed_rows(
                s,
                sa.update(ApiKeyRow)
                .where(ApiKeyRow.id == key_id, ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=utcnow()),
            )
            row = s.get(ApiKeyRow, key_id, populate_existing=True)
            if row is None:
                raise KeyNotFound(f"no API key with id {key_id}")
            return ApiKeyRecord.of(row)

    # -- admin UI sessions ---------------------------------------------------

    def end_session(self: _Host, sid: str, expires_at: datetime) -> None:
        """Remember that UI session ``sid`` ended (logged out) until its cookie would
        have expired; forget sessions whose cookies have expired since."""
        if not isinstance(sid, str) or not 0 < len(sid) <= 64:
            raise InvalidInput("a session id is 1-64 characters")
        with transaction(self._sessions) as s:
            s.execute(sa.delete(EndedSessionRow).where(EndedSessionRow.expires_at < utcnow()))
            if s.get(EndedSessionRow, sid) is None:
                s.add(EndedSessionRow(sid=sid, expires_at=expires_at))

    def session_ended(self: _Host, sid: str) -> bool:
        """Whether UI session ``sid`` was ended by logging out (one primary-key read)."""
        with self._sessions() as s:
            return s.get(EndedSessionRow, sid) is not None


# built once: every authenticated request runs it
_REVOKED_AT = sa.select(ApiKeyRow.revoked_at).where(ApiKeyRow.id == sa.bindparam("key_id"))


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
