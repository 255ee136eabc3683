"""LoRA blocks as *rank-one tokens*, the unit every generator network reads and writes.

A LoRA block (layer l, module m) of rank r is a sum of r rank-one terms
``b_i a_i^T``; token (l, m, i) is ``[a_i ; b_i]`` (fan_in + fan_out numbers).
SmolLM2-135M at r = 8 on q_proj/v_proj is 30 x 2 x 8 = 480 tokens of 1,152
(q) or 768 (v) numbers. ``to_tokens`` / ``from_tokens`` convert flattened
adapters (``Rows``) to normalised tokens and back; ``var_tokens`` turns
variances into standardised log-variances, SG-LoRA's second condition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from generator.hypernet.layout import BlockNormaliser, LoraLayout, Rows

Tokens = dict[str, torch.Tensor]  # module -> (N, L, r, w) rank-one tokens


@dataclass(frozen=True)
class ModuleShape:
    module: str
    layers: int
    rank: int
    fan_in: int
    fan_out: int

    @property
    def width(self) -> int:
        return self.fan_in + self.fan_out


def module_shapes(layout: LoraLayout) -> list[ModuleShape]:
    out = []
    for m in layout.modules:
        b = layout.of(m)[0]
        out.append(ModuleShape(m, len(layout.of(m)), b.rank, b.fan_in, b.fan_out))
    return out


def rows_to_tokens(rows: torch.Tensor, shape: ModuleShape) -> torch.Tensor:
    """(N, L, r*in + out*r) -> (N, L, r, in + out): token i is [A[i, :], B[:, i]]."""
    N, L, _ = rows.shape
    r, fi, fo = shape.rank, shape.fan_in, shape.fan_out
    a = rows[..., : r * fi].reshape(N, L, r, fi)
    b = rows[..., r * fi :].reshape(N, L, fo, r).transpose(2, 3)  # (N, L, r, out)
    return torch.cat([a, b], dim=-1)


def tokens_to_rows(tokens: torch.Tensor, shape: ModuleShape) -> torch.Tensor:
    """(N, L, r, in + out) -> (N, L, r*in + out*r), the inverse of ``rows_to_tokens``."""
    N, L, r, _ = tokens.shape
    fi = shape.fan_in
    a = tokens[..., :fi].reshape(N, L, r * fi)
    b = tokens[..., fi:].transpose(2, 3).reshape(N, L, -1)  # (N, L, out*r)
    return torch.cat([a, b], dim=-1)


VAR_FLOOR = 1e-4  # in normalised units: below it a coordinate counts as certain


def to_tokens(layout: LoraLayout, norm: BlockNormaliser, rows: Sequence[Rows]) -> Tokens:
    """N flattened adapters -> normalised tokens {module: (N, L, r, w)}."""
    shapes = {s.module: s for s in module_shapes(layout)}
    out = {}
    for m in layout.modules:
        x = torch.stack([r[m] for r in rows])  # (N, L, d), a copy: changed in place
        x.sub_(norm.mean[m]).div_(norm.scale(layout, m))
        out[m] = rows_to_tokens(x, shapes[m])
    return out


def var_tokens(
    layout: LoraLayout, norm: BlockNormaliser, var: Sequence[Rows], shift: float, scale: float
) -> Tokens:
    """Variances -> standardised log-variances in normalised units, as tokens."""
    shapes = {s.module: s for s in module_shapes(layout)}
    out = {}
    for m in layout.modules:
        v = torch.stack([r[m] for r in var])  # (N, L, d), a copy: changed in place
        v.div_(norm.scale(layout, m).pow(2)).add_(VAR_FLOOR).log_().sub_(shift).div_(scale)
        out[m] = rows_to_tokens(v, shapes[m])
    return out


def from_tokens(layout: LoraLayout, norm: BlockNormaliser, tokens: Tokens) -> list[Rows]:
    """Normalised tokens {module: (N, L, r, w)} -> N de-normalised flattened adapters."""
    shapes = {s.module: s for s in module_shapes(layout)}
    rows = {m: tokens_to_rows(tokens[m], shapes[m]) for m in layout.modules}  # (N, L, d)
    denorm = norm.denormalise(layout, rows)
    n = next(iter(denorm.values())).shape[0]
    return [{m: denorm[m][i] for m in layout.modules} for i in range(n)]


def take(tokens: Tokens, idx: torch.Tensor | list[int]) -> Tokens:
    return {m: t[idx] for m, t in tokens.items()}
