"""SG-LoRA's mixture moments in one pass over the experts' rows (decoder version "3").

A decode mixes K experts (K = 8 by default) over an adapter's 460,800 numbers:
``mu* = sum_k a_k mu_k`` and ``var* = sum_k a_k (var_k + (mu_k - mu*)^2)``, then the
log-variance reader's input ``var* / S^2 + floor``. As tensor operations that is
about 35 passes over arrays of the adapter's size, each leaving the cache. Here one
compiled loop walks the rows a block at a time, so each expert's numbers are read
once from memory and every intermediate stays in the CPU's cache.

The arithmetic is fixed by the loop: float32 throughout, each product and sum
rounded on its own (no fused multiply-adds, no reordering), one thread. An element's
bits therefore do not depend on the thread count, the block size or the CPU's vector
width, which a recipe's rebuild needs. The loop compiles once for each number of
experts and is cached on disk beside this module (numba's cache), so a new process
does not compile it again; ``prepare`` compiles or loads it ahead of the first request.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numba
import numpy as np
import torch

BLOCK = 1024  # numbers per block: a block of K experts' means and variances fits in L2


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _block_mean(weights, means, start, stop, mu):  # type: ignore[no-untyped-def]
    # mu* over one block: the first expert's product, then each other one's added
    a = weights[0]
    row = means[0][start:stop]
    for j in range(stop - start):
        mu[j] = a * row[j]
    for k in range(1, weights.shape[0]):
        a = weights[k]
        row = means[k][start:stop]
        for j in range(stop - start):
            mu[j] = mu[j] + a * row[j]


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _moments(weights, means, variances, inv_scale, floor, out_mean, out_ratio):  # type: ignore[no-untyped-def]
    n = out_mean.shape[0]
    for start in range(0, n, BLOCK):
        stop = min(n, start + BLOCK)
        mu = out_mean[start:stop]
        total = out_ratio[start:stop]
        _block_mean(weights, means, start, stop, mu)
        for j in range(stop - start):
            total[j] = np.float32(0.0)
        for k in range(weights.shape[0]):
            a = weights[k]
            row = means[k][start:stop]
            var = variances[k][start:stop]
            for j in range(stop - start):
                diff = row[j] - mu[j]
                total[j] = total[j] + a * (var[j] + diff * diff)
        scale = inv_scale[start:stop]
        for j in range(stop - start):
            total[j] = total[j] * scale[j] + floor


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _mean(weights, means, out_mean):  # type: ignore[no-untyped-def]
    # ``_moments``'s mean, then + 0.0 as the decode's (exactly zero) correction adds
    # it: -0.0 becomes +0.0, every other number is kept
    n = out_mean.shape[0]
    for start in range(0, n, BLOCK):
        stop = min(n, start + BLOCK)
        mu = out_mean[start:stop]
        _block_mean(weights, means, start, stop, mu)
        for j in range(stop - start):
            mu[j] = mu[j] + np.float32(0.0)


def _flat(t: torch.Tensor) -> np.ndarray:
    """A float32 tensor's numbers as a flat C-contiguous array (a view where it can)."""
    return np.ascontiguousarray(t.detach().reshape(-1).numpy(), dtype=np.float32)


def mixture_moments(
    weights: Sequence[float],
    means: Sequence[torch.Tensor],
    variances: Sequence[torch.Tensor],
    inv_scale: torch.Tensor,
    floor: float,
    out_mean: torch.Tensor,
    out_ratio: torch.Tensor,
) -> None:
    """Write ``mu*`` into ``out_mean`` and ``var* * inv_scale + floor`` into ``out_ratio``
    (both contiguous float32, as many numbers as each expert's ``means`` and
    ``variances``); ``weights`` are the mixture's, one per expert."""
    if not (len(weights) == len(means) == len(variances)) or not weights:
        raise ValueError(
            f"{len(weights)} weights for {len(means)} means and {len(variances)} variances"
        )
    if not (out_mean.is_contiguous() and out_ratio.is_contiguous()):
        raise ValueError("the outputs must be contiguous")
    n = out_mean.numel()
    flat_means = tuple(_flat(t) for t in means)
    flat_vars = tuple(_flat(t) for t in variances)
    scale = _flat(inv_scale)
    if any(a.shape[0] != n for a in (*flat_means, *flat_vars, scale)) or out_ratio.numel() != n:
        raise ValueError(f"every input must hold the outputs' {n} numbers")
    _moments(
        np.asarray(weights, dtype=np.float32),
        flat_means,
        flat_vars,
        scale,
        np.float32(floor),
        out_mean.view(-1).numpy(),
        out_ratio.view(-1).numpy(),
    )


def mixture_mean(
    weights: Sequence[float], means: Sequence[torch.Tensor], out_mean: torch.Tensor
) -> None:
    """``mixture_moments``'s ``mu*`` alone, bit for bit, plus 0.0 (which turns a -0.0
    into +0.0, as adding a correction of exact zeros does), reading only the means:
    the decode of a generator whose network adds nothing (``SGDecoder.mixture_only``)."""
    if len(weights) != len(means) or not weights:
        raise ValueError(f"{len(weights)} weights for {len(means)} means")
    if not out_mean.is_contiguous():
        raise ValueError("the output must be contiguous")
    n = out_mean.numel()
    flat_means = tuple(_flat(t) for t in means)
    if any(a.shape[0] != n for a in flat_means):
        raise ValueError(f"every input must hold the output's {n} numbers")
    _mean(np.asarray(weights, dtype=np.float32), flat_means, out_mean.view(-1).numpy())


def prepare(counts: Iterable[int], *, mean_only: bool = False) -> None:
    """Compile (or load from numba's cache) the pass for each number of experts in
    ``counts`` (the mean alone with ``mean_only``), so that a generator's first
    request does not wait for it."""
    for k in sorted(set(counts)):
        one = [torch.zeros(1) for _ in range(k)]
        if mean_only:
            mixture_mean([1.0 / k] * k, one, torch.empty(1))
        else:
            mixture_moments(
                [1.0 / k] * k, one, one, torch.ones(1), 0.0, torch.empty(1), torch.empty(1)
            )
