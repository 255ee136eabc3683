"""Settings, read once from the environment.

| variable                  | default                                   |
|---------------------------|-------------------------------------------|
| LORAMINT_HOME             | ~/.loramint                               |
| LORAMINT_DATABASE_URL     | sqlite:///$LORAMINT_HOME/registry.db      |
| LORAMINT_MODEL_CACHE      | $LORAMINT_HOME/models                     |
| LORAMINT_MAX_ADAPTER_MB   | 512                                       |
| LORAMINT_ALLOW_HUB        | 0 (never reach a model hub at run time)   |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from registry.errors import InvalidInput


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    model_cache: Path
    # Uploads above this are refused before anything is parsed. A LoRA r=8 on
    # q/v of a 7B model is ~17 MB; 512 MB leaves room for big ranks and models.
    max_adapter_bytes: int = 512 * 1024 * 1024
    max_description_chars: int = 2000
    allow_hub: bool = False
    embedder: str = "all-minilm-l6-v2"
    # Below this many vectors per base model the index is exact (flat inner
    # product); above it, HNSW. bench/search.py measures the crossover.
    exact_index_max: int = 20_000

    def __post_init__(self) -> None:
        if self.max_adapter_bytes <= 0:
            raise InvalidInput(f"max_adapter_bytes must be positive, got {self.max_adapter_bytes}")
        if self.exact_index_max < 0:
            raise InvalidInput(f"exact_index_max must be >= 0, got {self.exact_index_max}")

    @property
    def blob_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def index_dir(self) -> Path:
        return self.home / "index"

    @property
    def tasks_dir(self) -> Path:
        return self.home / "tasks"

    @property
    def results_dir(self) -> Path:
        return self.home / "results"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        home = Path(env.get("LORAMINT_HOME") or Path.home() / ".loramint").expanduser()
        url = env.get("LORAMINT_DATABASE_URL") or f"sqlite:///{home / 'registry.db'}"
        cache = Path(env.get("LORAMINT_MODEL_CACHE") or home / "models").expanduser()
        max_mb = env.get("LORAMINT_MAX_ADAPTER_MB", "512")
        try:
            max_bytes = int(float(max_mb) * 1024 * 1024)
        except ValueError as exc:
            raise InvalidInput(f"LORAMINT_MAX_ADAPTER_MB must be a number, got {max_mb!r}") from exc
        exact_max = env.get("LORAMINT_EXACT_INDEX_MAX", "20000")
        try:
            exact = int(exact_max)
        except ValueError as exc:
            raise InvalidInput(
                f"LORAMINT_EXACT_INDEX_MAX must be an integer, got {exact_max!r}"
            ) from exc
        return cls(
            home=home,
            database_url=url,
            model_cache=cache,
            max_adapter_bytes=max_bytes,
            allow_hub=env.get("LORAMINT_ALLOW_HUB", "0").lower() in {"1", "true", "yes"},
            exact_index_max=exact,
        )


def apply_offline_environment(settings: Settings) -> None:
    """Keep transformers / huggingface_hub / sentence-transformers off the network
    unless the operator explicitly allowed the hub."""
    if settings.allow_hub:
        return
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, loaded on first use (never at import time)."""
    settings = Settings.from_env()
    apply_offline_environment(settings)
    return settings
