"""Table-driven checks that the shapes loramint expects are the shapes PEFT writes."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save

from registry import base_models, lora_spec
from registry.errors import InvalidAdapter
from tests.conftest import make_lora


@pytest.fixture(scope="module")
def shapes(tiny_base: Path) -> dict[str, list[int]]:
    return base_models.describe(tiny_base).linear_shapes


@pytest.mark.parametrize(
    "targets, extra",
    [
        (["q_proj", "v_proj"], {}),
        (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], {}),
        (r".*\.(q_proj|v_proj)", {}),
        (["q_proj"], {"layers_to_transform": [1]}),
        (["q_proj", "v_proj"], {"rank_pattern": {"v_proj": 2}, "alpha_pattern": {"v_proj": 3}}),
        ("all-linear", {}),
    ],
)
def test_expected_shapes_match_what_peft_saves(
    tiny_base: Path,
    shapes: dict[str, list[int]],
    tmp_path: Path,
    targets: list[str] | str,
    extra: dict[str, Any],
) -> None:
    out = make_lora(tiny_base, tmp_path / "a", targets=targets, **extra)
    import json

    spec = lora_spec.spec_from_config(json.loads((out / "adapter_config.json").read_text()))
    saved = load_file(out / "adapter_model.safetensors")
    expected = spec.expected_shapes(shapes)
    assert {k: tuple(v.shape) for k, v in saved.items()} == expected
    lora_spec.check_tensors(saved, expected)


BASE = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"peft_type": "IA3"}, "peft_type must be LORA"),
        ({"r": 0}, "r must be a positive integer"),
        ({"r": "8"}, "r must be an integer"),
        ({"lora_alpha": -1}, "lora_alpha must be a positive"),
        ({"target_modules": None}, "target_modules is missing"),
        ({"target_modules": []}, "target_modules is empty"),
        ({"use_dora": True}, "use_dora"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"bias": "all"}, "bias"),
        # PEFT's own rules on which layers a LoRA covers
        ({"layers_pattern": "layers"}, "layers_pattern needs layers_to_transform"),
        (
            {"target_modules": ".*q_proj", "layers_to_transform": [0]},
            "layers_to_transform cannot be used when target_modules is a regex",
        ),
        (
            {"target_modules": ".*q_proj", "layers_pattern": "layers"},
            "layers_pattern cannot be used when target_modules is a regex",
        ),
    ],
)
def test_bad_configs(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidAdapter, match=message):
        lora_spec.spec_from_config({**BASE, **change})


def test_missing_r() -> None:
    config = dict(BASE)
    del config["r"]
    with pytest.raises(InvalidAdapter, match="missing 'r'"):
        lora_spec.spec_from_config(config)


def test_targets_matching_nothing(shapes: dict[str, list[int]]) -> None:
    spec = lora_spec.spec_from_config({**BASE, "target_modules": ["c_attn"]})
    with pytest.raises(InvalidAdapter, match="matches no linear layer"):
        spec.expected_shapes(shapes)


def _good(shapes: dict[str, list[int]]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    expected = lora_spec.spec_from_config(BASE).expected_shapes(shapes)
    return {k: torch.randn(v) for k, v in expected.items()}, expected


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda t, k: t.__setitem__(k, torch.randn(3, 3)), "has shape"),
        (lambda t, k: t[k].view(-1).__setitem__(0, float("nan")), "NaN or Inf"),
        (lambda t, k: t[k].view(-1).__setitem__(0, float("inf")), "NaN or Inf"),
        (lambda t, k: t.__setitem__(k, torch.ones(t[k].shape, dtype=torch.int32)), "dtype"),
        (lambda t, k: t.pop(k), "missing tensor"),
        (
            lambda t, k: t.__setitem__("base_model.model.lm_head.lora_A.weight", torch.ones(1)),
            "unexpected",
        ),
    ],
)
def test_check_tensors_names_the_problem(
    shapes: dict[str, list[int]],
    corrupt: Callable[[dict[str, torch.Tensor], str], object],
    message: str,
) -> None:
    tensors, expected = _good(shapes)
    corrupt(tensors, sorted(tensors)[0])
    with pytest.raises(InvalidAdapter, match=message):
        lora_spec.check_tensors(tensors, expected)


def test_parse_weights_rejects_garbage() -> None:
    assert lora_spec.parse_weights(save({"a": torch.ones(2)}))["a"].tolist() == [1.0, 1.0]
    with pytest.raises(InvalidAdapter, match="not a valid safetensors"):
        lora_spec.parse_weights(b"\x80\x04garbage")


def test_layout_signature_depends_on_shapes_only(shapes: dict[str, list[int]]) -> None:
    a = lora_spec.spec_from_config(BASE).expected_shapes(shapes)
    b = lora_spec.spec_from_config({**BASE, "lora_alpha": 32}).expected_shapes(shapes)
    c = lora_spec.spec_from_config({**BASE, "r": 8}).expected_shapes(shapes)
    assert lora_spec.layout_signature(a) == lora_spec.layout_signature(b)
    assert lora_spec.layout_signature(a) != lora_spec.layout_signature(c)


def test_float32_weights_are_written_as_safetensors_writes_them() -> None:
    """weights_bytes builds the header once per layout: the bytes stay safetensors' own,
    for every adapter of the layout and for another layout after it."""
    torch.manual_seed(0)
    for shapes in ({"b.w": (3, 4), "a.w": (5,)}, {"b.w": (3, 4), "a.w": (5,)}, {"c": (2, 2)}):
        tensors = {n: torch.randn(s) for n, s in shapes.items()}
        assert lora_spec.weights_bytes(tensors) == save(tensors, metadata={"format": "pt"})


def test_float32_views_and_tensors_that_need_grad_are_written_as_safetensors_does() -> None:
    """The generator's tensors are views of one flat decode, in another order than the
    names'; a transposed view, a strided one and a tensor that needs grad are written
    from their values too."""
    flat = torch.randn(40)
    views = {"z.w": flat[:12].view(3, 4), "a.w": flat[12:20].view(2, 4), "m.w": flat[20:]}
    odd = {
        "t": torch.randn(4, 6).T,
        "s": torch.randn(9)[::2],
        "g": torch.randn(3, requires_grad=True),
    }
    for tensors in (views, odd):
        plain = {n: t.detach().contiguous() for n, t in tensors.items()}
        assert lora_spec.weights_bytes(tensors) == save(plain, metadata={"format": "pt"})
