"""Prompt format shared by training, evaluation and transfer.

The contract (docs/design.md): the base model's chat template with one user turn
``"{description}\\n\\n{input}"``; the assistant turn is the output followed by
the template's end-of-turn token. Models without a chat template get a plain
``"{description}\\n\\n{input}\\nAnswer:"`` prompt and ``" {output}<eos>"``.
Loss and scores cover the output tokens and the end-of-turn token, so a label
that is a prefix of another ("no" / "none") is still told apart.

Every prompt of one task starts with the same tokens (the chat template's
system prompt and the description): ``shared_prefix`` finds them, so training
and scoring run them once per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_PROBE = "\u00a7LORAMINT\u00a7"


@dataclass(frozen=True)
class PromptFormat:
    tokenizer: Any
    end_ids: tuple[int, ...]
    chat: bool

    @classmethod
    def for_tokenizer(cls, tokenizer: Any) -> PromptFormat:
        if getattr(tokenizer, "chat_template", None):
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": "x"}, {"role": "assistant", "content": _PROBE}],
                tokenize=False,
            )
            tail = rendered.split(_PROBE, 1)[1]
            # the end-of-turn marker is what follows the content up to the line end
            marker = tail.split("\n", 1)[0] if tail.strip() else ""
            ids = tokenizer(marker, add_special_tokens=False)["input_ids"] if marker else []
            if not ids and tokenizer.eos_token_id is not None:
                ids = [tokenizer.eos_token_id]
            return cls(tokenizer, tuple(ids), chat=True)
        eos = tokenizer.eos_token_id
        return cls(tokenizer, (eos,) if eos is not None else (), chat=False)

    def prompt_text(self, description: str, text: str) -> str:
        content = f"{description}\n\n{text}"
        if self.chat:
            return str(
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": content}],
                    tokenize=False,
                    add_generation_prompt=True,
                )
            )
        return f"{content}\nAnswer:"

    def prompt_ids(self, description: str, text: str) -> list[int]:
        rendered = self.prompt_text(description, text)
        ids = self.tokenizer(rendered, add_special_tokens=not self.chat)["input_ids"]
        return list(ids)

    def answer_ids(self, output: str) -> list[int]:
        text = output if self.chat else f" {output}"
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return [*ids, *self.end_ids]


def shared_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix all prompts share, leaving each at least one own token."""
    if not prompts:
        return 0
    first, limit = prompts[0], min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and all(p[n] == first[n] for p in prompts):
        n += 1
    return n
