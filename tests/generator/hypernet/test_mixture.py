import pytest
import torch

from generator.hypernet.mixture import guide_weights, guided_mixture, mix, softmax_weights


def rows(value: float, var: float = 0.0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return {"q": torch.full((2, 3), value)}, {"q": torch.full((2, 3), var)}


def test_weights_follow_similarity_and_temperature() -> None:
    s = torch.tensor([0.9, 0.5, 0.1])
    sharp, flat = softmax_weights(s, 0.01), softmax_weights(s, 1000.0)
    assert torch.allclose(sharp.sum(), torch.tensor(1.0)) and sharp[0] > 0.999
    assert torch.allclose(flat, torch.full((3,), 1 / 3), atol=1e-3)
    with pytest.raises(ValueError, match="tau"):
        softmax_weights(s, 0.0)
    with pytest.raises(ValueError, match="non-empty"):
        softmax_weights(torch.tensor([]), 1.0)


def test_mixture_mean_and_total_variance() -> None:
    (m1, v1), (m2, v2) = rows(1.0, 0.5), rows(3.0, 1.5)
    out = mix(torch.tensor([0.25, 0.75]), [m1, m2], [v1, v2])
    assert torch.allclose(out.mean["q"], torch.full((2, 3), 0.25 * 1 + 0.75 * 3))
    within = 0.25 * 0.5 + 0.75 * 1.5
    between = 0.25 * (1 - 2.5) ** 2 + 0.75 * (3 - 2.5) ** 2
    assert torch.allclose(out.var["q"], torch.full((2, 3), within + between))


def test_baselines_are_special_cases() -> None:
    (m1, _), (m2, _) = rows(1.0), rows(5.0)
    nearest = mix(torch.tensor([1.0]), [m1])
    assert torch.equal(nearest.mean["q"], m1["q"]) and not nearest.var["q"].any()
    with pytest.raises(ValueError, match="need 2"):
        mix(torch.tensor([0.5, 0.5]), [m1])
    assert torch.allclose(
        mix(torch.tensor([0.5, 0.5]), [m1, m2]).mean["q"], torch.full((2, 3), 3.0)
    )


def test_the_gate_serves_a_clear_nearest_expert_alone() -> None:
    s = torch.tensor([0.9, 0.7, 0.6])
    assert torch.equal(guide_weights(s, 0.1, gate=0.1), torch.ones(1))  # leads by 0.2
    assert torch.allclose(guide_weights(s, 0.1, gate=0.3), softmax_weights(s, 0.1))
    assert torch.allclose(guide_weights(s, 0.1), softmax_weights(s, 0.1))  # no gate
    assert torch.equal(guide_weights(s[:1], 0.1, gate=0.0), torch.ones(1))
    with pytest.raises(ValueError, match="gate"):
        guide_weights(s, 0.1, gate=-0.5)


def test_guided_mixture_with_and_without_the_gate() -> None:
    (m1, v1), (m2, v2), (m3, v3) = rows(1.0), rows(2.0), rows(3.0)
    means, variances = [m1, m2, m3], [v1, v2, v3]
    sims = torch.tensor([0.9, 0.5, 0.4])
    used, plain = guided_mixture(sims, means, variances, k=2, tau=1000.0)
    assert used == 2 and torch.allclose(plain.mean["q"], torch.full((2, 3), 1.5), atol=1e-3)
    # the gate: the nearest alone (it leads by 0.4)
    used, gated = guided_mixture(sims, means, variances, k=2, tau=1000.0, gate=0.1)
    assert used == 1 and torch.equal(gated.mean["q"], m1["q"])
    used, ungated = guided_mixture(sims, means, variances, k=2, tau=1000.0, gate=0.5)
    assert used == 2 and torch.allclose(ungated.mean["q"], plain.mean["q"])
    # fewer experts than K: the mixture of those there are
    used, two = guided_mixture(sims[:2], means[:2], variances[:2], k=3, tau=1000.0)
    assert used == 2 and torch.allclose(two.mean["q"], plain.mean["q"])
    with pytest.raises(ValueError, match="k must be at least 1"):
        guided_mixture(sims, means, variances, k=0, tau=1.0)
