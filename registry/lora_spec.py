"""What a PEFT LoRA config implies for a base model: which tensors, of which shapes.

Validation needs only the base model's linear-layer shapes (stored in the
registry), never its weights. Target matching is PEFT's own
(``check_target_module_exists``), so an adapter accepted here is one PEFT
would build for that base model. Features loramint cannot validate or
generate (DoRA, modules_to_save, non-linear targets, biases) are refused
with a message that names them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeAlias

from registry.errors import InvalidAdapter

if TYPE_CHECKING:  # torch is imported only where tensors are touched: listing stays fast
    import torch

# A PEFT state dict: tensor name (``base_model.model.<path>.lora_A.weight``) -> tensor.
Tensors: TypeAlias = "dict[str, torch.Tensor]"
# An adapter ready to attach: its adapter_config.json (as a dict) and its weights.
Adapter: TypeAlias = "tuple[dict[str, Any], Tensors]"

KEY_PREFIX = "base_model.model."
FLOAT_DTYPE_NAMES = {"float16", "bfloat16", "float32", "float64"}


@dataclass(frozen=True)
class LoraSpec:
    """The parts of a PEFT LoraConfig that decide tensor names and shapes."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...] | str
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    layers_to_transform: tuple[int, ...] | int | None
    layers_pattern: tuple[str, ...] | str | None
    exclude_modules: tuple[str, ...] | str | None

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise InvalidAdapter(f"r must be a positive integer, got {self.rank}")
        if not math.isfinite(self.alpha) or self.alpha <= 0:
            raise InvalidAdapter(f"lora_alpha must be a positive number, got {self.alpha}")
        if not self.target_modules:
            raise InvalidAdapter("target_modules is empty")

    def _peft_config(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            target_modules=(
                self.target_modules
                if isinstance(self.target_modules, str)
                else list(self.target_modules)
            ),
            layers_to_transform=(
                list(self.layers_to_transform)
                if isinstance(self.layers_to_transform, tuple)
                else self.layers_to_transform
            ),
            layers_pattern=(
                list(self.layers_pattern)
                if isinstance(self.layers_pattern, tuple)
                else self.layers_pattern
            ),
            exclude_modules=(
                list(self.exclude_modules)
                if isinstance(self.exclude_modules, tuple)
                else self.exclude_modules
            ),
        )

    def targeted_modules(self, linear_shapes: dict[str, list[int]]) -> list[str]:
        """Module paths of the base model this config puts a LoRA on, in model order."""
        from peft.tuners.tuners_utils import check_target_module_exists

        if self.target_modules == "all-linear":
            # PEFT's "all-linear" means every linear layer except the output head.
            return [m for m in linear_shapes if m.split(".")[-1] != "lm_head"]
        config = self._peft_config()
        out = []
        for module in linear_shapes:
            hit = check_target_module_exists(config, module)
            if hit and type(hit).__name__ != "_ExcludedModule":
                out.append(module)
        return out

    def rank_for(self, module: str) -> int:
        key = _pattern_key(self.rank_pattern, module)
        return int(self.rank_pattern[key]) if key is not None else self.rank

    def expected_shapes(self, linear_shapes: dict[str, list[int]]) -> dict[str, tuple[int, int]]:
        """PEFT state-dict key -> shape, for every tensor this adapter must hold."""
        modules = self.targeted_modules(linear_shapes)
        if not modules:
            raise InvalidAdapter(
                f"target_modules {self.target_modules!r} matches no linear layer of the base model"
            )
        expected: dict[str, tuple[int, int]] = {}
        for module in modules:
            fan_in, fan_out = linear_shapes[module]
            r = self.rank_for(module)
            expected[f"{KEY_PREFIX}{module}.lora_A.weight"] = (r, fan_in)
            expected[f"{KEY_PREFIX}{module}.lora_B.weight"] = (fan_out, r)
        return expected


def _pattern_key(pattern: dict[str, Any], module: str) -> str | None:
    if not pattern:
        return None
    from peft.utils.other import get_pattern_key

    key = get_pattern_key(list(pattern.keys()), module)
    return key if key in pattern else None


def _as_tuple(value: Any, what: str) -> tuple[Any, ...] | Any:
    if value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise InvalidAdapter(f"{what} must be a string or a list, got {type(value).__name__}")


TASK_TYPES = (
    "CAUSAL_LM", "SEQ_CLS", "SEQ_2_SEQ_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION",
)  # fmt: skip  # PEFT's TaskType values


def _regex(what: str, pattern: Any) -> None:
    """A string PEFT matches module names against, which must compile."""
    if not isinstance(pattern, str) or not pattern:
        raise InvalidAdapter(f"{what} must be a non-empty string, got {pattern!r}")
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise InvalidAdapter(
            f"{what} {pattern!r} is not a valid regular expression: {exc}"
        ) from exc


