"""The adapter-space map (``/ui/map``): its Gram matrix and principal coordinates against
dense numpy on tiny random LoRAs, and the page over the sandbox world with Litestar's
TestClient (the real app, a real SQLite registry). The app's registry gets an embedder
that refuses to encode, so the description map can only come from the stored vectors."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from litestar.testing import TestClient

from api.ui.space_map import (
    Factors,
    SpaceMap,
    principal_coordinates,
    space_map,
    update_gram,
)
from generator.sandbox import SandboxWorld
from registry.embeddings import MiniLMEmbedder
from registry.lora_spec import parse_weights
from registry.models import DescriptionEmbeddingRow
from registry.service import Registry
from tests.api.ui.test_ui_security import logged_in_client
from tests.conftest import make_lora

POINT = re.compile(
    r'<a href="/ui/adapters/(\d+)"><circle [^>]*><title>([^<]*)</title></circle></a>'
)


def dense_pca(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) vectors -> their first two principal coordinates (N, 2) and every
    component's share of the variance, by an SVD of the centred matrix."""
    u, s, _ = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    return u[:, :2] * s[:2], s**2 / (s**2).sum()


def same_up_to_sign(got: np.ndarray, want: np.ndarray) -> bool:
    """Principal axes have no sign: compare each column with the want's sign matched."""
    signs = np.sign((got * want).sum(axis=0))
    return bool(np.allclose(got, want * signs, rtol=1e-6, atol=1e-9 * np.abs(want).max()))


def random_loras(shapes: dict[str, tuple[int, int, int]], n: int, seed: int) -> list[Factors]:
    """``n`` LoRAs with blocks ``path -> (r, in, out)`` of random, non-symmetric factors."""
    rng = np.random.default_rng(seed)
    return [
        {
            path: (rng.standard_normal((r, fan_in)), rng.standard_normal((fan_out, r)))
            for path, (r, fan_in, fan_out) in shapes.items()
        }
        for _ in range(n)
    ]


def flattened(adapters: Sequence[Factors]) -> np.ndarray:
    """(N, D): every block's dense B @ A, flattened and concatenated."""
    return np.stack([np.concatenate([(b @ a).ravel() for a, b in f.values()]) for f in adapters])


@pytest.mark.parametrize(
    "shapes, n",
    [
        ({"q": (2, 5, 7)}, 2),
        ({"q": (2, 5, 7), "v": (2, 5, 3)}, 3),
        ({"q": (3, 4, 4), "v": (1, 4, 6), "o": (2, 6, 4)}, 5),  # per-block ranks differ
    ],
)
def test_the_gram_from_r_by_r_products_is_the_dense_one(
    shapes: dict[str, tuple[int, int, int]], n: int
) -> None:
    adapters = random_loras(shapes, n, seed=n)
    dense = flattened(adapters)
    assert np.allclose(update_gram(adapters), dense @ dense.T, rtol=1e-10)


def test_principal_coordinates_of_the_gram_are_the_pca_of_the_updates() -> None:
    adapters = random_loras({"q": (2, 5, 7), "v": (2, 5, 3)}, 4, seed=7)
    projection = principal_coordinates(update_gram(adapters))
    coords, share = dense_pca(flattened(adapters))
    assert projection.coords.shape == (4, 2)
    assert same_up_to_sign(projection.coords, coords)
    assert np.allclose(projection.share, share[:2])
    # each axis is signed so that its largest coordinate is positive
    assert (projection.coords[np.abs(projection.coords).argmax(axis=0), [0, 1]] > 0).all()


def test_blocks_of_other_shapes_do_not_share_a_gram() -> None:
    adapters = random_loras({"q": (2, 5, 7)}, 2, seed=1) + random_loras({"q": (3, 5, 7)}, 1, 2)
    with pytest.raises(ValueError, match="q blocks differ"):
        update_gram(adapters)


class NoEncoding:
    """The real embedder's name and size; encoding is refused."""

    def __init__(self, real: MiniLMEmbedder) -> None:
        self.name, self.dim = real.name, real.dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        raise AssertionError(f"the map embedded {list(texts)!r} again")


