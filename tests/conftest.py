"""Shared fixtures.

- Every registry test runs twice: on a SQLite file and on the PostgreSQL server
  at 127.0.0.1:5432 (database ``test``, one fresh schema per test). Where no
  server answers, the PostgreSQL half is skipped with that reason.
- Unit tests use a tiny randomly initialised Llama built from a config; tests
  marked ``slow`` use the real SmolLM2-135M from its PyPI package, converted
  once per test session into a fresh cache.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PG_URL = os.environ.get("LORAMINT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

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
def embedder():  # type: ignore[no-untyped-def]
    """The real MiniLM description embedder, loaded once for the whole run."""
    from registry.embeddings import MiniLMEmbedder

    return MiniLMEmbedder()


TINY_CONFIG = dict(
    vocab_size=104,  # the character tokenizer below
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    # a wider init than Llama's 0.02, so that the tiny model's logits can move
    # far enough for a LoRA to change its answers in a few steps
    initializer_range=0.2,
)


def char_tokenizer():  # type: ignore[no-untyped-def]
    """A character-level tokenizer with a ChatML-style chat template (no download)."""
    import string

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials + list(string.printable))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="?"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tok


def save_tiny_llama(path: Path, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(**TINY_CONFIG)).save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised Llama (with a character tokenizer) saved as a local HF folder."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def make_lora(
    base: Path | torch.nn.Module,
    out: Path,
    *,
    r: int = 4,
    targets: list[str] | str = ("q_proj", "v_proj"),  # type: ignore[assignment]
    seed: int = 0,
    **extra: object,
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
        **extra,  # type: ignore[arg-type]
    )
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture
def settings_for(tmp_path: Path):  # type: ignore[no-untyped-def]
    from registry.settings import Settings

    def make(url: str, **kw: object) -> Settings:
        return Settings(
            home=tmp_path / "home",
            database_url=url,
            model_cache=tmp_path / "models",
            **kw,  # type: ignore[arg-type]
        )

    return make


@pytest.fixture
def registry(db_url: str, settings_for, embedder):  # type: ignore[no-untyped-def]
    from registry.service import Registry

    reg = Registry(settings_for(db_url), embedder=embedder)
    yield reg
    reg.close()


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> dict:
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