def _names_or_regex(what: str, value: Any, *, optional: bool) -> None:
    """A PEFT module selector: a regex string, or a list of module names."""
    if value is None and optional:
        return
    if isinstance(value, str):
        _regex(what, value)
    elif isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return
    else:
        raise InvalidAdapter(f"{what} must be a regex string or a list of module names")


def _pattern(what: str, value: Any, check: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise InvalidAdapter(f"{what} must be an object of pattern -> value")
    for key, v in value.items():
        _regex(f"{what} key", key)
        check(f"{what}[{key!r}]", v)


def _positive_int(what: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise InvalidAdapter(f"{what} must be a positive integer, got {v!r}")


def _positive_number(what: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
        raise InvalidAdapter(f"{what} must be a positive number, got {v!r}")


def check_peft_fields(config: dict[str, Any]) -> None:
    """Every field PEFT reads when it loads the adapter, with the value it accepts, so
    that what is accepted here loads with ``PeftModel.from_pretrained`` and nothing in
    it can fail later (a regex that does not compile, a task type PEFT does not know)."""
    task_type = config.get("task_type")
    if task_type is not None and task_type not in TASK_TYPES:
        raise InvalidAdapter(
            f"task_type must be one of {', '.join(TASK_TYPES)} or null, got {task_type!r}"
        )
    _names_or_regex("target_modules", config.get("target_modules"), optional=True)
    _names_or_regex("exclude_modules", config.get("exclude_modules"), optional=True)
    _pattern("rank_pattern", config.get("rank_pattern"), _positive_int)
    _pattern("alpha_pattern", config.get("alpha_pattern"), _positive_number)
    layers = config.get("layers_to_transform")
    if layers is not None and not (
        (isinstance(layers, int) and not isinstance(layers, bool) and layers >= 0)
        or (
            isinstance(layers, list)
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in layers)
        )
    ):
        raise InvalidAdapter(
            f"layers_to_transform must be a layer index or a list of them, got {layers!r}"
        )
    pattern = config.get("layers_pattern")
    if pattern is not None and not (
        (isinstance(pattern, str) and pattern)
        or (
            isinstance(pattern, list) and pattern and all(isinstance(x, str) and x for x in pattern)
        )
    ):
        raise InvalidAdapter(f"layers_pattern must be a name or a list of names, got {pattern!r}")
    if isinstance(config.get("target_modules"), str):  # a regex chooses the layers itself
        for field in ("layers_to_transform", "layers_pattern"):
            if config.get(field) is not None:
                raise InvalidAdapter(f"{field} cannot be used when target_modules is a regex")
    if pattern and layers is None:
        raise InvalidAdapter("layers_pattern needs layers_to_transform (the layers it picks)")
    dropout = config.get("lora_dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise InvalidAdapter(f"lora_dropout must be a number in [0, 1), got {dropout!r}")
    for flag in ("fan_in_fan_out", "use_rslora", "inference_mode"):
        if flag in config and not isinstance(config[flag], bool):
            raise InvalidAdapter(f"{flag} must be true or false, got {config[flag]!r}")
    init = config.get("init_lora_weights", True)
    if not isinstance(init, bool | str):
        raise InvalidAdapter(f"init_lora_weights must be true, false or a name, got {init!r}")


def spec_from_config(config: dict[str, Any]) -> LoraSpec:
    """Parse and check an adapter_config.json dict."""
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise InvalidAdapter(f"peft_type must be LORA, got {config.get('peft_type')!r}")
    unsupported = {
        "use_dora": bool(config.get("use_dora")),
        "modules_to_save": bool(config.get("modules_to_save")),
        "bias": config.get("bias", "none") not in (None, "none"),
        "target_parameters": bool(config.get("target_parameters")),
        "trainable_token_indices": bool(config.get("trainable_token_indices")),
        "lora_bias": bool(config.get("lora_bias")),
        "layer_replication": bool(config.get("layer_replication")),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise InvalidAdapter(f"unsupported LoRA options: {', '.join(bad)} (plain LoRA only)")
    check_peft_fields(config)
    try:
        rank = config["r"]
        alpha = config.get("lora_alpha", rank)
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise InvalidAdapter(f"r must be an integer, got {rank!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise InvalidAdapter(f"lora_alpha must be a number, got {alpha!r}")
        targets = config.get("target_modules")
        if targets is None:
            raise InvalidAdapter("target_modules is missing (loramint needs explicit targets)")
        return LoraSpec(
            rank=rank,
            alpha=float(alpha),
            target_modules=_as_tuple(targets, "target_modules"),
            rank_pattern=dict(config.get("rank_pattern") or {}),
            alpha_pattern=dict(config.get("alpha_pattern") or {}),
            layers_to_transform=_as_tuple(config.get("layers_to_transform"), "layers_to_transform"),
            layers_pattern=_as_tuple(config.get("layers_pattern"), "layers_pattern"),
            exclude_modules=_as_tuple(config.get("exclude_modules"), "exclude_modules"),
        )
    except KeyError as exc:
        raise InvalidAdapter(f"adapter_config.json is missing {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        raise InvalidAdapter(f"adapter_config.json is invalid: {exc}") from exc


@lru_cache(maxsize=16)
def _f32_header(tensors: tuple[tuple[str, tuple[int, ...]], ...]) -> bytes:
    """The safetensors header (padded) of float32 tensors (name, shape), in that order:
    the same for every adapter of one layout, so it is built once."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        size = math.prod(shape) * 4
        header[name] = {
            "dtype": "F32",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    return text + b" " * (-len(text) % 8)  # the format's alignment padding


def weights_bytes(weights: Tensors) -> bytes:
    """``adapter_model.safetensors`` of a state dict (PEFT's own ``{"format": "pt"}``).
    float32 state dicts (every generated adapter) are written in one pass: the
    header, then each tensor's memory by name, joined in one copy; the same tensors
    always give the same bytes."""
    import torch

    if not weights or any(t.dtype != torch.float32 for t in weights.values()):
        from safetensors.torch import save

        return save({k: v.contiguous() for k, v in weights.items()}, metadata={"format": "pt"})
    import numpy as np

    names = sorted(weights)
    text = _f32_header(tuple((n, tuple(weights[n].shape)) for n in names))
    parts = [memoryview(len(text).to_bytes(8, "little")), memoryview(text)]
    parts += [np.ascontiguousarray(weights[n].numpy(force=True)).data for n in names]
    return b"".join(parts)


def check_weights_bytes(raw: bytes, expected: dict[str, tuple[int, int]]) -> None:
    """``check_tensors`` on safetensors bytes; a float32 file is checked from its header
    and one pass over its payload, without building its tensors."""
    try:
        size = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + size])
        header.pop("__metadata__", None)
        dtypes = {v["dtype"] for v in header.values()}
    except (ValueError, TypeError, KeyError, AttributeError):
        dtypes = set()
    if dtypes != {"F32"}:
        check_tensors(parse_weights(raw), expected)
        return
    import numpy as np

    shapes = {name: tuple(v["shape"]) for name, v in header.items()}
    spans = sorted(
        (v["data_offsets"][0], v["data_offsets"][1], shapes[n]) for n, v in header.items()
    )
    payload = memoryview(raw)[8 + size :]  # a view: the weights are not copied
    tiled = all(
        start == (spans[i - 1][1] if i else 0) and end - start == 4 * math.prod(shape)
        for i, (start, end, shape) in enumerate(spans)
    )
    if not spans or not tiled or spans[-1][1] != len(payload):
        check_tensors(parse_weights(raw), expected)  # let the parser name the problem
        return
    _check_names_and_shapes(shapes, expected)
    if not np.isfinite(np.frombuffer(payload, dtype=np.float32)).all():
        check_tensors(parse_weights(raw), expected)  # names the tensor


def parse_weights(raw: bytes) -> Tensors:
    """Load safetensors bytes (no pickle involved), translating parser errors."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(raw)
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        raise InvalidAdapter(
            f"adapter_model.safetensors is not a valid safetensors file: {exc}"
        ) from exc


def check_tensors(tensors: Tensors, expected: dict[str, tuple[int, int]]) -> None:
    """Names, shapes, dtypes and finiteness, with the first problem named."""
    import torch

    _check_names_and_shapes({n: tuple(t.shape) for n, t in tensors.items()}, expected)
    for name in expected:
        t = tensors[name]
        if str(t.dtype).removeprefix("torch.") not in FLOAT_DTYPE_NAMES:
            raise InvalidAdapter(f"tensor {name!r} has dtype {t.dtype}, expected a float dtype")
        if not bool(torch.isfinite(t).all()):
            raise InvalidAdapter(f"tensor {name!r} contains NaN or Inf values")


def _check_names_and_shapes(
    shapes: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, int]]
) -> None:
    names = set(shapes)
    # PEFT strips the adapter name on save; some tools leave ".default" in.
    missing = sorted(set(expected) - names)
    extra = sorted(names - set(expected))
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise InvalidAdapter(f"unexpected tensor {extra[0]!r}{more} for this config and base model")
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InvalidAdapter(f"missing tensor {missing[0]!r}{more}")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise InvalidAdapter(
                f"tensor {name!r} has shape {list(shapes[name])}, "
                f"expected {list(shape)} for this base model"
            )


def row_fields(spec: LoraSpec, expected: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """The ``adapters`` columns an adapter's config decides."""
    targets = spec.target_modules
    return {
        "peft_type": "LORA",
        "rank": spec.rank,
        "alpha": spec.alpha,
        "target_modules": [targets] if isinstance(targets, str) else sorted(targets),
        "layout_signature": layout_signature(expected),
    }


def layout_signature(expected: dict[str, tuple[int, int]]) -> str:
    """sha256 of the sorted (name, shape) list: same signature, same generator family."""
    items = sorted((name, list(shape)) for name, shape in expected.items())
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


__all__ = [
    "LoraSpec",
    "spec_from_config",
    "parse_weights",
    "check_tensors",
    "layout_signature",
]
