"""Shared fixtures. The layout of ``tests/`` mirrors the packages: ``registry/``,
``generator/<stage>/``, ``api/``; ``test_architecture.py``, ``test_readme.py`` and
``test_notebooks.py`` check the repository as a whole.

- Every registry test runs twice: on a SQLite file and on the PostgreSQL server
  at 127.0.0.1:5432 (database ``test``, one fresh schema per test). Where no
  server answers, the PostgreSQL half is skipped with that reason.
- Unit tests use a tiny randomly initialised Llama built from a config; tests
  marked ``slow`` use the real SmolLM2-135M from its PyPI package, converted
  once per test session into a fresh cache.
- ``world``: the sandbox world (``generator.sandbox``: a registry holding a zoo of
  five tiny tasks and a held-out one), one per test module; modules that need
  another world define their own ``world``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import torch

# The tiny Llama and its character tokenizer live in generator.sandbox (the notebooks
# use them too); re-exported for the tests that import them from here.
from generator.sandbox import (  # noqa: F401
    TINY_CONFIG,
    SandboxWorld,
    build_world,
    char_tokenizer,
    save_tiny_llama,
)
from registry.embeddings import MiniLMEmbedder
from registry.service import Registry
from registry.settings import Settings, ToolSettings
from tests.worlds import TransferWorld, transfer_world

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PG_URL = ToolSettings.from_env().test_pg_url

_pg_reason: str | None = None


def _pg_available() -> str | None:
    """None when PostgreSQL answers, else the reason it does not."""
    global _pg_reason
    if _pg_reason is None:
        try:
            engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
            with engine.connect() as conn:
                conn.execute(sa.text("select 1"))
            engine.dispose()
            _pg_reason = ""
        except Exception as exc:  # any failure to connect means: skip, with the reason
            _pg_reason = f"PostgreSQL at {PG_URL} did not answer: {exc}"
    return _pg_reason or None


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    reason = _pg_available()
    if reason:
        pytest.skip(reason)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="session")
def embedder() -> MiniLMEmbedder:
    """The real MiniLM description embedder, loaded once for the whole run."""
    return MiniLMEmbedder()


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, embedder: MiniLMEmbedder
) -> Iterator[SandboxWorld]:
    """A registry (SQLite file) holding the sandbox zoo: five tiny tasks and a held-out
    one (``moon``), trained on ``tiny_base``."""
    built = build_world(tmp_path_factory.mktemp("world"), embedder=embedder, base=tiny_base)
    yield built
    built.close()


TINY_GEMMA_CONFIG: dict[str, Any] = dict(
    vocab_size=120,  # the plain character tokenizer below: other ids than the Llama's
    hidden_size=48,
    intermediate_size=64,
    num_hidden_layers=3,
    layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    sliding_window=256,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=16,
    max_position_embeddings=1024,
    initializer_range=0.2,
)


def plain_char_tokenizer() -> Any:
    """A character tokenizer like a base model's: no chat template, a <bos> first, and a
    vocabulary laid out differently from ``char_tokenizer``'s."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    extra = [f"<unused{i}>" for i in range(120 - len(specials) - len(string.printable))]
    vocab = {t: i for i, t in enumerate(specials + extra + list(reversed(string.printable)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    backend.decoder = decoders.Fuse()  # characters join without spaces
    # transformers' TokenizersBackend.__init__ (PreTrainedTokenizerFast) is unannotated
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
    )


def save_tiny_gemma(path: Path, seed: int = 0) -> Path:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    Gemma3ForCausalLM(Gemma3TextConfig(**TINY_GEMMA_CONFIG)).save_pretrained(path)
    plain_char_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised Gemma3 (text) with a plain character tokenizer: another
    architecture, vocabulary, width and depth than ``tiny_base``."""
    return save_tiny_gemma(tmp_path_factory.mktemp("tiny-gemma"))


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised Llama (with a character tokenizer) saved as a local HF folder."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def make_lora(
    base: Path | torch.nn.Module,
    out: Path,
    *,
    r: int = 4,
    targets: Sequence[str] | str = ("q_proj", "v_proj"),
    seed: int = 0,
    **extra: Any,
) -> Path:
    """Save a PEFT LoRA with random non-zero A and B on ``base`` to ``out``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base) if isinstance(base, Path) else base
    torch.manual_seed(seed)
    config = LoraConfig(
        r=r,
        lora_alpha=2 * r,
        target_modules=list(targets) if not isinstance(targets, str) else targets,
        init_lora_weights=False,
        **extra,
    )
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(str(out))
    return out


SettingsFor = Callable[..., Settings]  # (database URL, **other settings) -> Settings


@pytest.fixture
def settings_for(tmp_path: Path) -> SettingsFor:
    def make(url: str, **kw: Any) -> Settings:
        return Settings(
            home=tmp_path / "home", database_url=url, model_cache=tmp_path / "models", **kw
        )

    return make


@pytest.fixture
def registry(
    db_url: str, settings_for: SettingsFor, embedder: MiniLMEmbedder
) -> Iterator[Registry]:
    reg = Registry(settings_for(db_url), embedder=embedder)
    yield reg
    reg.close()


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """SmolLM2-135M converted from its PyPI GGUF into a fresh cache, by two
    ``loramint models prepare`` processes started at once (the lock test)."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("smollm2")
    env = {
        **os.environ,
        "LORAMINT_HOME": str(root / "home"),
        "LORAMINT_MODEL_CACHE": str(root / "models"),
    }
    env.pop("LORAMINT_DATABASE_URL", None)
    cmd = [sys.executable, "-m", "api.cli", "models", "prepare", "smollm2-135m-instruct"]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=900), *p.communicate()) for p in procs]
    return {"cache": root / "models", "results": results}


@pytest.fixture(scope="module")
def transfer(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_base: Path,
    tiny_gemma: Path,
    embedder: MiniLMEmbedder,
) -> Iterator[TransferWorld]:
    """The tiny transfer world (``tests.worlds``), one per test module."""
    w = transfer_world(tmp_path_factory.mktemp("transfer"), tiny_base, tiny_gemma, embedder)
    yield w
    w.registry.close()


@pytest.fixture
def transfer_store(
    db_url: str, tmp_path: Path, tiny_base: Path, tiny_gemma: Path, embedder: MiniLMEmbedder
) -> Iterator[TransferWorld]:
    """The same world on SQLite and on PostgreSQL (for tests of the job store)."""
    w = transfer_world(tmp_path, tiny_base, tiny_gemma, embedder, url=db_url)
    yield w
    w.registry.close()
