"""ICM-LoRA's in-context task vector: the base model's mean last-token hidden
state over a few examples of the task, each rendered as a full chat turn
(description + input, then the output)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from generator.tasks.device import model_device
from generator.tasks.prompting import PromptFormat


class TaskVectorizer:
    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, max_tokens: int = 256) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.format = PromptFormat.for_tokenizer(tokenizer)
        self.max_tokens = max_tokens
        self.hidden_size = int(getattr(model, "config").hidden_size)  # noqa: B009

    @torch.no_grad()
    def __call__(self, description: str, examples: Sequence[tuple[str, str]]) -> torch.Tensor:
        """(H,) mean over ``examples`` of the last layer's state at the last token."""
        if not examples:
            raise ValueError("a task vector needs at least one example")
        states = []
        for text, output in examples:
            ids = self.format.prompt_ids(description, text) + self.format.answer_ids(output)
            ids = ids[-self.max_tokens :]
            out = self.model(
                input_ids=torch.tensor([ids], device=model_device(self.model)),
                output_hidden_states=True,
                logits_to_keep=1,
            )
            states.append(out.hidden_states[-1][0, -1].float().cpu())  # (H,)
        return torch.stack(states).mean(0)
