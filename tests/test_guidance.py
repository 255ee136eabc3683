import pytest
import torch

from generator.guidance import Anchor, blend, guide_weights, guided_mixture, mix, softmax_weights


def rows(value: float, var: float = 0.0) -> tuple[dict, dict]:
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


def test_the_similarity_floor_serves_a_close_nearest_expert_alone() -> None:
    s = torch.tensor([0.8, 0.78, 0.6])  # close to its nearest, which leads by little
    assert torch.equal(guide_weights(s, 0.1, gate_sim=0.8), torch.ones(1))  # 0.8 >= 0.8
    assert torch.allclose(guide_weights(s, 0.1, gate_sim=0.81), softmax_weights(s, 0.1))
    assert torch.equal(guide_weights(s[:1], 0.1, gate_sim=0.5), torch.ones(1))  # no runner-up
    # either gate firing is enough
    assert torch.equal(guide_weights(s, 0.1, gate=0.5, gate_sim=0.7), torch.ones(1))
    assert torch.equal(guide_weights(s, 0.1, gate=0.01, gate_sim=0.9), torch.ones(1))
    assert torch.allclose(guide_weights(s, 0.1, gate=0.5, gate_sim=0.9), softmax_weights(s, 0.1))
    for wrong in (1.5, -2.0):
        with pytest.raises(ValueError, match="gate_sim"):
            guide_weights(s, 0.1, gate_sim=wrong)


def test_a_mirrored_mixture_reflects_through_the_experts_mean() -> None:
    from generator.guidance import mirror

    (m1, v1), (m2, v2) = rows(1.0, 0.5), rows(3.0, 1.5)
    out = mix(torch.tensor([0.25, 0.75]), [m1, m2], [v1, v2])
    centre = {"q": torch.full((2, 3), 2.0)}
    flipped = mirror(out, centre)
    assert torch.allclose(flipped.mean["q"], torch.full((2, 3), 2 * 2.0 - 2.5))
    assert torch.equal(flipped.var["q"], out.var["q"])
    assert torch.equal(flipped.weights, -out.weights)
    assert torch.allclose(mirror(flipped, centre).mean["q"], out.mean["q"])  # an involution


def test_a_blend_pulls_the_mixture_towards_the_anchor() -> None:
    (m1, v1), (m2, v2) = rows(1.0, 0.5), rows(3.0, 1.5)
    anchor = Anchor(*rows(-1.0, 0.25))
    mixture = mix(torch.tensor([0.5, 0.5]), [m1, m2], [v1, v2])  # mean 2, var 1 + 1
    half = blend(mixture, anchor, 0.5)
    assert torch.allclose(half.mean["q"], torch.full((2, 3), 0.5))
    # law of total variance over the two components: within + between
    expected = 0.5 * 2.0 + 0.5 * 0.25 + 0.25 * (2.0 - -1.0) ** 2
    assert torch.allclose(half.var["q"], torch.full((2, 3), expected))
    assert torch.allclose(half.weights, torch.tensor([0.25, 0.25]))  # the experts' share
    same = blend(mixture, anchor, 1.0)
    assert torch.equal(same.mean["q"], mixture.mean["q"])
    assert torch.allclose(same.var["q"], mixture.var["q"])
    alone = blend(mixture, anchor, 0.0)
    assert torch.equal(alone.mean["q"], anchor.mean["q"]) and not alone.weights.any()
    with pytest.raises(ValueError, match="lam"):
        blend(mixture, anchor, 1.5)


def test_guided_mixture_gate_blend_and_anchor_alone() -> None:
    (m1, v1), (m2, v2), (m3, v3) = rows(1.0), rows(2.0), rows(3.0)
    means, variances = [m1, m2, m3], [v1, v2, v3]
    anchor = Anchor(*rows(10.0))
    sims = torch.tensor([0.9, 0.5, 0.4])
    kw = {"k": 2, "tau": 1000.0}
    used, plain = guided_mixture(sims, means, variances, **kw)  # type: ignore[arg-type]
    assert used == 2 and torch.allclose(plain.mean["q"], torch.full((2, 3), 1.5), atol=1e-3)
    # the gate: the nearest alone, never blended
    used, gated = guided_mixture(sims, means, variances, gate=0.1, lam=0.5, anchor=anchor, **kw)  # type: ignore[arg-type]
    assert used == 1 and torch.equal(gated.mean["q"], m1["q"])
    used, half = guided_mixture(sims, means, variances, gate=0.5, lam=0.5, anchor=anchor, **kw)  # type: ignore[arg-type]
    used_floor, floored = guided_mixture(
        sims, means, variances, gate_sim=float(sims[0]), lam=0.5, anchor=anchor, **kw
    )  # type: ignore[arg-type]
    assert used_floor == 1 and torch.equal(floored.mean["q"], m1["q"])  # the floor: alone too
    assert used == 2 and torch.allclose(half.mean["q"], torch.full((2, 3), 5.75), atol=1e-3)
    used, alone = guided_mixture(sims[:0], [], [], k=0, tau=0.0, anchor=anchor)
    assert used == 0 and torch.equal(alone.mean["q"], anchor.mean["q"])
    with pytest.raises(ValueError, match="anchor"):
        guided_mixture(sims, means, variances, lam=0.5, **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nothing to mix"):
        guided_mixture(sims[:0], [], [], k=0, tau=0.0)
