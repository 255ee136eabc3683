"""Serving checks: can PEFT, vLLM and LoRAX serve this adapter as it was trained?

Pure rules over an adapter's ``adapter_config.json`` (a dict), its tensor names and
shapes, and what the registry stores about its base model (the architecture name and
the linear-layer shapes). No torch at import time. Each rule cites where the engine
states the limit; a rule returns findings (target, rule id, severity, one line naming
the field and the fix), never raises on a bad adapter.

The ``peft`` target is the registry's own upload validator (``registry.lora_spec``):
what passes it loads with ``PeftModel.from_pretrained``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from registry import lora_spec
from registry.errors import InvalidAdapter, InvalidInput

if TYPE_CHECKING:
    from registry.lora_spec import Tensors
    from registry.service import Registry

Target = Literal["peft", "vllm", "lorax"]
TARGETS: tuple[Target, ...] = get_args(Target)
Severity = Literal["error", "warning"]
Shapes = Mapping[str, Sequence[int]]  # tensor name -> shape

KEY_PREFIX = lora_spec.KEY_PREFIX  # "base_model.model."
LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")

# vLLM accepts ``--max-lora-rank`` only from this set (vllm/config/lora.py,
# ``MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]``, docs.vllm.ai
# api/vllm/config/lora); the default is 16, and vLLM refuses an adapter whose rank is
# "greater than max_lora_rank" (vllm/lora/peft_helper.py, ``validate_legal``).
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_MAX_LORA_RANK = 16

# LoRAX pads ranks for its SGMV kernels; its custom kernels and BGMV decode path cover
# ranks up to 128 (lorax_server/utils/sgmv.py: MAX_RANK_CUSTOM = BGMV_MAX_RANK = 128),
# larger ranks fall back to the slower kernels and cannot be batched with others
# (``BatchLoraWeights.can_vectorize`` in lorax_server/adapters/lora.py). No hard limit.
LORAX_FAST_MAX_RANK = 128

_PROJECTIONS = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
)

# Modules vLLM puts a LoRA on, per architecture (PEFT's module names; vLLM packs
# q/k/v into ``qkv_proj`` and gate/up into ``gate_up_proj`` and loads PEFT's separate
# tensors into the packed layer). Llama (and Mistral, served by vLLM's Llama class):
# vllm/model_executor/models/llama.py, ``packed_modules_mapping`` and
# ``supported_lora_modules = [qkv_proj, o_proj, gate_up_proj, down_proj, embed_tokens,
# lm_head]``; Gemma 3: vllm/model_executor/models/gemma3.py (``Gemma3ForCausalLM``,
# SupportsLoRA, the same packing, no lm_head LoRA). A module outside the set makes vLLM
# refuse the adapter ("expected target modules in ... but received ...",
# vllm/lora/models.py ``from_local_checkpoint``).
VLLM_MODULES: dict[str, frozenset[str]] = {
    "LlamaForCausalLM": _PROJECTIONS | {"lm_head"},
    "MistralForCausalLM": _PROJECTIONS | {"lm_head"},
    "Gemma3ForCausalLM": _PROJECTIONS,
}

# LoRAX's documented target modules per architecture (docs/models/adapters/lora.md,
# "Target Modules"): modules outside the list are ignored with a warning on the
# backend, so the served adapter silently differs from the trained one. Architectures
# missing from its list are "best effort ... do not support dynamic adapter loading"
# (docs/models/base_models.md).
LORAX_MODULES: dict[str, frozenset[str]] = {
    "LlamaForCausalLM": _PROJECTIONS | {"lm_head"},
    "MistralForCausalLM": _PROJECTIONS | {"lm_head"},
    "Qwen2ForCausalLM": _PROJECTIONS | {"lm_head"},
    "GemmaForCausalLM": _PROJECTIONS,
}


@dataclass(frozen=True)
class Finding:
    target: str
    rule: str
    severity: Severity
    message: str


@dataclass(frozen=True)
class TargetCheck:
    """One target's findings, and the server settings it needs (vLLM: max_lora_rank)."""

    target: Target
    findings: list[Finding]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)


def parse_targets(target: str) -> tuple[Target, ...]:
    """``peft``, ``vllm``, ``lorax`` or ``all`` (case-insensitive)."""
    name = target.strip().lower()
    if name == "all":
        return TARGETS
    for t in TARGETS:
        if name == t:
            return (t,)
    raise InvalidInput(f"unknown target {target!r}: choose peft, vllm, lorax or all")


def tensor_shapes(weights: Tensors) -> dict[str, tuple[int, ...]]:
    return {name: tuple(int(d) for d in t.shape) for name, t in weights.items()}