@pytest.fixture(scope="module")
def mapped(
    world: SandboxWorld,
    tiny_base: Path,
    tiny_gemma: Path,
    embedder: MiniLMEmbedder,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """The sandbox zoo (trained) plus an imported and a "generated" adapter of its layout,
    one of another layout (rank 2), and two adapters of a second base model."""
    reg, root = world.registry, tmp_path_factory.mktemp("map")
    added = {}
    for name, provenance, rank, seed in [
        ("map-imported", "imported", 4, 3),
        ("map-generated", "generated", 4, 4),
        ("map-rank-two", "imported", 2, 5),
    ]:
        added[name] = reg.add_adapter(
            make_lora(tiny_base, root / name, r=rank, seed=seed), base_model=world.base,
            description=f"Adapter {name} for a test of the map", name=name, provenance=provenance,
        )  # fmt: skip
    for i in range(2):
        reg.add_adapter(
            make_lora(tiny_gemma, root / f"gemma-{i}", seed=i), base_model=str(tiny_gemma),
            description=f"Gemma adapter {i}", name=f"gemma-{i}",
        )  # fmt: skip
    zoo = reg.list_adapters(base_model=world.base, provenance="trained", limit=100)
    assert len(zoo) >= 3 and {r.layout_signature for r in zoo} == {
        added["map-imported"].layout_signature
    }, "the test needs a zoo of the imported adapter's layout"
    app_registry = Registry(world.settings, embedder=NoEncoding(embedder))
    yield {
        "registry": reg, "app_registry": app_registry, "base": world.base,
        "gemma": str(tiny_gemma), "reader": reg.create_api_key("map-reader", "reader")[1],
        "odd": added["map-rank-two"],
    }  # fmt: skip
    app_registry.close()


@pytest.fixture
def client(mapped: dict[str, Any]) -> Iterator[TestClient[Any]]:
    with logged_in_client(mapped["app_registry"], mapped["reader"]) as c:
        yield c


def svg_of(html: str, key: str) -> str:
    found = re.search(rf'<svg [^>]*id="map-{key}".*?</svg>', html, re.S)
    assert found, f"the page has no {key} map"
    return found.group(0)


def test_a_reader_sees_both_maps_with_a_linked_point_per_adapter(
    client: TestClient[Any], mapped: dict[str, Any]
) -> None:
    reg: Registry = mapped["registry"]
    records = reg.list_adapters(base_model=mapped["base"], limit=100)
    r = client.get("/ui/map")  # the base model with the most adapters
    assert r.status_code == 200, r.text
    html = r.text
    assert f'<option value="{mapped["base"]}" selected>' in html
    assert '<a href="/ui/map" aria-current="page">Map</a>' in html
    odd = mapped["odd"]
    expected = {
        "description": {(str(a.id), f"{a.name} ({a.provenance})") for a in records},
        "weights": {(str(a.id), f"{a.name} ({a.provenance})") for a in records if a.id != odd.id},
    }
    for key, points in expected.items():
        svg = svg_of(html, key)
        assert 'role="img"' in svg and "<title id=" in svg and "<desc id=" in svg
        assert svg.count("<circle") == len(points)
        assert set(POINT.findall(svg)) == points
    left_out = html.split('<h2 id="left-out">')[1].split("</ul>")[0]
    assert f'<a href="/ui/adapters/{odd.id}">{odd.name}</a>, not on the weight map' in left_out
    assert "rank 2 on q_proj, v_proj" in left_out and "rank 4 on q_proj, v_proj" in left_out
    assert len(re.findall(r"\(PC1\) explains \d+% of their variance", html)) == 2


def test_the_legend_lists_the_provenances_present(
    client: TestClient[Any], mapped: dict[str, Any]
) -> None:
    html = client.get("/ui/map", params={"base_model": mapped["base"]}).text
    legend = html.split('<ul class="legend" aria-label="Provenance colours">')[1].split("</ul>")[0]
    assert re.findall(r"</svg> (\w+)</li>", legend) == ["trained", "imported", "generated"]


def test_the_coordinates_table_names_every_adapter(
    client: TestClient[Any], mapped: dict[str, Any]
) -> None:
    html = client.get("/ui/map").text
    table = html.split("<details>")[1].split("</details>")[0]
    names = re.findall(r'<th scope="row"><a href="/ui/adapters/\d+">([^<]+)</a></th>', table)
    records = mapped["registry"].list_adapters(base_model=mapped["base"], limit=100)
    assert names == [a.name for a in reversed(records)]  # newest first
    odd_row = table.split(f">{mapped['odd'].name}</a>")[1].split("</tr>")[0]
    assert odd_row.count("not mapped") == 2  # on the description map, off the weight map


def test_the_maps_are_the_pca_of_the_stored_embeddings_and_of_the_updates(
    mapped: dict[str, Any], embedder: MiniLMEmbedder
) -> None:
    view = space_map(mapped["app_registry"], mapped["base"])
    assert view.description is not None and view.weights is not None
    reg: Registry = mapped["registry"]
    on_map = [reg.get_adapter(p.adapter_id) for p in view.description.points]
    with reg.engine.connect() as conn:
        rows = dict(
            conn.execute(
                sa.select(DescriptionEmbeddingRow.adapter_id, DescriptionEmbeddingRow.vector)
            ).all()
        )
    stored = np.stack([np.frombuffer(rows[a.id], dtype=np.float32) for a in on_map])
    # the stored vectors are the descriptions' embeddings (to bfloat16 rounding, which
    # depends on the batch they were embedded in)
    assert np.abs(stored - embedder.encode([a.description for a in on_map])).max() < 3e-3
    coords, share = dense_pca(stored.astype(np.float64))
    got = np.array([[p.x, p.y] for p in view.description.points])
    assert np.allclose(got, coords * np.sign((got * coords).sum(axis=0)), atol=1e-4)
    assert np.allclose(view.description.share, share[:2], atol=1e-4)

    updates = []
    for p in view.weights.points:
        tensors = parse_weights(reg.adapter_files(p.adapter_id).weights)
        paths = sorted(n.removesuffix(".lora_A.weight") for n in tensors if "lora_A" in n)
        blocks = [
            tensors[f"{q}.lora_B.weight"].double() @ tensors[f"{q}.lora_A.weight"].double()
            for q in paths
        ]
        updates.append(np.concatenate([b.numpy().ravel() for b in blocks]))
    coords, share = dense_pca(np.stack(updates))
    assert same_up_to_sign(np.array([[p.x, p.y] for p in view.weights.points]), coords)
    assert np.allclose(view.weights.share, share[:2])


def test_the_newest_adapters_are_mapped_up_to_the_limit(mapped: dict[str, Any]) -> None:
    reg: Registry = mapped["registry"]
    newest = [a.id for a in reg.list_adapters(base_model=mapped["base"], limit=100)][::-1][:4]
    view: SpaceMap = space_map(mapped["app_registry"], mapped["base"], limit=4)
    assert view.capped and view.mapped == 4 and view.total > 4
    assert [row.adapter_id for row in view.rows] == newest
    assert not space_map(mapped["app_registry"], mapped["base"]).capped


def test_fewer_than_three_adapters_is_a_sentence(
    client: TestClient[Any], mapped: dict[str, Any]
) -> None:
    r = client.get("/ui/map", params={"base_model": mapped["gemma"]})
    assert r.status_code == 200
    assert f"The map needs at least three adapters; {mapped['gemma']} has 2." in r.text
    assert "<circle" not in r.text and "<details>" not in r.text


def test_an_unknown_base_model_is_a_404_page(client: TestClient[Any]) -> None:
    r = client.get("/ui/map", params={"base_model": "no-such-model"})
    assert r.status_code == 404
    assert "base model &#39;no-such-model&#39; is not registered" in r.text
