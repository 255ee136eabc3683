"""Many LoRA adapters scored in the same forward passes.

Choosing among candidate adapters scores each on the same prompts. One pass per
candidate pads every batch to its longest prompt and runs small matrix
products; here every row of a batch carries its own candidate instead: the
LoRA-targeted linear layers are wrapped, for the duration of a ``with``, by
layers that add each row's own low-rank update to the shared base product.
Rows of the same prompt under different candidates have the same length, so
batches of similar-length rows hold little padding and the base model's
products run on larger matrices. The figures are those of attaching each
adapter with PEFT in turn (the same ``base(x) + (x A^T) B^T * scale``), up to
float rounding.

Plain LoRA only (one rank and one alpha for every module, linear layers):
``MultiLora.supports`` says whether a config qualifies; callers score others one
adapter at a time.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Sequence
from typing import Any

import torch

from generator.tasks.device import model_device
from generator.tasks.kv_cache import returned
from generator.tasks.prompting import shared_prefix
from generator.tasks.scoring import PER_BATCH, label_tensor, length_batches, score_batch
from registry.lora_spec import KEY_PREFIX, Tensors, check_tensors, spec_from_config

ROWS_PER_BATCH = 128  # (candidate, prompt) rows in one pass at most


class Rows:
    """The candidate of each row of the batch the model runs next, shared by every
    wrapped layer. A batch k times as long holds each row k times in a row (the
    label pass of ``score_batch`` repeats every prompt once per label)."""

    def __init__(self) -> None:
        self._index = torch.zeros(0, dtype=torch.long)
        self._repeated: dict[int, torch.Tensor] = {}

    @property
    def index(self) -> torch.Tensor:
        return self._index

    @index.setter
    def index(self, value: torch.Tensor) -> None:
        """Set where the model runs (every wrapped layer reads it on each pass)."""
        self._index, self._repeated = value, {}

    def of(self, batch: int) -> torch.Tensor:
        n = len(self._index)
        if n == 0 or batch % n:
            raise RuntimeError(f"a batch of {batch} rows does not match {n} row candidates")
        if batch == n:
            return self._index
        if batch not in self._repeated:  # once per pass, not once per layer
            self._repeated[batch] = self._index.repeat_interleave(batch // n)
        return self._repeated[batch]


class RowLora(torch.nn.Module):
    """A linear layer plus, for each row, the low-rank update of that row's candidate."""

    def __init__(
        self, base: torch.nn.Linear, a: torch.Tensor, b: torch.Tensor, scale: float, rows: Rows
    ) -> None:
        super().__init__()
        self.base, self.scale, self.rows = base, scale, rows
        self.a, self.b = a, b  # (C, r, in), (C, out, r): every candidate's A and B

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        idx = self.rows.of(B).to(x.device)
        low = torch.bmm(x, self.a[idx].transpose(1, 2))  # (B, T, r)
        return self.base(x) + torch.bmm(low, self.b[idx].transpose(1, 2)) * self.scale


Swapped = list[tuple[torch.nn.Module, str, torch.nn.Module]]  # (parent, name, the layer)


def attach_rows(
    model: torch.nn.Module, stacked: dict[str, torch.Tensor], scale: float, rows: Rows
) -> Swapped:
    """Swap every linear layer ``stacked`` names (PEFT state-dict names -> (C, ...) A and
    B of every candidate) for a ``RowLora``; returns what ``detach_rows`` puts back. On
    an error nothing stays swapped."""
    swapped: Swapped = []
    modules = sorted({k[len(KEY_PREFIX) :].rsplit(".lora_", 1)[0] for k in stacked})
    try:
        for path in modules:
            parent_path, _, name = path.rpartition(".")
            parent = model.get_submodule(parent_path)
            base = getattr(parent, name)
            a = stacked[f"{KEY_PREFIX}{path}.lora_A.weight"]
            b = stacked[f"{KEY_PREFIX}{path}.lora_B.weight"]
            setattr(parent, name, RowLora(base, a, b, scale, rows))
            swapped.append((parent, name, base))
    except BaseException:
        detach_rows(swapped)
        raise
    return swapped


