"""Rebuilding a recipe adapter's weights (``registry.recipes``): the registry's
recipe builder, declared as the ``loramint.recipe_builders`` entry point.

A recipe names its generator by id and checkpoint checksum; the rebuild loads
that generator (a few are kept loaded per registry) and decodes the adapter's
description embedding, as stored, with its seed: the same single-request decode
the generation path ran, with the rounding of the decoder version the recipe
records: "3" (the current one) and "2" by ``SGDecoder``, "1" (the network's batched
sampling pass, before ``SGDecoder``) by ``decode_v1``, so an upgrade loses none. Builds are
serialised (one decode at a time per registry), as the networks are not shared
between threads.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

import numpy as np
import torch

from generator.hypernet.networks import SGLoraNet
from generator.hypernet.tokens import from_tokens, to_tokens, var_tokens
from generator.serve.decode import VERSIONS
from generator.serve.generator import DECODER, Generator, Request
from registry.errors import CorruptBlob, GeneratorNotFound
from registry.lora_spec import Tensors, weights_bytes
from registry.recipes import Recipe, RecipeInput
from registry.service import Registry

KEEP_LOADED = 2  # generators a process keeps loaded for rebuilds


class Rebuilder:
    """Rebuilds recipe adapters of one registry (passed to each call: the registry
    owns its rebuilder, not the other way round)."""

    def __init__(self) -> None:
        self._loaded: OrderedDict[int, Generator] = OrderedDict()
        self._lock = threading.Lock()

    def generator(self, registry: Registry, recipe: Recipe) -> Generator:
        loaded = self._loaded.get(recipe.generator_id)
        if loaded is not None:
            self._loaded.move_to_end(recipe.generator_id)
            return loaded
        try:
            record = registry.get_generator(recipe.generator_id)
        except GeneratorNotFound as exc:
            raise CorruptBlob(
                f"the recipe's generator {recipe.generator_id} is gone; its adapters "
                "cannot be rebuilt"
            ) from exc
        if record.sha256 != recipe.generator_sha256:
            raise CorruptBlob(
                f"generator {record.id}'s checkpoint is not the one the recipe was made with"
            )
        loaded = Generator.from_registry(registry, record)
        self._loaded[record.id] = loaded
        while len(self._loaded) > KEEP_LOADED:
            self._loaded.popitem(last=False)
        return loaded

    def __call__(self, registry: Registry, source: RecipeInput) -> bytes:
        if source.recipe.decoder not in (*VERSIONS, "1"):
            raise CorruptBlob(
                f"adapter {source.adapter_id} was decoded by decoder version "
                f"{source.recipe.decoder!r}, this loramint has {DECODER!r}: materialise such "
                "adapters with the loramint that made them before upgrading"
            )
        with self._lock:
            generator = self.generator(registry, source.recipe)
            if source.recipe.decoder == "1":
                return weights_bytes(decode_v1(generator, source.embedding, source.recipe.seed))
            request = Request(source.description, seed=source.recipe.seed)
            [made] = generator.generate(
                [request], vectors=source.embedding[None, :], decoder=source.recipe.decoder
            )
            return weights_bytes(made.weights)


@torch.no_grad()
def decode_v1(generator: Generator, vector: np.ndarray, seed: int) -> Tensors:
    """An SG-LoRA adapter as decoder version "1" computed it, bit for bit: the
    mixture read as tokens, the network's sampling pass, then de-normalisation."""
    ckpt = generator.ckpt
    if not isinstance(ckpt.net, SGLoraNet):
        raise CorruptBlob("decoder version 1 recipes are SG-LoRA's only")
    eps = generator.noise(seed)
    generator.forget_deleted()
    mixture, _ = generator.mixture(np.asarray(vector))
    layout, norm = ckpt.layout, ckpt.normaliser
    mean_t = to_tokens(layout, norm, [mixture.mean])
    shift, scale = float(ckpt.hyper["logvar_shift"]), float(ckpt.hyper["logvar_scale"])
    logvar_t = var_tokens(layout, norm, [mixture.var], shift, scale)
    tokens = ckpt.net.sample(mean_t, logvar_t, eps[None])
    return layout.unflatten(from_tokens(layout, norm, tokens)[0])


_REBUILDERS: weakref.WeakKeyDictionary[Registry, Rebuilder] = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def build(registry: Registry, source: RecipeInput) -> bytes:
    """The entry point: ``source``'s weights as safetensors bytes."""
    with _GUARD:
        rebuilder = _REBUILDERS.get(registry)
        if rebuilder is None:
            rebuilder = _REBUILDERS[registry] = Rebuilder()
    return rebuilder(registry, source)
