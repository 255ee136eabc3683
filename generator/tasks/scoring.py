"""Rank classification: the log-likelihood of each label after each prompt.

The prefix all prompts share (chat template + task description) runs once;
each prompt's own tokens run once on top of it (left-padded, the key/value
cache kept); the label tokens then run for every (prompt, label) pair on top
of that cache, with logits taken only at label positions. ``length_batches``
cuts batches of mixed lengths where padding would cost more than a new pass
(``generator.tasks.multi_lora``, whose rows come in runs of equal lengths).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from generator.tasks.device import model_device
from generator.tasks.kv_cache import passing, returned
from generator.tasks.prompting import shared_prefix

PER_BATCH = 16  # a forward pass's fixed cost, in prompt tokens (see length_batches)


@torch.no_grad()
def label_logprobs(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int = 16,
) -> torch.Tensor:
    """(N, L) total log-probability of each of the L label token sequences after each prompt."""
    device = model_device(model)
    lab, lab_mask = (t.to(device) for t in label_tensor(labels, pad_id))
    out = torch.empty((len(prompts), lab.shape[0]))  # on the CPU, whatever the model's device
    n_prefix = shared_prefix(prompts)
    prefix = list(prompts[0][:n_prefix]) if prompts else []
    cache = prefix_cache(model, prefix, device)
    # longest first: similar lengths share a batch, so little padding
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        own = [prompts[i][n_prefix:] for i in idx]
        out[idx] = score_batch(model, prefix, own, lab, lab_mask, pad_id, cache=cache).cpu()
    return out


def length_batches(
    lengths: Sequence[int], most: int, per_batch: int = PER_BATCH
) -> list[list[int]]:
    """Indices of ``lengths`` in batches of at most ``most``, longest first, cut so as to
    run the fewest padded tokens, counting ``per_batch`` for each batch's fixed cost.

    Every prompt of a batch is padded to its longest, so a batch of one long and many
    short prompts runs mostly padding; a new batch pays a pass's fixed cost (reading
    every weight, Python per layer). Dynamic programming over the sorted lengths."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    best = [0.0] + [float("inf")] * len(order)  # best[j]: cost of order[:j]
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        for i in range(max(0, j - max(1, most)), j):  # order[i:j] is the last batch
            cost = best[i] + (j - i) * lengths[order[i]] + per_batch
            if cost < best[j]:
                best[j], cut[j] = cost, i
    batches, j = [], len(order)
    while j > 0:
        batches.append(order[cut[j] : j])
        j = cut[j]
    return batches[::-1]


def prefix_cache(model: Callable[..., Any], prefix: list[int], device: torch.device) -> Any:
    """The key/value cache of ``prefix`` (batch of one), or None for no prefix."""
    if not prefix:
        return None
    ids = torch.tensor([prefix], device=device)
    return returned(model(input_ids=ids, use_cache=True, logits_to_keep=1))


def label_tensor(labels: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Label token ids (L, M), right padded, and their mask (L, M)."""
    if not labels or any(len(lab) == 0 for lab in labels):
        raise ValueError("every label needs at least one token")
    m = max(len(lab) for lab in labels)
    lab = torch.full((len(labels), m), pad_id, dtype=torch.long)
    lab_mask = torch.zeros((len(labels), m), dtype=torch.long)
    for j, tokens in enumerate(labels):
        lab[j, : len(tokens)] = torch.tensor(tokens)
        lab_mask[j, : len(tokens)] = 1
    return lab, lab_mask


def score_batch(
    model: Callable[..., Any],
    prefix: list[int],
    prompts: list[Sequence[int]],
    lab: torch.Tensor,
    lab_mask: torch.Tensor,
    pad_id: int,
    *,
    cache: Any = None,
    cache_rows: bool = False,
) -> torch.Tensor:
    """(B, L) log-probability of each label after ``prefix + prompts[b]``.

    Differentiable (``label_logprobs`` wraps it in ``no_grad``): distillation
    trains through it. ``prompts`` hold each prompt's own tokens after ``prefix``. The
    model runs on ``lab``'s device (the result stays there). ``cache``: the prefix's
    ``prefix_cache``, computed once for many batches (copied, never changed); with
    ``cache_rows`` it holds one row per prompt already and is used up.
    """
    B, L, M = len(prompts), lab.shape[0], lab.shape[1]
    P = max(len(p) for p in prompts)
    device = lab.device
    ids = torch.full((B, P), pad_id, dtype=torch.long)
    mask = torch.zeros((B, P), dtype=torch.long)
    for b, p in enumerate(prompts):  # left padding: every prompt ends at column P-1
        ids[b, P - len(p) :] = torch.tensor(p)
        mask[b, P - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0) + len(prefix)  # (B, P)
    if prefix:
        if not cache_rows:  # a shared cache is copied; a new one may carry gradients
            cache = prefix_cache(model, prefix, device) if cache is None else copy.deepcopy(cache)
            cache.batch_repeat_interleave(B)
        ones = torch.ones((B, len(prefix)), dtype=torch.long, device=device)
        mask = torch.cat([ones, mask], dim=1)
    res = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=pos,
        use_cache=M > 1,
        **passing(cache),
        logits_to_keep=1,
    )
    first = F.log_softmax(res.logits[:, -1].float(), dim=-1)  # (B, V)
    total = first[:, lab[:, 0]]  # (B, L)
    if M == 1:
        return total
    cache = returned(res)
    cache.batch_repeat_interleave(L)  # (B*L, ...) one copy of each prompt per label
    cont = lab[:, :-1].repeat(B, 1)  # (B*L, M-1) label tokens fed after the prompt
    tail = torch.ones((B * L, M - 1), dtype=torch.long, device=device)
    cont_mask = torch.cat([mask.repeat_interleave(L, dim=0), tail], dim=1)  # (B*L, P+M-1)
    start = mask.sum(-1).repeat_interleave(L)[:, None]  # (B*L, 1) next position per prompt
    cont_pos = start + torch.arange(M - 1, device=device)[None, :]  # (B*L, M-1)
    res2 = model(input_ids=cont, attention_mask=cont_mask, position_ids=cont_pos, **passing(cache))
    logp = F.log_softmax(res2.logits.float(), dim=-1)  # (B*L, M-1, V)
    target = lab[:, 1:].repeat(B, 1)  # (B*L, M-1)
    picked = logp.gather(-1, target[..., None])[..., 0] * lab_mask[:, 1:].repeat(B, 1)
    return total + picked.sum(-1).view(B, L)
