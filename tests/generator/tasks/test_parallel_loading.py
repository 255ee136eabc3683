"""Models loaded in parallel threads (a server's worker beside its request threads) come
out whole: transformers swaps process-wide functions while it loads (weight
initialisers, weight tying), so loads hold ``MODEL_LOADING`` one at a time."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from generator.tasks.evaluation import load_base


def test_parallel_loads_tie_and_initialise_every_parameter(tiny_gemma: Path) -> None:
    def load(_: int) -> Any:
        model, _tokenizer = load_base(tiny_gemma)
        return model

    with ThreadPoolExecutor(max_workers=4) as pool:
        models = list(pool.map(load, range(12)))
    for model in models:
        on_meta = [n for n, p in model.named_parameters() if p.is_meta]
        assert on_meta == []
        # the tiny Gemma ties its output layer to the embeddings (nothing stored for it)
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
