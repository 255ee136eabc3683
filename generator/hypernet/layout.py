"""LoRA layout: a PEFT LoRA state dict as the blocks generators work on.

A block is one (layer, module) pair, e.g. layer 7's ``q_proj``: its A (r, in)
and B (out, r) flattened and concatenated. Blocks of one module type have the
same size across layers, so a layout stacks them per module as (L, d_module)
tensors: a generator with shared weights plus layer and module embeddings
emits one row per block instead of one 460,800-number vector.

The layout is built from the base model's targeted module paths in model
order (the registry's ``LoraSpec.targeted_modules``); a module's layer index is
its position among the paths with the same last name, so no layer number is
parsed out of a key string.

``BlockNormaliser`` keeps per-block, per-matrix statistics (A and B of each
(layer, module)), fitted on the training adapters and saved with the
generator checkpoint: decode never borrows statistics from one real adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from registry.lora_spec import KEY_PREFIX, Tensors

# A flattened adapter: module -> (L, d), one row per (layer, module) block; batches of
# N adapters stack them as (N, L, d).
Rows = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Block:
    layer: int
    module: str  # last path component, e.g. "q_proj"
    path: str  # full module path, e.g. "model.layers.7.self_attn.q_proj"
    rank: int
    fan_in: int
    fan_out: int

    @property
    def key_a(self) -> str:
        return f"{KEY_PREFIX}{self.path}.lora_A.weight"

    @property
    def key_b(self) -> str:
        return f"{KEY_PREFIX}{self.path}.lora_B.weight"

    @property
    def size_a(self) -> int:
        return self.rank * self.fan_in

    @property
    def size(self) -> int:
        return self.rank * self.fan_in + self.fan_out * self.rank


@dataclass(frozen=True)
class LoraLayout:
    blocks: tuple[Block, ...]

    @classmethod
    def build(
        cls, module_paths: Sequence[str], linear_shapes: dict[str, list[int]], rank: int
    ) -> LoraLayout:
        if rank <= 0:
            raise ValueError(f"rank must be positive, got {rank}")
        seen: dict[str, int] = {}
        blocks = []
        for path in module_paths:
            module = path.rsplit(".", 1)[-1]
            layer = seen.get(module, 0)
            seen[module] = layer + 1
            fan_in, fan_out = linear_shapes[path]
            blocks.append(Block(layer, module, path, rank, fan_in, fan_out))
        sizes: dict[str, int] = {}
        for b in blocks:
            if sizes.setdefault(b.module, b.size) != b.size:
                raise ValueError(f"module {b.module} has blocks of different sizes across layers")
        return cls(tuple(blocks))

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(b.module for b in self.blocks))

    @property
    def num_layers(self) -> int:
        return 1 + max(b.layer for b in self.blocks)

    def of(self, module: str) -> list[Block]:
        return [b for b in self.blocks if b.module == module]

    def block_size(self, module: str) -> int:
        return self.of(module)[0].size

    @property
    def numel(self) -> int:
        return sum(b.size for b in self.blocks)

    def flatten(self, state: Tensors) -> Rows:
        """PEFT state dict -> {module: (L_module, d_module)} float32 rows, one per block."""
        out = {}
        for module in self.modules:
            rows = [
                torch.cat([state[b.key_a].reshape(-1), state[b.key_b].reshape(-1)]).float()
                for b in self.of(module)
            ]
            out[module] = torch.stack(rows)  # (L, d)
        return out

    def unflatten(self, rows: Rows) -> Tensors:
        """{module: (L_module, d_module)} -> PEFT state dict (float32, contiguous): views
        of ``rows`` (of a contiguous copy where a module's rows are not contiguous), made
        a module at a time, as this runs for every generated adapter."""
        state: Tensors = {}
        for module in self.modules:
            blocks = self.of(module)
            x = rows[module]
            if tuple(x.shape) != (len(blocks), blocks[0].size):
                raise ValueError(
                    f"{module}: expected rows of shape {(len(blocks), blocks[0].size)}, "
                    f"got {tuple(x.shape)}"
                )
            x = x.contiguous()
            first = blocks[0]
            shape = (first.rank, first.fan_in, first.fan_out)
            if any((b.rank, b.fan_in, b.fan_out) != shape for b in blocks):
                for block, row in zip(blocks, x, strict=True):  # same size, other shapes
                    state[block.key_a] = row[: block.size_a].view(block.rank, block.fan_in)
                    state[block.key_b] = row[block.size_a :].view(block.fan_out, block.rank)
                continue
            a = x[:, : first.size_a].unflatten(1, (first.rank, first.fan_in)).unbind(0)
            b = x[:, first.size_a :].unflatten(1, (first.fan_out, first.rank)).unbind(0)
            for block, block_a, block_b in zip(blocks, a, b, strict=True):
                state[block.key_a] = block_a
                state[block.key_b] = block_b
        return state


@dataclass
class BlockNormaliser:
    """Per-block z-scoring with separate statistics for the A and B halves."""

    mean: dict[str, torch.Tensor]  # module -> (L, d)
    std: dict[str, torch.Tensor]  # module -> (L, 2): one std for A, one for B

    @classmethod
    def fit(cls, layout: LoraLayout, samples: Sequence[Rows]) -> BlockNormaliser:
        """``samples``: flattened adapters ({module: (L, d)}), e.g. trajectory snapshots."""
        if not samples:
            raise ValueError("need at least one sample to fit normalisation statistics")
        mean, std = {}, {}
        for module in layout.modules:
            x = torch.stack([s[module] for s in samples])  # (N, L, d)
            mu = x.mean(0)  # (L, d)
            split = layout.of(module)[0].size_a
            centred = x - mu
            sd_a = centred[..., :split].pow(2).mean(dim=(0, 2)).sqrt()  # (L,)
            sd_b = centred[..., split:].pow(2).mean(dim=(0, 2)).sqrt()
            std[module] = torch.stack([sd_a, sd_b], dim=-1).clamp(min=1e-8)  # (L, 2)
            mean[module] = mu
        return cls(mean, std)

    def scale(self, layout: LoraLayout, module: str) -> torch.Tensor:
        b = layout.of(module)[0]
        sd = self.std[module]  # (L, 2)
        return torch.cat(
            [sd[:, :1].expand(-1, b.size_a), sd[:, 1:].expand(-1, b.size - b.size_a)], dim=1
        )  # (L, d)

    def normalise(self, layout: LoraLayout, rows: Rows) -> Rows:
        return {m: (rows[m] - self.mean[m]) / self.scale(layout, m) for m in layout.modules}

    def denormalise(self, layout: LoraLayout, rows: Rows) -> Rows:
        return {m: rows[m] * self.scale(layout, m) + self.mean[m] for m in layout.modules}

    def to(self, device: torch.device | str) -> BlockNormaliser:
        """The same statistics on ``device`` (this one, where they already are)."""
        return BlockNormaliser(
            {m: v.to(device) for m, v in self.mean.items()},
            {m: v.to(device) for m, v in self.std.items()},
        )

    def state_dict(self) -> Tensors:
        out = {f"mean.{m}": v for m, v in self.mean.items()}
        out.update({f"std.{m}": v for m, v in self.std.items()})
        return out

    @classmethod
    def from_state_dict(cls, state: Tensors) -> BlockNormaliser:
        mean = {k[5:]: v for k, v in state.items() if k.startswith("mean.")}
        std = {k[4:]: v for k, v in state.items() if k.startswith("std.")}
        return cls(mean, std)
