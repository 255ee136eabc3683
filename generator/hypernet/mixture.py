"""Semantic guidance (SG-LoRA): a mixture of the expert adapters nearest to a
description, weighted by how close their descriptions are.

For similarities s_k of the top-K experts (cosine of description embeddings)
and temperature tau:

    alpha = softmax(s / tau)
    mu*      = sum_k alpha_k mu_k
    sigma*^2 = sum_k alpha_k sigma_k^2 + sum_k alpha_k (mu_k - mu*)^2

(the law of total variance of the mixture). ``mu_k`` and ``sigma_k^2`` are an
expert's late-trajectory mean and variance. With all variances zero this is
also the "softmax-weighted mean of the top-K adapters" baseline, and with
K = 1 the "nearest adapter" baseline.

The similarity gate (optional): when the nearest expert's similarity leads the
runner-up's by more than ``gate``, the mixture is that expert alone. A new task
with one clear sibling in the registry (the same question about another plant,
topic or language) is then served by the sibling, while a task with no clear
nearest expert still gets the broad top-K mixture. Pure torch: no registry,
no FAISS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from generator.hypernet.layout import Rows


@dataclass(frozen=True)
class Mixture:
    weights: torch.Tensor  # (K,) softmax weights, summing to 1
    mean: Rows  # mu*
    var: Rows  # sigma*^2


def softmax_weights(similarities: torch.Tensor, tau: float) -> torch.Tensor:
    """(K,) similarities -> (K,) weights; a smaller tau trusts the nearest expert more."""
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    if similarities.ndim != 1 or similarities.numel() == 0:
        raise ValueError("similarities must be a non-empty 1-D tensor")
    return torch.softmax(similarities.double() / tau, dim=0).float()


def guide_weights(
    similarities: torch.Tensor, tau: float, gate: float | None = None
) -> torch.Tensor:
    """(K,) similarities, sorted descending -> weights over their first K' <= K
    experts: the nearest alone when the gate fires (``gate_fires``)."""
    if gate_fires(similarities, gate):
        return torch.ones(1)
    return softmax_weights(similarities, tau)


def gate_fires(similarities: torch.Tensor, gate: float | None) -> bool:
    """Whether the nearest of (K,) descending ``similarities`` is to serve alone: it
    leads the runner-up by more than ``gate`` (never without a runner-up, never
    without a gate)."""
    if gate is not None and gate < 0:
        raise ValueError(f"gate must be non-negative, got {gate}")
    if gate is None or similarities.numel() < 2:
        return False
    return float(similarities[0] - similarities[1]) > gate


def experts_needed(k: int, gate: float | None) -> int:
    """How many nearest experts ``guided_mixture`` needs: ``k``, and the runner-up for
    the gate to compare."""
    return max(k, 2 if gate is not None else 0)


def mix(
    weights: torch.Tensor, means: Sequence[Rows], variances: Sequence[Rows] | None = None
) -> Mixture:
    """Mixture prototype and variance of K experts under ``weights`` (K,)."""
    K = weights.shape[0]
    if len(means) != K or (variances is not None and len(variances) != K):
        raise ValueError(f"need {K} experts' means (and variances), got {len(means)}")
    modules = list(means[0])
    if not weights.requires_grad:
        return _mix_in_place(weights, means, variances)
    w = weights.view(K, 1, 1)
    mean, var = {}, {}
    for m in modules:
        mus = torch.stack([e[m] for e in means])  # (K, L, d)
        mu = (w * mus).sum(0)  # (L, d)
        spread = (w * (mus - mu).pow(2)).sum(0)  # between-expert variance
        within = (
            (w * torch.stack([v[m] for v in variances])).sum(0)
            if variances is not None
            else torch.zeros_like(mu)
        )
        mean[m], var[m] = mu, within + spread
    return Mixture(weights=weights, mean=mean, var=var)


def _mix_in_place(
    weights: torch.Tensor, means: Sequence[Rows], variances: Sequence[Rows] | None
) -> Mixture:
    """``mix`` without the (K, L, d) stacks (serving: no gradient), accumulating in place."""
    ws = [float(a) for a in weights]
    mean, var = {}, {}
    for m in means[0]:
        mu = means[0][m] * ws[0]
        for w, e in zip(ws[1:], means[1:], strict=True):
            mu.add_(e[m], alpha=w)
        total = torch.zeros_like(mu)
        for k, w in enumerate(ws):
            if variances is not None:
                total.add_(variances[k][m], alpha=w)
            diff = means[k][m] - mu
            total.addcmul_(diff, diff, value=w)
        mean[m], var[m] = mu, total
    return Mixture(weights=weights, mean=mean, var=var)


def guided_mixture(
    sims: torch.Tensor,
    means: Sequence[Rows],
    variances: Sequence[Rows],
    *,
    k: int,
    tau: float,
    gate: float | None = None,
) -> tuple[int, Mixture]:
    """SG-LoRA's mixture from the nearest experts (``sims`` sorted descending, with
    their means and variances; at least ``k`` of them, 2 for ``gate`` to act) and the
    number of experts it uses: the nearest alone when it leads the runner-up by more
    than ``gate``, otherwise the softmax mixture of the first ``k``."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if gate_fires(sims, gate):
        return 1, mix(torch.ones(1), means[:1], variances[:1])
    w = softmax_weights(sims[:k], tau)
    return len(w), mix(w, means[: len(w)], variances[: len(w)])