# -- reading an adapter ---------------------------------------------------------


def module_of(key: str) -> str | None:
    """The module path a PEFT LoRA tensor name stands for, or None when the name is not
    ``base_model.model.<path>.lora_A.weight`` / ``.lora_B.weight``."""
    if not key.startswith(KEY_PREFIX):
        return None
    for suffix in LORA_SUFFIXES:
        if key.endswith(suffix):
            return key[len(KEY_PREFIX) : -len(suffix)] or None
    return None


def adapter_rank(config: Mapping[str, Any], shapes: Shapes) -> int:
    """The largest rank the adapter uses: ``r``, ``rank_pattern`` values and the rank
    dimension of its ``lora_A`` tensors."""
    ranks = [0]
    r = config.get("r")
    if isinstance(r, int) and not isinstance(r, bool):
        ranks.append(r)
    pattern = config.get("rank_pattern")
    if isinstance(pattern, dict):
        ranks += [v for v in pattern.values() if isinstance(v, int) and not isinstance(v, bool)]
    ranks += [int(s[0]) for k, s in shapes.items() if k.endswith(".lora_A.weight") and s]
    return max(ranks)


def targeted_leaves(config: Mapping[str, Any], shapes: Shapes) -> set[str]:
    """Module names (the last path part: ``q_proj``) the adapter puts a LoRA on: from
    its tensors and from an explicit ``target_modules`` list."""
    leaves = {m.rsplit(".", 1)[-1] for k in shapes if (m := module_of(k)) is not None}
    targets = config.get("target_modules")
    if isinstance(targets, list):
        leaves |= {t.rsplit(".", 1)[-1] for t in targets if isinstance(t, str) and t}
    return leaves


def _first(names: Sequence[str]) -> str:
    more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
    return f"{names[0]!r}{more}"


# -- rules ------------------------------------------------------------------------


def vllm_max_lora_rank(rank: int) -> int | None:
    """The smallest ``--max-lora-rank`` vLLM accepts that serves ``rank`` (None: none)."""
    return next((m for m in VLLM_MAX_LORA_RANKS if m >= rank), None)


def _err(target: str, rule: str, message: str) -> Finding:
    return Finding(target, f"{target}.{rule}", "error", message)


def _warn(target: str, rule: str, message: str) -> Finding:
    return Finding(target, f"{target}.{rule}", "warning", message)


def rank_rules(target: Target, config: Mapping[str, Any], shapes: Shapes) -> list[Finding]:
    rank = adapter_rank(config, shapes)
    if target == "vllm":
        needed, largest = vllm_max_lora_rank(rank), VLLM_MAX_LORA_RANKS[-1]
        if needed is None:
            msg = f"r={rank} is above vLLM's largest --max-lora-rank ({largest}): retrain with "
            return [_err(target, "rank", f"{msg}r <= {largest}")]
        if needed > VLLM_DEFAULT_MAX_LORA_RANK:
            msg = f"r={rank} needs vLLM started with --max-lora-rank {needed} (the default is "
            return [_warn(target, "rank", f"{msg}{VLLM_DEFAULT_MAX_LORA_RANK})")]
    if target == "lorax" and rank > LORAX_FAST_MAX_RANK:
        msg = (
            f"r={rank} is above {LORAX_FAST_MAX_RANK}: LoRAX serves it on its slower fallback "
            f"kernels; retrain with r <= {LORAX_FAST_MAX_RANK} for speed"
        )
        return [_warn(target, "rank", msg)]
    return []


def module_rules(
    target: Target, architecture: str | None, config: Mapping[str, Any], shapes: Shapes
) -> list[Finding]:
    table = VLLM_MODULES if target == "vllm" else LORAX_MODULES
    engine = "vLLM" if target == "vllm" else "LoRAX"
    if architecture is None:
        msg = f"base model architecture unknown: target_modules not checked against {engine}'s"
        return [_warn(target, "modules", f"{msg} supported modules")]
    supported = table.get(architecture)
    if supported is None and target == "lorax":
        msg = (
            f"LoRAX lists no LoRA target modules for {architecture} (other architectures are "
            "best effort, without dynamic adapter loading): serve this adapter with vLLM or PEFT"
        )
        return [_err(target, "modules", msg)]
    if supported is None:
        msg = f"loramint has no vLLM module table for {architecture}: check target_modules"
        return [_warn(target, "modules", f"{msg} against vLLM's supported models list")]
    unsupported = sorted(targeted_leaves(config, shapes) - supported)
    if not unsupported:
        return []
    what = "ignores" if target == "lorax" else "does not serve LoRA on"
    msg = (
        f"target_modules: {engine} {what} {', '.join(unsupported)} for {architecture}; keep "
        f"target_modules within {', '.join(sorted(supported))}"
    )
    return [_err(target, "modules", msg)]


