"""The base model's key/value cache under the name the installed transformers uses.

transformers 5 renamed the models' ``past_key_values`` argument and output field
to ``cache``: the old name logs a deprecation on every call until 5.40 removes it.
The shared-prefix scorer and trainer hand a prefix's cache back to the model, so
they pass and read it through these two helpers, which work on releases from
before and after the rename.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any


@functools.cache
def cache_name() -> str:
    """``cache`` where transformers has renamed it, else ``past_key_values``
    (looked up on first use: a model is loaded by then, so importing is free)."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    fields = {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
    return "cache" if "cache" in fields else "past_key_values"


def passing(cache: Any) -> dict[str, Any]:
    """The keyword argument that hands ``cache`` to a model's forward."""
    return {cache_name(): cache}


def returned(output: Any) -> Any:
    """The cache a forward run with ``use_cache=True`` returned."""
    return getattr(output, cache_name())
