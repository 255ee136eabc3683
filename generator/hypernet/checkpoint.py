"""A trained generator as one safetensors blob: network weights, normalisation
statistics, the layout it decodes to, and its hyperparameters.

Tensors: ``net.*`` (the network), ``norm.*`` (``BlockNormaliser``) and, for
SG-LoRA, ``experts.embeddings`` (E, D) of the experts it mixes. Everything
else is JSON in the safetensors metadata under ``loramint``; nothing is
pickled, so loading a checkpoint never runs code.

Format 2 dropped SG-LoRA options that lost their experiments (the local policy
and its mirrored mixtures, the multi-task anchor, the similarity floor, the
description-aware correction; ``docs/experiments.md``): a format-1 checkpoint
is refused with a one-line "retrain it".
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from generator.hypernet.layout import BlockNormaliser, LoraLayout
from generator.hypernet.methods import SG_LORA, check_method
from generator.hypernet.networks import ICMLoraNet, NetConfig, SGLoraNet
from generator.hypernet.tokens import module_shapes
from registry.errors import InvalidInput

FORMAT_VERSION = 2


@dataclass
class Checkpoint:
    method: str
    layout: LoraLayout
    template: dict[str, Any]  # adapter_config.json of generated adapters
    normaliser: BlockNormaliser
    net: SGLoraNet | ICMLoraNet
    hyper: dict[str, Any]  # method hyperparameters (tau, k, kl weight, ...)
    expert_ids: list[int]
    expert_embeddings: torch.Tensor | None = None  # (E, D), SG-LoRA only
    extra: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        tensors = {f"net.{k}": v.detach().contiguous() for k, v in self.net.state_dict().items()}
        tensors.update(
            {f"norm.{k}": v.contiguous() for k, v in self.normaliser.state_dict().items()}
        )
        if self.expert_embeddings is not None:
            tensors["experts.embeddings"] = self.expert_embeddings.contiguous()
        meta = {
            "format": FORMAT_VERSION,
            "method": self.method,
            "layout": {
                "paths": [b.path for b in self.layout.blocks],
                "shapes": {b.path: [b.fan_in, b.fan_out] for b in self.layout.blocks},
                "rank": self.layout.blocks[0].rank,
            },
            "template": self.template,
            "net": asdict(self.net.config),
            "cond_dim": getattr(self.net, "cond_dim", None),
            "hyper": self.hyper,
            "expert_ids": self.expert_ids,
            "extra": self.extra,
        }
        return save_safetensors(tensors, metadata={"format": "pt", "loramint": json.dumps(meta)})

    @classmethod
    def from_bytes(cls, raw: bytes) -> Checkpoint:
        try:
            tensors = load_safetensors(raw)
            meta = json.loads(_metadata(raw)["loramint"])
        except (SafetensorError, KeyError, ValueError) as exc:
            raise InvalidInput(f"not a loramint generator checkpoint: {exc}") from exc
        if meta.get("format") != FORMAT_VERSION:
            raise InvalidInput(
                f"generator checkpoint format {meta.get('format')} is no longer supported "
                f"(this version reads format {FORMAT_VERSION}): retrain it with "
                "`loramint generator train`"
            )
        lay = meta["layout"]
        layout = LoraLayout.build(lay["paths"], lay["shapes"], int(lay["rank"]))
        shapes = module_shapes(layout)
        config = NetConfig(**meta["net"])
        method = check_method(meta["method"])
        net: SGLoraNet | ICMLoraNet = (
            SGLoraNet(shapes, config)
            if method == SG_LORA
            else ICMLoraNet(shapes, int(meta["cond_dim"]), config)
        )
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        net.eval()
        norm = BlockNormaliser.from_state_dict(
            {k[5:]: v for k, v in tensors.items() if k.startswith("norm.")}
        )
        return cls(
            method=method,
            layout=layout,
            template=meta["template"],
            normaliser=norm,
            net=net,
            hyper=meta["hyper"],
            expert_ids=[int(i) for i in meta["expert_ids"]],
            expert_embeddings=tensors.get("experts.embeddings"),
            extra=meta.get("extra", {}),
        )


def _metadata(raw: bytes) -> dict[str, str]:
    """The safetensors header's ``__metadata__`` (8-byte length, then JSON)."""
    if len(raw) < 8:
        raise ValueError("file too short")
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}