def feature_rules(target: Target, config: Mapping[str, Any]) -> list[Finding]:
    """Options PEFT has and the engine does not. vLLM: ``PEFTHelper._validate_features``
    refuses modules_to_save ("vLLM only supports modules_to_save being None") and DoRA
    ("vLLM does not yet support DoRA"); LoRA biases were removed (vllm PR #25807,
    ``bias: Literal["none"]``); ``PEFTHelper`` keeps only r, lora_alpha, target_modules,
    bias, modules_to_save, use_rslora and use_dora, so rank/alpha patterns are dropped and
    every module is scaled by lora_alpha / r (vllm/lora/peft_helper.py). LoRAX: its
    ``LoraConfig.load`` reads only r, target_modules, fan_in_fan_out, lora_alpha and
    use_rslora (lorax_server/adapters/lora.py), so every other option is silently lost."""
    engine = "vLLM" if target == "vllm" else "LoRAX"
    does = "does not support" if target == "vllm" else "ignores"
    out = []
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        msg = f"peft_type is {config.get('peft_type')!r}: {engine} serves LoRA adapters only"
        out.append(_err(target, "peft_type", msg))
    if config.get("modules_to_save"):
        msg = (
            f"modules_to_save={config['modules_to_save']!r}: {engine} {does} it; retrain with "
            "modules_to_save null or merge those modules into the base model"
        )
        out.append(_err(target, "modules_to_save", msg))
    if config.get("use_dora"):
        msg = (
            f"use_dora is true: {engine} {does} DoRA; retrain with use_dora false or merge the "
            "adapter into the base model"
        )
        out.append(_err(target, "dora", msg))
    bias = config.get("bias", "none")
    if bias not in (None, "none") or config.get("lora_bias"):
        what = f"bias={bias!r}" if bias not in (None, "none") else "lora_bias is true"
        msg = f'{what}: {engine} {does} LoRA biases; retrain with bias "none", lora_bias false'
        out.append(_err(target, "bias", msg))
    r, alpha = config.get("r"), config.get("lora_alpha", config.get("r"))
    for name, default in (("rank_pattern", r), ("alpha_pattern", alpha)):
        pattern = config.get(name)
        if isinstance(pattern, dict) and any(v != default for v in pattern.values()):
            msg = (
                f"{name} is set: {engine} scales every module by lora_alpha / r and ignores "
                f"{name}; retrain with one r and lora_alpha"
            )
            out.append(_err(target, "patterns", msg))
    return out


def name_rules(
    target: Target, shapes: Shapes, linear_shapes: Mapping[str, Sequence[int]] | None
) -> list[Finding]:
    """Tensor names. vLLM parses ``base_model.model.<module>.lora_A.weight`` and refuses
    other names as an "unsupported LoRA weight" (vllm/lora/utils.py,
    ``parse_fine_tuned_lora_name``); LoRAX looks up exactly
    ``base_model.model.{weight_name}.lora_A.weight`` and skips anything else
    (``LoraConfig.map_weights_for_model``, lorax_server/adapters/lora.py)."""
    engine = "vLLM" if target == "vllm" else "LoRAX"
    out = []
    names = sorted(shapes)
    no_prefix = [k for k in names if not k.startswith(KEY_PREFIX)]
    if no_prefix:
        msg = (
            f"tensor {_first(no_prefix)} does not start with {KEY_PREFIX!r}: {engine} cannot "
            "place it; save with PEFT's save_pretrained (base_model.model.<module>.lora_A.weight)"
        )
        out.append(_err(target, "tensor-prefix", msg))
    bad_suffix = [k for k in names if k.startswith(KEY_PREFIX) and module_of(k) is None]
    if bad_suffix:
        msg = (
            f"tensor {_first(bad_suffix)} is not a lora_A/lora_B weight: {engine} loads only "
            "<module>.lora_A.weight and .lora_B.weight; drop the extra tensors"
        )
        out.append(_err(target, "tensor-suffix", msg))
    if linear_shapes is not None:
        unknown = [k for k in names if (m := module_of(k)) is not None and m not in linear_shapes]
        if unknown:
            msg = (
                f"tensor {_first(unknown)} names a module the base model does not have: use the "
                "base model's module paths, or check the adapter against its own base model"
            )
            out.append(_err(target, "tensor-module", msg))
    return out


