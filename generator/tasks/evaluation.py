"""Evaluation harness: rank-classification accuracy of an adapter (or the bare
base model) on a task's test split. Every method in loramint is scored here.

The base model loads once per ``Evaluator``; adapters are attached for a
score and removed after it, so evaluating many adapters costs one load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from generator.tasks.device import resolve_device
from generator.tasks.prompting import PromptFormat
from generator.tasks.scoring import label_logprobs
from generator.tasks.task import Example, Task
from registry.base_models import MODEL_LOADING
from registry.errors import InvalidInput
from registry.lora_spec import Adapter, Tensors


@dataclass(frozen=True)
class EvalResult:
    task: str
    accuracy: float
    n: int
    seconds: float
    predictions: tuple[str, ...]


def load_base(path: Path, device: str = "cpu") -> tuple[torch.nn.Module, Any]:
    """The base model (float32, in eval mode, on ``device``: ``generator.tasks.device``) and
    its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = resolve_device(device)
    with MODEL_LOADING:  # transformers' loading is not safe in parallel threads
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    if where.type != "cpu":  # loaded on the CPU; moving there again can meet meta buffers
        torch.nn.Module.to(model, where)  # transformers types .to() for dtypes only
    model.eval()
    return model, tokenizer


def lora_config_from(config: dict[str, Any]) -> Any:
    """A PEFT LoraConfig from an adapter_config.json dict (unknown keys ignored) to attach
    to the base model in hand: the base the dict names (a registry name, where the model
    in hand was loaded from a folder) is left out, or PEFT warns about the difference."""
    from peft import LoraConfig

    names = {f.name for f in dataclasses.fields(LoraConfig) if f.init}
    names.discard("base_model_name_or_path")
    kwargs = {k: v for k, v in config.items() if k in names}
    kwargs["inference_mode"] = True
    return LoraConfig(**kwargs)


class Evaluator:
    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, batch_size: int = 16) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.format = PromptFormat.for_tokenizer(tokenizer)
        self.batch_size = batch_size
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)

    @classmethod
    def from_path(cls, path: Path, *, batch_size: int = 16, device: str = "cpu") -> Evaluator:
        model, tokenizer = load_base(path, device)
        return cls(model, tokenizer, batch_size=batch_size)

    def accuracy(
        self,
        task: Task,
        adapter: Adapter | None = None,
        *,
        examples: Sequence[Example] | None = None,
    ) -> EvalResult:
        """Accuracy on ``task.test`` (or ``examples``), bare or with ``(config, weights)``."""
        examples = task.test if examples is None else examples
        t0 = time.perf_counter()
        scores = self.label_scores(task, adapter, examples=examples)
        predicted = [task.labels[int(i)] for i in scores.argmax(-1)]
        correct = sum(p == e.output for p, e in zip(predicted, examples, strict=True))
        return EvalResult(
            task=task.name,
            accuracy=correct / len(examples),
            n=len(examples),
            seconds=time.perf_counter() - t0,
            predictions=tuple(predicted),
        )

    def label_scores(
        self,
        task: Task,
        adapter: Adapter | None = None,
        *,
        examples: Sequence[Example] | None = None,
    ) -> torch.Tensor:
        """(N, L) log-probability of each of the task's labels after each example's prompt."""
        if not task.is_classification:
            raise InvalidInput(f"task {task.name} has no label set: rank classification needs one")
        examples = task.test if examples is None else examples
        prompts = [self.format.prompt_ids(task.description, e.input) for e in examples]
        labels = [self.format.answer_ids(label) for label in task.labels]
        if adapter is None:
            return label_logprobs(
                self.model, prompts, labels, pad_id=self.pad_id, batch_size=self.batch_size
            )
        with self.attached(*adapter) as model:
            return label_logprobs(
                model, prompts, labels, pad_id=self.pad_id, batch_size=self.batch_size
            )

    def answer_logprobs(
        self, description: str, examples: Sequence[Example], adapter: Adapter | None = None
    ) -> torch.Tensor:
        """(N,) mean log-probability per token of each example's own output (free-form
        outputs, which have no label set to rank)."""
        out = torch.empty(len(examples))
        with contextlib.ExitStack() as stack:
            model = self.model if adapter is None else stack.enter_context(self.attached(*adapter))
            for i, e in enumerate(examples):
                answer = self.format.answer_ids(e.output)
                prompt = self.format.prompt_ids(description, e.input)
                total = label_logprobs(model, [prompt], [answer], pad_id=self.pad_id)
                out[i] = total[0, 0] / len(answer)
        return out

    def attached(self, config: dict[str, Any], weights: Tensors) -> _Attached:
        return _Attached(self.model, config, weights)


class _Attached:
    """Context manager: the base model with a LoRA attached, removed on exit."""

    def __init__(self, model: torch.nn.Module, config: dict[str, Any], weights: Tensors) -> None:
        self.model, self.config, self.weights = model, config, weights
        self.peft_model: Any = None

    def __enter__(self) -> Any:
        from peft import get_peft_model, set_peft_model_state_dict

        with MODEL_LOADING:  # LoRA init must not meet another thread's model load
            self.peft_model = get_peft_model(self.model, lora_config_from(self.config))  # type: ignore[arg-type]
        result = set_peft_model_state_dict(self.peft_model, self.weights)
        missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
        if missing:
            self.peft_model.unload()
            raise InvalidInput(f"adapter weights are missing {missing[0]}")
        self.peft_model.eval()
        return self.peft_model

    def __exit__(self, *exc: object) -> None:
        self.peft_model.unload()


class FunctionalLora:
    """Context manager: the base model with a LoRA of ``config`` attached whose tensors
    each call supplies (PEFT state-dict names). Gradients flow into the supplied
    tensors (a generator's output, learned mixture weights), never into the model."""

    def __init__(self, model: torch.nn.Module, config: dict[str, Any]) -> None:
        self.model, self.config = model, config
        self.peft_model: Any = None
        self.names: set[str] = set()

    def __enter__(self) -> FunctionalLora:
        from peft import get_peft_model

        with MODEL_LOADING:
            self.peft_model = get_peft_model(self.model, lora_config_from(self.config))  # type: ignore[arg-type]
        self.names = {n for n, _ in self.peft_model.named_parameters()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.peft_model.unload()

    def bind(self, weights: Tensors) -> Callable[..., Any]:
        """The attached model called with ``weights`` standing in for its LoRA."""
        params = {
            k.replace(".lora_A.weight", ".lora_A.default.weight").replace(
                ".lora_B.weight", ".lora_B.default.weight"
            ): v
            for k, v in weights.items()
        }
        missing = [k for k in params if k not in self.names]
        if missing:
            raise InvalidInput(f"LoRA tensor {missing[0]} has no place in the base model")

        def call(**kwargs: Any) -> Any:
            return torch.func.functional_call(self.peft_model, params, args=(), kwargs=kwargs)

        return call
