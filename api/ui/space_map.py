"""The adapter-space map: one base model's adapters placed by what their descriptions
say and by what their weights do, as two scatter plots (inline SVG, no JS).

Description space: the stored description embeddings (unit-norm MiniLM vectors, read
back from the registry's index, never embedded again). Weight space: the updates
dW = B A over every (layer, module) block, flattened into one vector per adapter.

Both maps are PCA done through the N x N Gram matrix of the vectors: the principal
coordinates of N vectors are the top eigenvectors of their doubly centred Gram matrix
scaled by the square roots of the eigenvalues (classical MDS), so dW is never formed.
Its Gram entries come from r x r products (as ``weight_chart`` computes a norm):

    <B_i A_i, B_j A_j>_F = tr(A_i^T B_i^T B_j A_j) = sum((B_i^T B_j) * (A_i A_j^T))

Only adapters with one LoRA layout (tensor names and shapes: ``layout_signature``)
share a weight space: the layout most of the mapped adapters have is drawn, the others
are listed with the reason. Updates are taken before PEFT's lora_alpha / r scaling,
as on an adapter's norm chart.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

from api.ui.weight_chart import PALETTE
from registry.errors import LoramintError, UnknownBaseModel
from registry.lora_spec import parse_weights
from registry.models import Provenance
from registry.records import AdapterRecord
from registry.service import Registry

# the newest adapters of a base model that are mapped: the weight map holds all their
# LoRA factors in memory at once and costs N^2 r x r products per block
MAX_ADAPTERS = 300
MIN_POINTS = 3  # two points always lie on a line: a plane needs three
# one fixed Okabe-Ito colour per provenance, the same on both maps and every base model
COLOURS = {p.value: PALETTE[i] for i, p in enumerate(Provenance)}
OTHER_COLOUR = PALETTE[-1]
SIZE = 360  # the square viewBox of one map
LEFT, BOTTOM, EDGE = 24, 24, 8  # room for the axis labels; a margin on the other sides
INSET = 10  # between the frame and the outermost points
RADIUS = 5
SLAB = 1 << 22  # entries of one slab of r x r products in update_gram (32 MB)

# one block's LoRA factors: A (r, in) and B (out, r)
Block: TypeAlias = tuple[np.ndarray, np.ndarray]
# an adapter's factors by tensor path (``base_model.model.<module>``), in name order
Factors: TypeAlias = dict[str, Block]


@dataclass(frozen=True, eq=False)
class Projection:
    coords: np.ndarray  # (N, 2): each vector's first two principal coordinates
    share: tuple[float, float]  # the fraction of the variance along each axis


@dataclass(frozen=True)
class Point:
    adapter_id: int
    name: str
    provenance: str
    x: float  # principal coordinates
    y: float
    cx: float  # where the point is drawn
    cy: float
    colour: str


@dataclass(frozen=True)
class Scatter:
    key: str  # "description" or "weights": names the figure's SVG ids
    title: str
    what: str  # what the points are placed by, for the figure's description
    size: int
    points: list[Point]
    share: tuple[float, float]
    origin: tuple[float, float]  # where (0, 0), the mean of the vectors, is drawn
    frame: tuple[float, float, float, float]  # left, top, right, bottom
    radius: int = RADIUS

    @property
    def axis_labels(self) -> tuple[str, str]:
        return f"PC1 ({self.share[0]:.0%})", f"PC2 ({self.share[1]:.0%})"


@dataclass(frozen=True)
class LeftOut:
    """An adapter missing from one of the maps, and why."""

    adapter_id: int
    name: str
    space: str  # "description" or "weight"
    reason: str


@dataclass(frozen=True)
class MapRow:
    """One adapter's coordinates on both maps (None: not on that map)."""

    adapter_id: int
    name: str
    provenance: str
    description: tuple[float, float] | None
    weights: tuple[float, float] | None


@dataclass(frozen=True)
class SpaceMap:
    base_model: str  # "" when no base model is registered
    base_models: list[str]
    total: int  # the base model's adapters
    mapped: int  # the newest of them, up to MAX_ADAPTERS: those the maps consider
    description: Scatter | None  # None: fewer than MIN_POINTS to draw
    weights: Scatter | None
    left_out: list[LeftOut]
    legend: list[tuple[str, str]]  # (provenance, colour) of the provenances present
    rows: list[MapRow]
    min_points: int = MIN_POINTS

    @property
    def capped(self) -> bool:
        return self.mapped < self.total


