"""How well an adapter (or the bare model) does on a caller's examples, per example.

Classification: whether the label the adapter ranks first is right, and the
log-probability of the right label normalised over the labels (which breaks
ties between candidates that get the same examples right). Free-form: the mean
log-probability per token of the example's own output. Either way a higher
score is better, and ``Scores.mean`` is what candidates are compared by.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from generator.adapt.examples import FewShot
from generator.tasks.evaluation import Evaluator
from registry.lora_spec import Adapter


@dataclass(frozen=True)
class Scores:
    right: torch.Tensor | None  # (N,) 1.0 where the top label is right; None: free-form
    margin: torch.Tensor  # (N,) log p(right label | labels), or mean answer-token log-prob

    def accuracy(self, idx: Sequence[int] | None = None) -> float | None:
        if self.right is None:
            return None
        part = self.right if idx is None else self.right[list(idx)]
        return float(part.mean())

    def mean(self, idx: Sequence[int] | None = None) -> tuple[float, float]:
        """(accuracy, mean margin) over ``idx`` (all examples by default): what two
        candidates are compared by, the first entry first. Free-form: (margin, margin)."""
        part = self.margin if idx is None else self.margin[list(idx)]
        margin = float(part.mean())
        accuracy = self.accuracy(idx)
        return (margin if accuracy is None else accuracy), margin


def score(
    evaluator: Evaluator, description: str, fewshot: FewShot, adapter: Adapter | None
) -> Scores:
    """Every example of ``fewshot`` scored with ``adapter`` (None: the bare model)."""
    if not fewshot.is_classification:
        return Scores(None, evaluator.answer_logprobs(description, fewshot.examples, adapter))
    task = fewshot.task(description)
    logits = evaluator.label_scores(task, adapter, examples=fewshot.examples)  # (N, L)
    gold = torch.tensor([task.labels.index(e.output) for e in fewshot.examples])
    logp = torch.log_softmax(logits, dim=-1)[torch.arange(len(gold)), gold]  # (N,)
    return Scores((logits.argmax(-1) == gold).float(), logp)