def lorax_layer_rule(shapes: Shapes, linear_shapes: Mapping[str, Sequence[int]]) -> list[Finding]:
    """LoRAX stacks one module type's LoRA over every layer, and drops that module type
    for the whole adapter when any layer lacks it (``LoraWeights.load``: "There is no
    LoRA weight for this layer type in the adapter"), so layers_to_transform subsets are
    silently not applied; ranks must also agree across layers to be stacked."""
    by_leaf: dict[str, set[str]] = {}
    for path in linear_shapes:
        by_leaf.setdefault(path.rsplit(".", 1)[-1], set()).add(path)
    have: dict[str, set[str]] = {}
    ranks: dict[str, set[int]] = {}
    for key, shape in shapes.items():
        module = module_of(key)
        if module is None or module not in linear_shapes:
            continue
        leaf = module.rsplit(".", 1)[-1]
        have.setdefault(leaf, set()).add(module)
        if key.endswith(".lora_A.weight") and shape:
            ranks.setdefault(leaf, set()).add(int(shape[0]))
    out = []
    partial = sorted(leaf for leaf, mods in have.items() if mods != by_leaf.get(leaf, mods))
    if partial:
        msg = (
            f"{', '.join(partial)} covers only some layers (layers_to_transform): LoRAX drops a "
            "module type missing from any layer; target every layer"
        )
        out.append(_err("lorax", "layers", msg))
    uneven = sorted(leaf for leaf, rs in ranks.items() if len(rs) > 1)
    if uneven:
        msg = (
            f"{', '.join(uneven)} has different ranks across layers: LoRAX stacks one rank per "
            "module type; use one r for every layer"
        )
        out.append(_err("lorax", "layers", msg))
    return out


def check_peft(
    config: dict[str, Any], weights: Tensors, linear_shapes: dict[str, list[int]] | None
) -> list[Finding]:
    """The registry's own upload validator (``registry.lora_spec``): config fields PEFT
    reads, then every tensor name, shape, dtype and value against the base model."""
    try:
        spec = lora_spec.spec_from_config(config)
        if linear_shapes is not None:
            lora_spec.check_tensors(weights, spec.expected_shapes(linear_shapes))
    except InvalidAdapter as exc:
        return [Finding("peft", "peft.validator", "error", f"{exc}")]
    return []


def check_engine(
    target: Literal["vllm", "lorax"],
    config: Mapping[str, Any],
    shapes: Shapes,
    *,
    architecture: str | None = None,
    linear_shapes: Mapping[str, Sequence[int]] | None = None,
) -> TargetCheck:
    """Every rule of one serving engine."""
    findings = [
        *feature_rules(target, config),
        *rank_rules(target, config, shapes),
        *module_rules(target, architecture, config, shapes),
        *name_rules(target, shapes, linear_shapes),
    ]
    if target == "lorax" and linear_shapes is not None:
        findings += lorax_layer_rule(shapes, linear_shapes)
    settings: dict[str, Any] = {}
    if target == "vllm":
        settings["max_lora_rank"] = vllm_max_lora_rank(adapter_rank(config, shapes))
    return TargetCheck(target, findings, settings)


def check_serving(
    config: dict[str, Any],
    weights: Tensors,
    *,
    targets: Sequence[Target] = TARGETS,
    architecture: str | None = None,
    linear_shapes: dict[str, list[int]] | None = None,
) -> list[TargetCheck]:
    """The checks of ``targets`` on an adapter given as its config and weights."""
    out = []
    for target in targets:
        if target == "peft":
            out.append(TargetCheck("peft", check_peft(config, weights, linear_shapes)))
        else:
            shapes = tensor_shapes(weights)
            out.append(
                check_engine(
                    target, config, shapes, architecture=architecture, linear_shapes=linear_shapes
                )
            )
    return out


@dataclass(frozen=True)
class ServingCheck:
    adapter_id: int
    base_model: str
    architecture: str | None
    targets: list[TargetCheck]

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.targets)


def check_registered(
    registry: Registry, adapter_id: int, targets: Sequence[Target] = TARGETS
) -> ServingCheck:
    """The checks of ``targets`` on a registered adapter: its stored config and weights,
    its base model's architecture and linear-layer shapes."""
    record = registry.get_adapter(adapter_id)
    files = registry.adapter_files(adapter_id)
    base = next((b for b in registry.list_base_models() if b.name == record.base_model), None)
    architecture = base.architecture if base is not None else None
    linear_shapes = registry.linear_shapes(record.base_model)
    weights = lora_spec.parse_weights(files.weights)
    checks = check_serving(
        files.config,
        weights,
        targets=targets,
        architecture=architecture,
        linear_shapes=linear_shapes,
    )
    return ServingCheck(adapter_id, record.base_model, architecture, checks)
