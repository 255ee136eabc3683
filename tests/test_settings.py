from pathlib import Path

import pytest

from registry.errors import InvalidInput
from registry.settings import Settings


def test_defaults_live_under_home(tmp_path: Path) -> None:
    s = Settings.from_env({"LORAMINT_HOME": str(tmp_path)})
    assert s.home == tmp_path
    assert s.database_url == f"sqlite:///{tmp_path / 'registry.db'}"
    assert s.model_cache == tmp_path / "models"
    assert s.blob_dir == tmp_path / "blobs"
    assert not s.allow_hub


def test_overrides(tmp_path: Path) -> None:
    s = Settings.from_env(
        {
            "LORAMINT_HOME": str(tmp_path),
            "LORAMINT_DATABASE_URL": "postgresql://u@h/db",
            "LORAMINT_MAX_ADAPTER_MB": "1.5",
            "LORAMINT_ALLOW_HUB": "yes",
        }
    )
    assert s.database_url == "postgresql://u@h/db"
    assert s.max_adapter_bytes == int(1.5 * 1024 * 1024)
    assert s.allow_hub


@pytest.mark.parametrize(
    "env, message",
    [
        ({"LORAMINT_MAX_ADAPTER_MB": "lots"}, "LORAMINT_MAX_ADAPTER_MB"),
        ({"LORAMINT_MAX_ADAPTER_MB": "-1"}, "max_adapter_bytes"),
        ({"LORAMINT_EXACT_INDEX_MAX": "1e9x"}, "LORAMINT_EXACT_INDEX_MAX"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        Settings.from_env(env)
