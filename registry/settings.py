"""Settings: every ``LORAMINT_*`` environment variable, read and checked here, once.

``VARIABLES`` declares each variable (its name, default and meaning; the
README's configuration table is ``configuration_table()``'s output, and a test
holds the two together). ``Settings.from_env`` reads the service's variables
into frozen dataclasses, one per concern (the store, the REST API, the admin
UI, jobs), when a process starts (``get_settings``), never at import time; a
bad value is an ``InvalidInput`` that names the variable. Nothing else in the
project reads ``LORAMINT_*`` from the environment: the CLI, the server and the
worker take these objects as arguments. ``ToolSettings`` holds the few
variables only the notebooks and the test suite read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from registry.devices import check_device_name
from registry.errors import InvalidInput

# a description (of an adapter, a generation request, a search) is at most this long
MAX_DESCRIPTION_CHARS = 2000
HEARTBEAT_SECONDS = 2.0  # how often a running job reports; a lease must outlast it


@dataclass(frozen=True)
class Variable:
    name: str
    default: str  # as the configuration table shows it
    meaning: str


VARIABLES: tuple[Variable, ...] = (
    Variable(
        "LORAMINT_HOME", "`~/.loramint`", "registry database, blobs, index files, model cache"
    ),
    Variable(
        "LORAMINT_DATABASE_URL",
        "`sqlite:///$LORAMINT_HOME/registry.db`",
        "SQLAlchemy URL; `postgresql://user@host/db` uses psycopg 3",
    ),
    Variable("LORAMINT_MODEL_CACHE", "`$LORAMINT_HOME/models`", "converted base models"),
    Variable("LORAMINT_MAX_ADAPTER_MB", "`512`", "upload size limit"),
    Variable(
        "LORAMINT_EXACT_INDEX_MAX",
        "`20000`",
        "above this many adapters per base model, search uses HNSW instead of exact",
    ),
    Variable(
        "LORAMINT_ALLOW_HUB",
        "`0`",
        "`1` lets Hugging Face ids download; otherwise the offline variables are set",
    ),
    Variable(
        "LORAMINT_API_OPEN",
        "`0`",
        "`1`: reading and generating need no key (local use); changes always need an admin key",
    ),
    Variable("LORAMINT_API_RATE", "`20`", "requests per second per key (token bucket refill)"),
    Variable("LORAMINT_API_BURST", "`200`", "token bucket size per key"),
    Variable("LORAMINT_API_MAX_JOBS", "`4`", "queued + running jobs accepted at once"),
    Variable("LORAMINT_API_MAX_K", "`100`", "largest `k` of a semantic search"),
    Variable(
        "LORAMINT_BATCH_WINDOW_MS",
        "`10`",
        "generation micro-batching window in milliseconds (`0`: no batching)",
    ),
    Variable("LORAMINT_BATCH_MAX", "`32`", "largest generation batch"),
    Variable(
        "LORAMINT_BATCH_WORKERS",
        "the process's CPUs",
        "generation batches a server process runs at once, each on its own thread "
        "(a process's CPUs: the CPUs / `serve --workers`)",
    ),
    Variable(
        "LORAMINT_BATCH_THREADS",
        "`1`",
        "torch threads of a zero-shot generation batch",
    ),
    Variable(
        "LORAMINT_GENERATED_STORAGE",
        "`recipe`",
        "`recipe`: generated adapters kept as what rebuilds them; `weights`: as blobs",
    ),
    Variable(
        "LORAMINT_EMBED_PRECISION",
        "`auto`",
        "description embedder: `auto` runs it in bfloat16 where the CPU has native bfloat16 "
        "products (vectors within 0.003 of float32's similarities), `float32` everywhere",
    ),
    Variable("LORAMINT_RECIPE_CACHE_MB", "`256`", "rebuilt recipe weights kept in memory"),
    Variable(
        "LORAMINT_DEVICE",
        "`auto`",
        "where the service and the worker run base models: few-shot generation, ICM-LoRA's "
        "task vectors, transfers; `auto` (a CUDA GPU if torch sees one), `cpu`, `cuda`, "
        "`cuda:N`",
    ),
    Variable(
        "LORAMINT_SESSION_SECRET",
        "made once in `$LORAMINT_HOME/session_secret`",
        "admin UI session cookie secret (32+ characters; the same on every replica)",
    ),
    Variable("LORAMINT_UI_SECURE_COOKIE", "`0`", "`1`: UI session cookies only over HTTPS"),
    Variable(
        "LORAMINT_JOB_LEASE_S",
        "`120`",
        "a job whose worker sent no heartbeat for this long is taken over by another worker",
    ),
    Variable(
        "LORAMINT_NOTEBOOK_SMALL",
        "`0`",
        "notebooks only: `1` runs them on the tiny sandbox world (`generator/sandbox.py`)",
    ),
    Variable(
        "LORAMINT_NOTEBOOK_WORLD",
        "a temporary folder",
        "notebooks only: where the sandbox world is built and kept",
    ),
    Variable(
        "LORAMINT_TEST_PG_URL",
        "`postgresql+psycopg://postgres@127.0.0.1:5432/test`",
        "test suite only: the PostgreSQL server the registry tests also run on",
    ),
    Variable(
        "LORAMINT_TEST_OUTPUT",
        "the test's temporary folder",
        "test suite only: where UI screenshots and the schemathesis report go",
    ),
)
_NAMES = {v.name for v in VARIABLES}


def configuration_table() -> str:
    """The README's configuration table (Markdown), from ``VARIABLES``."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{v.name}` | {v.default} | {v.meaning} |" for v in VARIABLES]
    return "\n".join(lines) + "\n"


