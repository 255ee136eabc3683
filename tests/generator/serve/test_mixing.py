"""The compiled mixture pass (``generator.serve.mixing``, decoder version "3") against
the moments' definition, and the property a recipe's rebuild needs: an element's bits
depend on its own numbers only, not on where it sits in a block."""

from __future__ import annotations

import pytest
import torch

from generator.serve.mixing import BLOCK, mixture_mean, mixture_moments

FLOOR = 1e-4


def experts(
    k: int, n: int, seed: int
) -> tuple[list[float], list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(k, generator=g, dtype=torch.float64) + 0.1
    weights = [float(a) for a in raw / raw.sum()]
    means = [0.2 + 0.05 * torch.randn(n, generator=g) for _ in range(k)]
    variances = [1e-3 * torch.rand(n, generator=g) for _ in range(k)]
    return weights, means, variances


def moments(
    weights: list[float],
    means: list[torch.Tensor],
    variances: list[torch.Tensor],
    inv_scale: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    out, ratio = torch.empty(means[0].numel()), torch.empty(means[0].numel())
    mixture_moments(weights, means, variances, inv_scale, FLOOR, out, ratio)
    return out, ratio


@pytest.mark.parametrize("k", [1, 3, 8])
def test_the_pass_computes_the_mixtures_moments(k: int) -> None:
    n = 2 * BLOCK + 37  # two whole blocks and a short one
    weights, means, variances = experts(k, n, seed=k)
    inv_scale = 1.0 / (0.5 + torch.rand(n)) ** 2
    out, ratio = moments(weights, means, variances, inv_scale)
    a = torch.tensor(weights, dtype=torch.float64)[:, None]
    mu = torch.stack(means).double()
    want_mean = (a * mu).sum(0)
    want_var = (a * (torch.stack(variances).double() + (mu - want_mean) ** 2)).sum(0)
    assert torch.allclose(out.double(), want_mean, rtol=1e-6, atol=0)
    want_ratio = want_var * inv_scale.double() + FLOOR
    assert torch.allclose(ratio.double(), want_ratio, rtol=1e-5, atol=0)
    assert (ratio > 0).all()


def test_an_elements_bits_do_not_depend_on_its_block() -> None:
    n = 3 * BLOCK + 5
    weights, means, variances = experts(5, n, seed=11)
    inv_scale = torch.rand(n) + 0.5
    whole = moments(weights, means, variances, inv_scale)
    cut = 700  # not a block boundary: the tail's elements land in other blocks
    tail = moments(weights, [m[cut:] for m in means], [v[cut:] for v in variances], inv_scale[cut:])
    assert torch.equal(whole[0][cut:], tail[0]) and torch.equal(whole[1][cut:], tail[1])


def test_the_inputs_are_read_never_changed_and_bad_shapes_refused() -> None:
    weights, means, variances = experts(3, 100, seed=2)
    kept = [m.clone() for m in means]
    moments(weights, means, variances, torch.ones(100))
    assert all(torch.equal(m, k) for m, k in zip(means, kept, strict=True))
    with pytest.raises(ValueError, match="2 weights for 3 means"):
        moments(weights[:2], means, variances, torch.ones(100))
    with pytest.raises(ValueError, match="100 numbers"):
        moments(weights, means, [v[:50] for v in variances], torch.ones(100))
    out = torch.empty(100, 2)[:, 0]
    with pytest.raises(ValueError, match="contiguous"):
        mixture_moments(weights, means, variances, torch.ones(100), FLOOR, out, torch.empty(100))


def test_prepare_compiles_the_pass_for_each_number_of_experts() -> None:
    from generator.serve.mixing import _moments, prepare

    prepare([6, 2, 6])
    counts = {sig[1].count for sig in _moments.signatures}  # type: ignore[attr-defined]
    assert {2, 6} <= counts


@pytest.mark.parametrize("k", [1, 4])
def test_the_mean_alone_is_the_passs_mean_plus_zero(k: int) -> None:
    n = 2 * BLOCK + 37
    weights, means, variances = experts(k, n, seed=20 + k)
    for m in means:
        m[:9] = -0.0  # every expert -0.0 there: the pass's mean is -0.0, plus 0.0 is +0.0
    out, _ = moments(weights, means, variances, torch.ones(n))
    assert torch.signbit(out[:9]).all()
    alone = torch.empty(n)
    mixture_mean(weights, means, alone)
    assert alone.numpy().tobytes() == (out + 0.0).numpy().tobytes()
    assert not torch.signbit(alone[:9]).any()


def test_the_mean_alone_refuses_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="2 weights for 1 means"):
        mixture_mean([0.5, 0.5], [torch.zeros(3)], torch.empty(3))
    with pytest.raises(ValueError, match="output's 4 numbers"):
        mixture_mean([1.0], [torch.zeros(3)], torch.empty(4))


def test_prepare_compiles_the_mean_alone_when_asked() -> None:
    from generator.serve.mixing import _mean, prepare

    prepare([7], mean_only=True)
    assert 7 in {sig[1].count for sig in _mean.signatures}  # type: ignore[attr-defined]