def detach_rows(swapped: Swapped) -> None:
    """Put back the layers ``attach_rows`` swapped out."""
    while swapped:
        parent, name, base = swapped.pop()
        setattr(parent, name, base)


class MultiLora:
    """Context manager: ``model`` with the candidates' LoRAs attached row by row
    (``weights[c]`` is candidate c's PEFT state dict; None is no adapter)."""

    def __init__(
        self, model: torch.nn.Module, config: dict[str, Any], weights: Sequence[Tensors | None]
    ) -> None:
        if not self.supports(config):
            raise ValueError("MultiLora takes plain LoRA configs only (see MultiLora.supports)")
        self.model, self.rows = model, Rows()
        spec = spec_from_config(config)
        linear = {
            name: [m.in_features, m.out_features]
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear)
        }
        self.expected = spec.expected_shapes(linear)
        for w in weights:
            if w is not None:
                check_tensors(w, self.expected)
        denominator = math.sqrt(spec.rank) if config.get("use_rslora") else spec.rank
        self.scale = spec.alpha / denominator
        self.weights = list(weights)
        self.swapped: Swapped = []

    @staticmethod
    def supports(config: dict[str, Any]) -> bool:
        plain = not (
            config.get("rank_pattern")
            or config.get("alpha_pattern")
            or config.get("fan_in_fan_out")
            or config.get("use_dora")
        )
        return plain and str(config.get("peft_type", "")).upper() == "LORA"

    def __enter__(self) -> MultiLora:
        device = model_device(self.model)
        stacked = {key: self._stack(key, device) for key in self.expected}
        self.swapped = attach_rows(self.model, stacked, self.scale, self.rows)
        return self

    def _stack(self, key: str, device: torch.device) -> torch.Tensor:
        shape = self.expected[key]
        return torch.stack(
            [torch.zeros(shape) if w is None else w[key].detach().float() for w in self.weights]
        ).to(device)  # (C, *shape)

    def __exit__(self, *exc: object) -> None:
        detach_rows(self.swapped)

    def __call__(self, rows: torch.Tensor, **kwargs: Any) -> Any:
        """The model on a batch whose row i is scored with candidate ``rows[i]``."""
        self.rows.index = rows.to(model_device(self.model))  # once, not in every layer
        return self.model(**kwargs)


@torch.no_grad()
def label_logprobs_many(
    model: torch.nn.Module,
    config: dict[str, Any],
    weights: Sequence[Tensors | None],
    prompts: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    *,
    pad_id: int,
) -> torch.Tensor:
    """(C, N, L) log-probability of each label after each prompt under each candidate:
    ``label_logprobs`` for C adapters at once."""
    C, N = len(weights), len(prompts)
    device = model_device(model)
    lab, lab_mask = (t.to(device) for t in label_tensor(labels, pad_id))
    out = torch.empty((C, N, lab.shape[0]))
    if N == 0 or C == 0:
        return out
    n_prefix = shared_prefix(prompts)
    prefix = list(prompts[0][:n_prefix])
    own = [p[n_prefix:] for p in prompts]
    with MultiLora(model, config, weights) as lora:
        cache = None
        if prefix:  # every candidate's own prefix cache, row c for candidate c
            ids = torch.tensor([prefix] * C, device=device)
            cache = returned(lora(torch.arange(C), input_ids=ids, use_cache=True, logits_to_keep=1))
        rows = [(c, i) for c in range(C) for i in range(N)]
        lengths = [len(own[i]) for _, i in rows]
        for batch in length_batches(lengths, ROWS_PER_BATCH, PER_BATCH):
            cand = torch.tensor([rows[r][0] for r in batch])
            step = copy.deepcopy(cache)
            if step is not None:
                step.batch_select_indices(cand.to(device))
            batch_own = [own[rows[r][1]] for r in batch]
            run = functools.partial(lora, cand)
            scores = score_batch(
                run, prefix, batch_own, lab, lab_mask, pad_id, cache=step, cache_rows=True
            )
            for k, r in enumerate(batch):
                out[rows[r][0], rows[r][1]] = scores[k].cpu()
    return out