class _Env:
    """Typed reads of declared variables from one environment mapping."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str) -> str | None:
        assert name in _NAMES, f"{name} is not declared in VARIABLES"
        value = self.env.get(name)
        return value if value else None

    def flag(self, name: str) -> bool:
        raw = (self.text(name) or "0").strip().lower()
        if raw not in ("0", "1", "true", "false", "yes", "no"):
            raise InvalidInput(f"{name} must be 0 or 1, got {raw!r}")
        return raw in ("1", "true", "yes")

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise InvalidInput(f"{name} must be a number, got {raw!r}") from None
        if not value >= minimum:  # NaN fails too
            raise InvalidInput(f"{name} must be at least {minimum:g}, got {raw!r}")
        return value

    def integer(self, name: str, default: int, *, minimum: int = 0) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise InvalidInput(f"{name} must be an integer, got {raw!r}") from None
        if value < minimum:
            raise InvalidInput(f"{name} must be at least {minimum}, got {raw!r}")
        return value


@dataclass(frozen=True)
class ApiSettings:
    """The HTTP service."""

    open_access: bool = False
    rate: float = 20.0
    burst: float = 200.0
    max_jobs: int = 4
    max_k: int = 100
    batch_window: float = 0.01  # seconds
    batch_max: int = 32
    # torch threads a zero-shot generation batch runs with
    batch_threads: int = 1
    # batches a server process generates at once, each on its own thread; 0: one per
    # CPU of the process's share
    batch_workers: int = 0

    @classmethod
    def read(cls, env: _Env) -> ApiSettings:
        return cls(
            open_access=env.flag("LORAMINT_API_OPEN"),
            rate=env.number("LORAMINT_API_RATE", 20.0, minimum=0.001),
            burst=env.number("LORAMINT_API_BURST", 200.0, minimum=1),
            max_jobs=env.integer("LORAMINT_API_MAX_JOBS", 4, minimum=1),
            max_k=env.integer("LORAMINT_API_MAX_K", 100, minimum=1),
            batch_window=env.number("LORAMINT_BATCH_WINDOW_MS", 10.0) / 1000,
            batch_max=env.integer("LORAMINT_BATCH_MAX", 32, minimum=1),
            batch_threads=env.integer("LORAMINT_BATCH_THREADS", 1, minimum=1),
            batch_workers=env.integer("LORAMINT_BATCH_WORKERS", 0, minimum=0),
        )

    def generation_workers(self, cpus: int) -> int:
        """Generation batches a process runs at once: ``batch_workers``, or one per CPU of
        the ``cpus`` its batches share."""
        return self.batch_workers or max(1, cpus)

    @property
    def auth_mode(self) -> str:
        return (
            "open: reading and generating need no key; changes need an admin key"
            if self.open_access
            else "keys: every /v1 request needs a Bearer key (reader or admin)"
        )


MIN_SECRET_CHARS = 32


@dataclass(frozen=True)
class UiSettings:
    """The admin UI's session cookies."""

    secure_cookie: bool = False
    # None: a secret made once and kept in the home folder (api.ui.sessions)
    session_secret: str | None = None

    def __post_init__(self) -> None:
        if self.session_secret is not None and len(self.session_secret) < MIN_SECRET_CHARS:
            raise InvalidInput(
                f"LORAMINT_SESSION_SECRET must be at least {MIN_SECRET_CHARS} characters "
                f"(got {len(self.session_secret)}); make one with `openssl rand -hex 32`"
            )

    @classmethod
    def read(cls, env: _Env) -> UiSettings:
        return cls(
            secure_cookie=env.flag("LORAMINT_UI_SECURE_COOKIE"),
            session_secret=env.text("LORAMINT_SESSION_SECRET"),
        )


