"""``loramint demo``'s reuse of what an earlier run left: its admin key and its score."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from api.cli_demo import KEY_FILE, _admin_key, _cached
from registry.service import Registry


def test_the_demo_admin_key_is_kept_private_and_reused_until_revoked(registry: Registry) -> None:
    first = _admin_key(registry)
    path = registry.settings.home / KEY_FILE
    assert path.read_text().strip() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _admin_key(registry) == first  # the second run prints the same key
    assert len(registry.list_api_keys()) == 1
    rec = registry.authenticate(first)
    assert rec is not None and rec.role == "admin"
    registry.revoke_api_key(rec.id)
    second = _admin_key(registry)  # a revoked key is replaced, not printed again
    assert second != first and registry.authenticate(second) is not None
    path.write_text("lm_not-a-key\n")
    assert _admin_key(registry) not in (first, second, "lm_not-a-key")


def test_a_cached_score_belongs_to_one_adapter(tmp_path: Path) -> None:
    path = tmp_path / "demo.json"
    assert _cached(path, 1) is None
    path.write_text(json.dumps({"adapter_id": 7, "bare": 0.5, "generated": 0.7}))
    assert _cached(path, 7) == {"adapter_id": 7, "bare": 0.5, "generated": 0.7}
    assert _cached(path, 8) is None  # another adapter was generated: score it again
    path.write_text("{not json")
    assert _cached(path, 7) is None
