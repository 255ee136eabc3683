"""The description embedder against the library it stands in for."""

from __future__ import annotations

import numpy as np

from registry.embeddings import BATCH, MiniLMEmbedder


def test_vectors_are_sentence_transformers_bit_for_bit(embedder: MiniLMEmbedder) -> None:
    """Registries hold vectors SentenceTransformer.encode made; the direct call must give
    the same bits, alone, in a padded batch and across batches of mixed lengths."""
    texts = [f"Is this text about topic {i}?" + " Answer yes or no." * (i % 4) for i in range(70)]
    texts += ["word " * 400, "é ü ß 漢字", "", "x"]  # truncated, non-ASCII, empty, one token
    for chosen in (texts[:1], texts[:9], texts):
        reference = embedder._model.encode(
            chosen, batch_size=BATCH, convert_to_numpy=True, normalize_embeddings=True
        )
        vectors = embedder.encode(chosen)
        assert vectors.dtype == np.float32 and vectors.shape == (len(chosen), embedder.dim)
        assert np.array_equal(vectors, reference)
    assert embedder.encode([]).shape == (0, embedder.dim)