@dataclass(frozen=True)
class JobSettings:
    """Workers: a claim without a heartbeat for ``lease_seconds`` is taken over."""

    lease_seconds: float = 120.0

    def __post_init__(self) -> None:
        if not self.lease_seconds > HEARTBEAT_SECONDS:
            raise InvalidInput(
                f"LORAMINT_JOB_LEASE_S must be above {HEARTBEAT_SECONDS:g} s (the heartbeat), "
                f"got {self.lease_seconds:g}"
            )

    @classmethod
    def read(cls, env: _Env) -> JobSettings:
        return cls(lease_seconds=env.number("LORAMINT_JOB_LEASE_S", 120.0))


STORAGE = ("recipe", "weights")
EMBED_PRECISIONS = ("auto", "float32")  # the description embedder's (registry.embeddings)


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    model_cache: Path
    # Uploads above this are refused before anything is parsed. A LoRA r=8 on
    # q/v of a 7B model is ~17 MB; 512 MB leaves room for big ranks and models.
    max_adapter_bytes: int = 512 * 1024 * 1024
    max_description_chars: int = MAX_DESCRIPTION_CHARS
    allow_hub: bool = False
    embedder: str = "all-minilm-l6-v2"
    embed_precision: str = "auto"  # the description embedder's, registry.embeddings
    # Below this many vectors per base model the index is exact (flat inner
    # product); above it, HNSW. bench/search.py measures the crossover.
    exact_index_max: int = 20_000
    # generated adapters: "recipe" (a few hundred bytes, weights rebuilt on download)
    # or "weights" (stored like any adapter); registry.recipes
    generated_storage: str = "recipe"
    recipe_cache_bytes: int = 256 * 1024 * 1024
    device: str = "auto"  # the service's and worker's base models (registry.devices)
    api: ApiSettings = field(default_factory=ApiSettings)
    ui: UiSettings = field(default_factory=UiSettings)
    jobs: JobSettings = field(default_factory=JobSettings)

    def __post_init__(self) -> None:
        if self.max_adapter_bytes <= 0:
            raise InvalidInput(f"max_adapter_bytes must be positive, got {self.max_adapter_bytes}")
        if self.exact_index_max < 0:
            raise InvalidInput(f"exact_index_max must be >= 0, got {self.exact_index_max}")
        if self.generated_storage not in STORAGE:
            raise InvalidInput(
                f"LORAMINT_GENERATED_STORAGE must be one of {', '.join(STORAGE)}, "
                f"got {self.generated_storage!r}"
            )
        try:
            object.__setattr__(self, "device", check_device_name(self.device))
        except InvalidInput as exc:
            raise InvalidInput(f"LORAMINT_DEVICE: {exc}") from None
        if self.embed_precision not in EMBED_PRECISIONS:
            raise InvalidInput(
                f"LORAMINT_EMBED_PRECISION must be one of {', '.join(EMBED_PRECISIONS)}, "
                f"got {self.embed_precision!r}"
            )

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
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = _Env(os.environ if environ is None else environ)
        home = Path(env.text("LORAMINT_HOME") or Path.home() / ".loramint").expanduser()
        url = env.text("LORAMINT_DATABASE_URL") or f"sqlite:///{home / 'registry.db'}"
        cache = Path(env.text("LORAMINT_MODEL_CACHE") or home / "models").expanduser()
        max_mb = env.number("LORAMINT_MAX_ADAPTER_MB", 512.0, minimum=0.001)
        return cls(
            home=home,
            database_url=url,
            model_cache=cache,
            max_adapter_bytes=int(max_mb * 1024 * 1024),
            allow_hub=env.flag("LORAMINT_ALLOW_HUB"),
            exact_index_max=env.integer("LORAMINT_EXACT_INDEX_MAX", 20_000),
            generated_storage=env.text("LORAMINT_GENERATED_STORAGE") or "recipe",
            embed_precision=env.text("LORAMINT_EMBED_PRECISION") or "auto",
            recipe_cache_bytes=int(env.number("LORAMINT_RECIPE_CACHE_MB", 256.0) * 1024 * 1024),
            device=env.text("LORAMINT_DEVICE") or "auto",
            api=ApiSettings.read(env),
            ui=UiSettings.read(env),
            jobs=JobSettings.read(env),
        )

    def environment(self) -> dict[str, str]:
        """Variables that give another process (a Ray task, a subprocess) the settings it
        needs to open the same registry and run its jobs alike."""
        env = {
            "LORAMINT_HOME": str(self.home),
            "LORAMINT_DATABASE_URL": self.database_url,
            "LORAMINT_MODEL_CACHE": str(self.model_cache),
            "LORAMINT_MAX_ADAPTER_MB": repr(self.max_adapter_bytes / (1024 * 1024)),
            "LORAMINT_ALLOW_HUB": "1" if self.allow_hub else "0",
            "LORAMINT_EXACT_INDEX_MAX": str(self.exact_index_max),
            "LORAMINT_JOB_LEASE_S": repr(self.jobs.lease_seconds),
            "LORAMINT_GENERATED_STORAGE": self.generated_storage,
            "LORAMINT_EMBED_PRECISION": self.embed_precision,
            "LORAMINT_RECIPE_CACHE_MB": repr(self.recipe_cache_bytes / (1024 * 1024)),
            "LORAMINT_DEVICE": self.device,
        }
        return env


@dataclass(frozen=True)
class ToolSettings:
    """Variables that only the notebooks and the test suite read."""

    notebook_small: bool = False
    notebook_world: Path | None = None
    test_pg_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    test_output: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ToolSettings:
        env = _Env(os.environ if environ is None else environ)
        world, output = env.text("LORAMINT_NOTEBOOK_WORLD"), env.text("LORAMINT_TEST_OUTPUT")
        return cls(
            notebook_small=env.flag("LORAMINT_NOTEBOOK_SMALL"),
            notebook_world=Path(world) if world else None,
            test_pg_url=env.text("LORAMINT_TEST_PG_URL") or cls.test_pg_url,
            test_output=Path(output) if output else None,
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
