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

An anchor (optional, ``blend``): a multi-task adapter trained on all the
training tasks; the served mixture is lam mu* + (1 - lam) a.

The similarity gates (optional): when the nearest expert's similarity leads the
runner-up's by more than ``gate``, or is itself at least ``gate_sim``, the
mixture is that expert alone. A new task with one clear sibling in the
registry (the same question about another plant, topic or language), or with
one as close as siblings are, is then served by the sibling, while a task with
no close expert still gets the broad top-K mixture. Pure torch: no registry,
no FAISS.
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
    similarities: torch.Tensor,
    tau: float,
    gate: float | None = None,
    gate_sim: float | None = None,
) -> torch.Tensor:
    """(K,) similarities, sorted descending -> weights over their first K' <= K
    experts: the nearest alone when a gate fires (``gate_fires``)."""
    if gate_fires(similarities, gate, gate_sim):
        return torch.ones(1)
    return softmax_weights(similarities, tau)


def gate_fires(
    similarities: torch.Tensor, gate: float | None, gate_sim: float | None = None
) -> bool:
    """Whether the nearest of (K,) descending ``similarities`` is to serve alone: it
    leads the runner-up by more than ``gate`` (never without a runner-up), or its own
    similarity is at least ``gate_sim``. Neither given: never."""
    if gate is not None and gate < 0:
        raise ValueError(f"gate must be non-negative, got {gate}")
    if gate_sim is not None and not -1.0 <= gate_sim <= 1.0:
        raise ValueError(f"gate_sim is a cosine similarity in [-1, 1], got {gate_sim}")
    if gate_sim is not None and similarities.numel() and float(similarities[0]) >= gate_sim:
        return True
    if gate is None or similarities.numel() < 2:
        return False
    return float(similarities[0] - similarities[1]) > gate


def experts_needed(k: int, gate: float | None, gate_sim: float | None) -> int:
    """How many nearest experts ``guided_mixture`` needs: ``k``, and the runner-up for
    the lead ``gate`` to compare, or the nearest for the floor ``gate_sim``."""
    return max(k, 2 if gate is not None else 1 if gate_sim is not None else 0)


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


@dataclass(frozen=True)
class Anchor:
    """A multi-task adapter as flattened rows: its late-trajectory mean and variance."""

    mean: Rows
    var: Rows


def blend(mixture: Mixture, anchor: Anchor, lam: float) -> Mixture:
    """lam mu* + (1 - lam) a: the mixture pulled towards the anchor a (a multi-task
    adapter of the training tasks: the skill every task shares, the answer format and
    reading the question). The variance is the two-component mixture's (law of total
    variance); the expert weights are scaled by lam, so they say how much of the adapter
    the experts make. lam = 0 is the anchor alone."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    mean, var = {}, {}
    for m, mu in mixture.mean.items():
        a = anchor.mean[m]
        mean[m] = lam * mu + (1 - lam) * a
        var[m] = (
            lam * mixture.var[m] + (1 - lam) * anchor.var[m] + lam * (1 - lam) * (mu - a).pow(2)
        )
    return Mixture(weights=lam * mixture.weights, mean=mean, var=var)


def guided_mixture(
    sims: torch.Tensor,
    means: Sequence[Rows],
    variances: Sequence[Rows],
    *,
    k: int,
    tau: float,
    gate: float | None = None,
    lam: float | None = None,
    anchor: Anchor | None = None,
    gate_sim: float | None = None,
) -> tuple[int, Mixture]:
    """SG-LoRA's mixture from the nearest experts (``sims`` sorted descending, with
    their means and variances; at least ``k`` of them, 2 for ``gate`` to act and 1 for
    ``gate_sim``) and the number of experts it uses. When a gate fires (the nearest
    leads the runner-up by more than ``gate``, or its similarity is at least
    ``gate_sim``): the nearest alone. Otherwise the softmax mixture of the first
    ``k``, blended with ``anchor`` when ``lam`` < 1; ``k`` = 0 (or ``lam`` = 0) is
    the anchor alone."""
    if lam is not None and lam < 1.0 and anchor is None:
        raise ValueError("blending with the anchor needs one")
    if gate_fires(sims, gate, gate_sim):
        return 1, mix(torch.ones(1), means[:1], variances[:1])
    if k == 0 or lam == 0.0:
        if anchor is None:
            raise ValueError("no experts and no anchor: nothing to mix")
        return 0, Mixture(torch.zeros(0), dict(anchor.mean), dict(anchor.var))
    w = softmax_weights(sims[:k], tau)
    mixture = mix(w, means[:k], variances[:k])
    if lam is not None and lam < 1.0 and anchor is not None:
        mixture = blend(mixture, anchor, lam)
    return k, mixture
