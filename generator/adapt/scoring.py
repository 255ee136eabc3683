"""How well an adapter (or the bare model) does on a caller's examples, per example.

Candidates that share one plain LoRA config (all of a request's do) are
scored together, each row of a batch under its own candidate
(``generator.tasks.multi_lora``); the figures are those of scoring each alone.

Classification: whether the label the adapter ranks first is right, and the
log-probability of the right label normalised over the labels (which breaks
ties between candidates that get the same examples right). Free-form: the mean
log-probability per token of the example's own output. Either way a higher
score is better, and ``Scores.mean`` is what candidates are compared by;
``balanced=True`` averages each label's examples first, so every label counts
the same however many examples it has.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from generator.adapt.examples import FewShot
from generator.tasks.evaluation import Evaluator
from generator.tasks.multi_lora import MultiLora, label_logprobs_many
from registry.lora_spec import Adapter


@dataclass(frozen=True)
class Scores:
    right: torch.Tensor | None  # (N,) 1.0 where the top label is right; None: free-form
    margin: torch.Tensor  # (N,) log p(right label | labels), or mean answer-token log-prob
    gold: torch.Tensor | None = None  # (N,) the right label's index; None: free-form

    def accuracy(self, idx: Sequence[int] | None = None) -> float | None:
        if self.right is None:
            return None
        part = self.right if idx is None else self.right[list(idx)]
        return float(part.mean())

    def mean(
        self, idx: Sequence[int] | None = None, *, balanced: bool = False
    ) -> tuple[float, float]:
        """(accuracy, mean margin) over ``idx`` (all examples by default): what two
        candidates are compared by, the first entry first. Free-form: (margin, margin).
        ``balanced``: the mean of each label's own means (labels absent from ``idx``
        left out)."""
        if balanced and self.right is not None and self.gold is not None:
            rows = torch.arange(len(self.margin)) if idx is None else torch.tensor(list(idx))
            gold = self.gold[rows]
            counts = torch.bincount(gold).double()
            present = counts > 0

            def by_label(values: torch.Tensor) -> float:
                sums = torch.bincount(gold, weights=values[rows].double(), minlength=len(counts))
                return float((sums[present] / counts[present]).mean())

            return by_label(self.right), by_label(self.margin)
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
    return Scores((logits.argmax(-1) == gold).float(), logp, gold)


def score_all(
    evaluator: Evaluator,
    description: str,
    fewshot: FewShot,
    candidates: dict[str, Adapter | None],
) -> dict[str, Scores]:
    """``score`` of every candidate (None: the bare model), in the candidates' order."""
    configs = {json.dumps(a[0], sort_keys=True) for a in candidates.values() if a is not None}
    config = next((a[0] for a in candidates.values() if a is not None), None)
    together = fewshot.is_classification and len(candidates) > 1 and len(configs) == 1
    if config is None or not together or not MultiLora.supports(config):
        return {name: score(evaluator, description, fewshot, a) for name, a in candidates.items()}
    task = fewshot.task(description)
    fmt = evaluator.format
    logits = label_logprobs_many(
        evaluator.model,
        config,
        [None if a is None else a[1] for a in candidates.values()],
        [fmt.prompt_ids(task.description, e.input) for e in fewshot.examples],
        [fmt.answer_ids(label) for label in task.labels],
        pad_id=evaluator.pad_id,
    )  # (C, N, L)
    gold = torch.tensor([task.labels.index(e.output) for e in fewshot.examples])
    out = {}
    for c, name in enumerate(candidates):
        logp = torch.log_softmax(logits[c], dim=-1)[torch.arange(len(gold)), gold]
        out[name] = Scores((logits[c].argmax(-1) == gold).float(), logp, gold)
    return out
