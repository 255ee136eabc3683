import re
from pathlib import Path

import pytest

from registry.errors import InvalidInput
from registry.settings import VARIABLES, Settings, ToolSettings

ROOT = Path(__file__).resolve().parents[2]


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
        ({"LORAMINT_MAX_ADAPTER_MB": "-1"}, "LORAMINT_MAX_ADAPTER_MB must be at least"),
        ({"LORAMINT_EXACT_INDEX_MAX": "1e9x"}, "LORAMINT_EXACT_INDEX_MAX"),
        ({"LORAMINT_API_OPEN": "maybe"}, "LORAMINT_API_OPEN must be 0 or 1"),
        ({"LORAMINT_API_RATE": "0"}, "LORAMINT_API_RATE must be at least"),
        ({"LORAMINT_BATCH_MAX": "many"}, "LORAMINT_BATCH_MAX must be an integer"),
        ({"LORAMINT_BATCH_THREADS": "0"}, "LORAMINT_BATCH_THREADS must be at least 1"),
        ({"LORAMINT_BATCH_WORKERS": "two"}, "LORAMINT_BATCH_WORKERS must be an integer"),
        ({"LORAMINT_UI_SECURE_COOKIE": "maybe"}, "LORAMINT_UI_SECURE_COOKIE"),
        ({"LORAMINT_SESSION_SECRET": "short"}, "LORAMINT_SESSION_SECRET must be at least 32"),
        ({"LORAMINT_JOB_LEASE_S": "1"}, "LORAMINT_JOB_LEASE_S must be above 2 s"),
        ({"LORAMINT_JOB_LEASE_S": "soon"}, "LORAMINT_JOB_LEASE_S must be a number"),
        ({"LORAMINT_DEVICE": "gpu"}, "LORAMINT_DEVICE: device must be auto, cpu, cuda or cuda:N"),
        ({"LORAMINT_DEVICE": "cuda:one"}, "LORAMINT_DEVICE: device 'cuda:one'"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        Settings.from_env(env)


def test_every_concern_is_read_in_one_go(tmp_path: Path) -> None:
    s = Settings.from_env(
        {
            "LORAMINT_HOME": str(tmp_path),
            "LORAMINT_API_OPEN": "1",
            "LORAMINT_BATCH_WINDOW_MS": "0",
            "LORAMINT_UI_SECURE_COOKIE": "1",
            "LORAMINT_SESSION_SECRET": "s" * 40,
            "LORAMINT_JOB_LEASE_S": "30",
            "LORAMINT_DEVICE": " CUDA:1 ",
        }
    )
    assert s.device == "cuda:1"  # checked and normalised, not looked for: a worker's GPU
    assert s.api.open_access and s.api.batch_window == 0.0 and s.api.max_k == 100
    assert s.ui.secure_cookie and s.ui.session_secret == "s" * 40
    assert s.jobs.lease_seconds == 30.0
    # another process given ``environment()`` opens the same registry alike
    again = Settings.from_env(s.environment())
    assert (again.home, again.database_url, again.model_cache) == (
        s.home, s.database_url, s.model_cache,
    )  # fmt: skip
    assert again.max_adapter_bytes == s.max_adapter_bytes and again.jobs == s.jobs
    assert again.device == "cuda:1"
    tools = ToolSettings.from_env({"LORAMINT_NOTEBOOK_SMALL": "1"})
    assert tools.notebook_small and tools.notebook_world is None


def _tracked_text_files() -> list[Path]:
    import subprocess

    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
        text=True, check=True,
    ).stdout.split()  # fmt: skip
    skip = (".png", ".jpg", ".ico", ".woff2")
    return [ROOT / p for p in listed if not p.endswith(skip) and (ROOT / p).is_file()]


def test_every_loramint_variable_is_declared_and_read_only_by_the_settings_module() -> None:
    declared = {v.name for v in VARIABLES}
    reader = re.compile(r"(?:environ\.get\(|environ\[|getenv\()\s*[\"'](LORAMINT_[A-Z0-9_]+)")
    undeclared, readers = set(), []
    for path in _tracked_text_files():
        if path.parts[-2:] == ("docs", "experiments.md"):
            continue  # the dated log speaks of the code as it was
        text = path.read_text(errors="replace")
        undeclared |= set(re.findall(r"\bLORAMINT_[A-Z0-9_]*[A-Z0-9]\b", text)) - declared
        if path.suffix == ".py" and path != ROOT / "registry" / "settings.py":
            readers += [f"{path.relative_to(ROOT)}: {m}" for m in reader.findall(text)]
    assert not undeclared, f"LORAMINT_* names not in registry.settings.VARIABLES: {undeclared}"
    assert not readers, f"read outside registry/settings.py: {readers}"


def test_one_generation_batch_per_cpu_of_the_process_on_one_thread_by_default() -> None:
    auto = Settings.from_env({}).api
    assert auto.generation_workers(4) == 4 and auto.batch_threads == 1
    assert auto.generation_workers(1) == 1 and auto.generation_workers(0) == 1
    one = Settings.from_env({"LORAMINT_BATCH_WORKERS": "1"}).api
    assert one.generation_workers(4) == 1
    both = Settings.from_env({"LORAMINT_BATCH_WORKERS": "3", "LORAMINT_BATCH_THREADS": "2"}).api
    assert both.generation_workers(1) == 3 and both.batch_threads == 2
