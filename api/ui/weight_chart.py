"""Per-layer weight norms of an adapter and their bar chart (inline SVG, no JS).

The norm of one (layer, module) block is ||B A||_F, the size of the update the
LoRA adds to that linear layer (before PEFT's lora_alpha / r scaling, one
factor for the whole adapter unless it uses patterns). It is computed from r x r
products, never forming the (out x in) matrix: ||B A||_F^2 = tr((B^T B)(A A^T)).
A module's layer index is its position among the targeted paths with the same
last name (as ``generator.hypernet.layout`` counts), not a number parsed out of a key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from registry.lora_spec import KEY_PREFIX, parse_weights, spec_from_config
from registry.service import Registry

# colour-blind-safe (Okabe-Ito), one per module type; repeats past eight modules
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000")
WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 36


@dataclass(frozen=True)
class BlockNorm:
    layer: int
    module: str
    norm: float


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    label: str


@dataclass(frozen=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True)
class NormChart:
    width: int
    height: int
    bars: list[Bar]
    y_ticks: list[Tick]
    x_ticks: list[tuple[float, str]]
    legend: list[tuple[str, str]]  # (module, colour)
    norms: list[BlockNorm]
    baseline: float  # y of the x axis
    left: float
    right: float


def weight_norms(reg: Registry, adapter_id: int) -> list[BlockNorm]:
    """||B A||_F of every (layer, module) block of a registered adapter, in model order."""
    rec = reg.get_adapter(adapter_id)
    files = reg.adapter_files(adapter_id)
    spec = spec_from_config(files.config)
    tensors = parse_weights(files.weights)
    seen: dict[str, int] = {}
    out = []
    for path in spec.targeted_modules(reg.linear_shapes(rec.base_model)):
        module = path.rsplit(".", 1)[-1]
        layer = seen.get(module, 0)
        seen[module] = layer + 1
        a = tensors[f"{KEY_PREFIX}{path}.lora_A.weight"].double()  # (r, in)
        b = tensors[f"{KEY_PREFIX}{path}.lora_B.weight"].double()  # (out, r)
        squared = ((b.T @ b) * (a @ a.T)).sum()  # both (r, r) and symmetric
        out.append(BlockNorm(layer, module, math.sqrt(max(float(squared), 0.0))))
    return out


def norm_chart(norms: list[BlockNorm]) -> NormChart:
    """Bars grouped by layer, one colour per module, on a linear axis from 0."""
    modules = list(dict.fromkeys(n.module for n in norms))
    colours = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(modules)}
    layers = 1 + max((n.layer for n in norms), default=0)
    top = max((n.norm for n in norms), default=0.0) or 1.0
    step = _nice_step(top / 4)
    y_max = step * math.ceil(top / step)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    group = plot_w / layers
    bar_w = group * 0.8 / max(len(modules), 1)
    baseline = TOP + plot_h
    bars = []
    for n in norms:
        h = plot_h * n.norm / y_max
        x = LEFT + n.layer * group + group * 0.1 + modules.index(n.module) * bar_w
        label = f"layer {n.layer} {n.module}: {n.norm:.4g}"
        bars.append(Bar(x, baseline - h, bar_w, h, colours[n.module], label))
    ticks = [
        Tick(baseline - plot_h * i * step / y_max, f"{i * step:.3g}")
        for i in range(round(y_max / step) + 1)
    ]
    every = max(1, math.ceil(layers / 15))  # at most ~15 layer labels
    x_ticks = [(LEFT + (i + 0.5) * group, str(i)) for i in range(0, layers, every)]
    return NormChart(
        WIDTH,
        HEIGHT,
        bars,
        ticks,
        x_ticks,
        [(m, colours[m]) for m in modules],
        norms,
        baseline,
        LEFT,
        WIDTH - RIGHT,
    )


def _nice_step(raw: float) -> float:
    """1, 2 or 5 times a power of ten, at least ``raw``."""
    power: float = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * power >= raw:
            return m * power
    return 10 * power