def lora_factors(weights: bytes) -> Factors:
    """An adapter's safetensors bytes as float32 (A, B) pairs by tensor path."""
    tensors = parse_weights(weights)
    out: Factors = {}
    for name in sorted(tensors):
        if name.endswith(".lora_A.weight"):
            path = name.removesuffix(".lora_A.weight")
            a = tensors[name].float().numpy()  # (r, in)
            b = tensors[f"{path}.lora_B.weight"].float().numpy()  # (out, r)
            out[path] = (a, b)
    return out


def update_gram(adapters: Sequence[Factors]) -> np.ndarray:
    """(N, N) float64 Frobenius inner products of the adapters' updates dW = B A, summed
    over blocks, from r x r products. Every adapter must have the first one's layout."""
    n = len(adapters)
    gram = np.zeros((n, n))
    for path, (a0, b0) in adapters[0].items():
        if any(f[path][0].shape != a0.shape or f[path][1].shape != b0.shape for f in adapters):
            raise ValueError(f"the adapters' {path} blocks differ in shape")
        r = a0.shape[0]
        # the factors stacked: one gemm gives every pair's r x r product as a tile
        a = np.concatenate([f[path][0] for f in adapters], dtype=np.float64)  # (N r, in)
        b = np.concatenate([f[path][1].T for f in adapters], dtype=np.float64)  # (N r, out)
        step = max(1, SLAB // (n * r * r))  # adapters per slab of rows
        for i in range(0, n, step):
            rows = slice(i * r, min(i + step, n) * r)
            aa = a[rows] @ a.T  # (c r, N r): tile (i, j) is A_i A_j^T
            bb = b[rows] @ b.T  # (c r, N r): tile (i, j) is B_i^T B_j
            gram[i : i + step] += (aa * bb).reshape(-1, r, n, r).sum(axis=(1, 3))
    return (gram + gram.T) / 2  # equal up to rounding already


def principal_coordinates(gram: np.ndarray) -> Projection:
    """The first two principal coordinates of the vectors behind a Gram matrix, each axis
    signed so that its largest coordinate is positive (eigenvectors have no sign)."""
    n = gram.shape[0]
    if n < 2:
        raise ValueError(f"principal coordinates need two vectors or more, got {n}")
    centre = np.eye(n) - 1.0 / n
    values, vectors = np.linalg.eigh(centre @ gram @ centre)  # ascending
    values, vectors = values[::-1].clip(min=0.0), vectors[:, ::-1]
    coords = vectors[:, :2] * np.sqrt(values[:2])  # (N, 2)
    signs = np.sign(coords[np.abs(coords).argmax(axis=0), [0, 1]])
    coords = coords * np.where(signs == 0, 1.0, signs)
    total = float(values.sum())
    share = values[:2] / total if total > 0 else np.zeros(2)
    return Projection(coords, (float(share[0]), float(share[1])))


def scatter(
    key: str, title: str, what: str, records: Sequence[AdapterRecord], projection: Projection
) -> Scatter:
    """The points in a square frame, on one scale for both axes so distances read true."""
    xy = projection.coords
    left, top, right, bottom = LEFT, EDGE, SIZE - EDGE, SIZE - BOTTOM
    span = float((xy.max(axis=0) - xy.min(axis=0)).max())
    scale = (min(right - left, bottom - top) - 2 * INSET) / span if span > 0 else 0.0
    mid_x, mid_y = (xy.max(axis=0) + xy.min(axis=0)) / 2
    centre_x, centre_y = (left + right) / 2, (top + bottom) / 2

    def place(x: float, y: float) -> tuple[float, float]:
        return centre_x + (x - mid_x) * scale, centre_y - (y - mid_y) * scale  # SVG y is down

    points = []
    for rec, (x, y) in zip(records, xy.tolist(), strict=True):
        cx, cy = place(x, y)
        colour = COLOURS.get(rec.provenance, OTHER_COLOUR)
        points.append(Point(rec.id, rec.name, rec.provenance, x, y, cx, cy, colour))
    return Scatter(
        key, title, what, SIZE, points, projection.share, place(0.0, 0.0),
        (left, top, right, bottom),
    )  # fmt: skip


def space_map(reg: Registry, base_model: str = "", *, limit: int = MAX_ADAPTERS) -> SpaceMap:
    """Both maps of a base model's newest ``limit`` adapters (default: the base model with
    the most adapters); ``UnknownBaseModel`` for a name that is not registered."""
    bases = {b.name: b for b in reg.list_base_models()}
    counts = {name: reg.count_adapters(base_model=name) for name in bases}
    if not bases:
        return SpaceMap("", [], 0, 0, None, None, [], [], [])
    name = base_model or min(counts, key=lambda n: (-counts[n], n))
    if name not in bases:
        raise UnknownBaseModel(f"base model {name!r} is not registered: pick one from the list")
    names = sorted(counts, key=lambda n: (-counts[n], n))
    total = counts[name]
    records = reg.list_adapters(base_model=name, limit=limit, offset=max(0, total - limit))
    records = records[::-1]  # newest first
    if len(records) < MIN_POINTS:
        return SpaceMap(name, names, total, len(records), None, None, [], [], [])
    left_out: list[LeftOut] = []
    description = _description_map(reg, bases[name].id, records, left_out)
    weights = _weight_map(reg, records, left_out)
    present = {r.provenance for r in records}
    legend = [(p, c) for p, c in COLOURS.items() if p in present]
    legend += [(p, OTHER_COLOUR) for p in sorted(present - set(COLOURS))]
    return SpaceMap(
        name, names, total, len(records), description, weights, left_out, legend,
        _rows(records, description, weights),
    )  # fmt: skip


def _description_map(
    reg: Registry, base_model_id: int, records: list[AdapterRecord], left_out: list[LeftOut]
) -> Scatter | None:
    index = reg.index_for(base_model_id)
    live = set(index.ids().tolist())
    kept = [r for r in records if r.id in live]
    for r in records:
        if r.id not in live:
            reason = "its description has no stored embedding from this registry's embedder"
            left_out.append(LeftOut(r.id, r.name, "description", reason))
    if len(kept) < MIN_POINTS:
        return None
    x = index.vectors(np.array([r.id for r in kept])).astype(np.float64)  # (N, D)
    return scatter(
        "description", "Description space",
        "placed by their description embeddings (MiniLM)",
        kept, principal_coordinates(x @ x.T),
    )  # fmt: skip


def _weight_map(
    reg: Registry, records: list[AdapterRecord], left_out: list[LeftOut]
) -> Scatter | None:
    # ties go to the layout of the newest adapter (records come newest first)
    layout = Counter(r.layout_signature for r in records).most_common(1)[0][0]
    majority = next(r for r in records if r.layout_signature == layout)
    kept: list[AdapterRecord] = []
    factors: list[Factors] = []
    for r in records:
        if r.layout_signature != layout:
            left_out.append(LeftOut(r.id, r.name, "weight", _other_layout(r, majority)))
            continue
        try:  # one adapter's bytes at a time; only its float32 factors stay
            factors.append(lora_factors(reg.adapter_files(r.id).weights))
        except LoramintError as exc:
            reason = f"its weights could not be read: {str(exc).rstrip('.')}"
            left_out.append(LeftOut(r.id, r.name, "weight", reason))
            continue
        kept.append(r)
    if len(kept) < MIN_POINTS:
        return None
    return scatter(
        "weights", "Weight space", "placed by their weight updates dW = B·A",
        kept, principal_coordinates(update_gram(factors)),
    )  # fmt: skip


def _other_layout(rec: AdapterRecord, majority: AdapterRecord) -> str:
    def words(r: AdapterRecord) -> str:
        return f"rank {r.rank} on {', '.join(str(t) for t in r.target_modules)}"

    if words(rec) == words(majority):
        return f"its LoRA covers other layers than the mapped adapters' ({words(majority)})"
    return f"its LoRA layout ({words(rec)}) differs from the mapped adapters' ({words(majority)})"


def _rows(
    records: list[AdapterRecord], description: Scatter | None, weights: Scatter | None
) -> list[MapRow]:
    def coords(plot: Scatter | None) -> dict[int, tuple[float, float]]:
        return {p.adapter_id: (p.x, p.y) for p in plot.points} if plot else {}

    on_description, on_weights = coords(description), coords(weights)
    return [
        MapRow(r.id, r.name, r.provenance, on_description.get(r.id), on_weights.get(r.id))
        for r in records
    ]
