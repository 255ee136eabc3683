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
with one clear sibling in the registry (the same question about another
plant, topic or language) is then served by the sibling, while a task with no
close expert still gets the broad top-K mixture. Pure torch: no registry, no
FAISS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

Rows = dict[str, torch.Tensor]  # module -> (L, d), a flattened adapter


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
    experts: the nearest alone when it leads the runner-up by more than ``gate``."""
    if gate is not None and similarities.numel() > 1:
        if gate < 0:
            raise ValueError(f"gate must be non-negative, got {gate}")
        if float(similarities[0] - similarities[1]) > gate:
            return torch.ones(1)
    return softmax_weights(similarities, tau)


def mix(
    weights: torch.Tensor, means: Sequence[Rows], variances: Sequence[Rows] | None = None
) -> Mixture:
    """Mixture prototype and variance of K experts under ``weights`` (K,)."""
    K = weights.shape[0]
    if len(means) != K or (variances is not None and len(variances) != K):
        raise ValueError(f"need {K} experts' means (and variances), got {len(means)}")
    modules = list(means[0])
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


def mirror(mixture: Mixture, centre: Rows) -> Mixture:
    """2 g - mu*: the mixture reflected through ``centre`` g (the mean of all experts),
    keeping what the experts share and negating what sets the mixed ones apart; the
    weights are negated to say so, the variance is the mixture's."""
    mean = {m: 2 * centre[m] - mu for m, mu in mixture.mean.items()}
    return Mixture(weights=-mixture.weights, mean=mean, var=mixture.var)
