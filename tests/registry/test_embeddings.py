"""The description embedder against the library it stands in for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from registry.embeddings import BATCH, MiniLMEmbedder, native_bf16
from registry.errors import InvalidInput
from registry.settings import Settings

TEXTS = [f"Is this text about topic {i}?" + " Answer yes or no." * (i % 4) for i in range(70)]
TEXTS += ["word " * 400, "é ü ß 漢字", "", "x"]  # truncated, non-ASCII, empty, one token


@pytest.fixture(scope="module")
def float32() -> MiniLMEmbedder:
    return MiniLMEmbedder(precision="float32")


def test_float32_vectors_are_sentence_transformers_bit_for_bit(float32: MiniLMEmbedder) -> None:
    """In float32 the written-out forward gives SentenceTransformer.encode's bits, alone,
    in a padded batch and across batches of mixed lengths."""
    embedder = float32
    assert not embedder.bfloat16
    texts = TEXTS
    for chosen in (texts[:1], texts[:9], texts):
        reference = embedder._model.encode(
            chosen, batch_size=BATCH, convert_to_numpy=True, normalize_embeddings=True
        )
        vectors = embedder.encode(chosen)
        assert vectors.dtype == np.float32 and vectors.shape == (len(chosen), embedder.dim)
        assert np.array_equal(vectors, reference)
    assert embedder.encode([]).shape == (0, embedder.dim)


def test_default_runs_in_bfloat16_only_where_the_cpu_has_it(
    embedder: MiniLMEmbedder, float32: MiniLMEmbedder
) -> None:
    """``auto`` (the default) runs the products in bfloat16 on a CPU with native bfloat16
    products; its unit vectors stay within 0.003 of float32's similarities."""
    assert embedder.bfloat16 == native_bf16()
    ours, reference = embedder.encode(TEXTS), float32.encode(TEXTS)
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    sims, ref_sims = ours @ reference.T, reference @ reference.T
    assert np.abs(sims - ref_sims).max() < 0.003
    if embedder.bfloat16:  # autocast is on: not float32's bits
        assert not np.array_equal(ours, reference)
    else:
        assert np.array_equal(ours, reference)


def test_bfloat16_vectors_are_bert_models_under_autocast_bit_for_bit(
    embedder: MiniLMEmbedder, float32: MiniLMEmbedder
) -> None:
    """The written-out forward with the linear layers stored in bfloat16 gives what
    ``BertModel`` under bfloat16 autocast over the float32 weights gives, bit for bit:
    storing the weights once and skipping the library's wrapping change nothing."""
    if not embedder.bfloat16:
        pytest.skip("this CPU has no native bfloat16 products: the default is float32")
    bert: Any = embedder._model[0].auto_model
    linears = [m for m in bert.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    norms = [m for m in bert.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.weight.dtype == torch.float32 for m in norms)
    for chosen in (TEXTS[:1], TEXTS[:9], TEXTS):  # alone, padded, truncated and odd
        reference = float32.library_encode(chosen, autocast=True)
        assert np.array_equal(embedder.encode(chosen), reference)
        assert np.array_equal(embedder.library_encode(chosen), reference)
    assert not np.array_equal(float32.library_encode(TEXTS[:9]), embedder.encode(TEXTS[:9]))


def test_the_written_out_forward_refuses_what_it_does_not_cover() -> None:
    from transformers import BertConfig, BertModel

    from registry.bert import BertEncoder

    config = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=16, hidden_act="relu")  # fmt: skip
    config._attn_implementation = "sdpa"
    with pytest.raises(ValueError, match="hidden_act is 'relu'"):
        BertEncoder(BertModel(config))
    config.hidden_act = "gelu"
    BertEncoder(BertModel(config))  # MiniLM's configuration is accepted


def test_native_bf16_reads_the_cpu_flags(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    assert not native_bf16(info)
    info.write_text("flags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n")
    assert native_bf16(info)
    info.write_text("flags\t\t: fpu amx_bf16 amx_tile\n")
    assert native_bf16(info)
    assert not native_bf16(tmp_path / "missing")


def test_a_wrong_precision_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="precision must be one of auto, float32"):
        MiniLMEmbedder(precision="bfloat16")
    env = {"LORAMINT_HOME": str(tmp_path), "LORAMINT_EMBED_PRECISION": "fp16"}
    with pytest.raises(InvalidInput, match="LORAMINT_EMBED_PRECISION must be one of"):
        Settings.from_env(env)
    assert Settings.from_env(env | {"LORAMINT_EMBED_PRECISION": "float32"}).embed_precision == (
        "float32"
    )
