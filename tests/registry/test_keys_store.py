"""API keys in the registry, on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from registry.errors import InvalidInput, KeyNotFound
from registry.models import ApiKeyRow
from registry.service import Registry


def test_create_authenticate_revoke(registry: Registry) -> None:
    before = datetime.now(UTC)
    admin, admin_secret = registry.create_api_key("ops team", "admin")
    reader, reader_secret = registry.create_api_key("dashboard", "reader")
    assert admin_secret.startswith("lm_") and len(admin_secret) >= 40
    assert admin_secret != reader_secret
    assert admin.name == "ops team" and admin.role == "admin" and reader.role == "reader"
    assert admin.prefix == admin_secret[:11] and admin.created_at >= before
    assert admin.last_used_at is None and admin.revoked_at is None
    assert not hasattr(admin, "key_hash")

    found = registry.authenticate(admin_secret)
    assert found is not None and found.id == admin.id and found.role == "admin"
    assert found.last_used_at is not None and found.last_used_at >= before
    found = registry.authenticate(reader_secret)
    assert found is not None and found.id == reader.id and found.role == "reader"
    assert registry.list_api_keys()[0].last_used_at is not None

    revoked = registry.revoke_api_key(admin.id)
    assert revoked.revoked_at is not None and revoked.id == admin.id
    assert registry.authenticate(admin_secret) is None
    assert registry.revoke_api_key(admin.id) == revoked  # revoking again changes nothing
    assert registry.authenticate(reader_secret) is not None
    listed = registry.list_api_keys()
    assert [k.id for k in listed] == [admin.id, reader.id]
    assert listed[0].revoked_at == revoked.revoked_at and listed[1].revoked_at is None
    assert registry.get_api_key(admin.id) == listed[0]
    assert registry.get_api_key(reader.id).revoked_at is None


def test_wrong_secrets_are_refused(registry: Registry) -> None:
    _, secret = registry.create_api_key("ops", "admin")
    for wrong in (
        "",
        "lm_",
        secret[:-1],
        secret + "x",
        secret.upper(),
        secret[3:],  # without the prefix
        "lm_" + "a" * 43,
        "lm_" + "é" * 43,
        "lm_\udc80",  # not encodable: refused, not an error
        "lm_" + "x" * 10_000,
        hashlib.sha256(secret.encode()).hexdigest(),  # the stored hash is not a secret
    ):
        assert registry.authenticate(wrong) is None, wrong
    assert registry.authenticate(None) is None  # type: ignore[arg-type]  # a missing key at runtime


def test_only_the_hash_is_stored(registry: Registry) -> None:
    rec, secret = registry.create_api_key("ops", "admin")
    registry.authenticate(secret)
    with registry.engine.connect() as conn:
        row = conn.execute(sa.select(ApiKeyRow.__table__).where(ApiKeyRow.id == rec.id)).one()
    stored = " ".join(str(value) for value in row)
    assert secret not in stored and secret[11:] not in stored
    assert row.key_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert row.prefix == secret[:11]
    database = registry.engine.url.database
    if registry.engine.dialect.name == "sqlite" and database:
        for path in Path(database).parent.glob(Path(database).name + "*"):
            assert secret[11:].encode() not in path.read_bytes(), path


def test_last_used_is_written_at_most_once_a_minute(registry: Registry) -> None:
    rec, secret = registry.create_api_key("ops", "reader")
    first = registry.authenticate(secret)
    assert first is not None and first.last_used_at is not None
    second = registry.authenticate(secret)
    assert second is not None and second.last_used_at == first.last_used_at
    assert registry.list_api_keys()[0].last_used_at == first.last_used_at

    old = datetime.now(UTC) - timedelta(minutes=2)
    with registry.engine.begin() as conn:
        conn.execute(sa.update(ApiKeyRow).where(ApiKeyRow.id == rec.id).values(last_used_at=old))
    third = registry.authenticate(secret)
    assert third is not None and third.last_used_at is not None
    assert third.last_used_at > first.last_used_at
    assert registry.list_api_keys()[0].last_used_at == third.last_used_at


def test_bad_input(registry: Registry) -> None:
    for name, role, message in (
        ("ops", "root", "role must be one of admin, reader"),
        ("ops", "", "role must be one of"),
        ("", "admin", "API key name"),
        ("   ", "admin", "API key name"),
        ("n" * 201, "admin", "API key name"),
        ("two\nlines", "admin", "printable"),
    ):
        with pytest.raises(InvalidInput, match=message):
            registry.create_api_key(name, role)
    assert registry.list_api_keys() == []
    with pytest.raises(KeyNotFound, match="no API key with id 42"):
        registry.revoke_api_key(42)
    with pytest.raises(KeyNotFound, match="no API key with id 42"):
        registry.get_api_key(42)
