"""SG-LoRA's serving decode (``generator.serve.decode``) against its definition: the
mixture read as tokens, ``SGLoraNet.sample`` and de-normalisation
(``to_tokens`` / ``var_tokens`` / ``from_tokens``), on a network whose every
weight is random (an untrained writer is zero and would hide the correction)."""

from __future__ import annotations

import pytest
import torch

from generator.hypernet.layout import BlockNormaliser, LoraLayout, Rows
from generator.hypernet.mixture import mix
from generator.hypernet.networks import NetConfig, SGLoraNet
from generator.hypernet.tokens import from_tokens, module_shapes, to_tokens, var_tokens
from generator.serve.decode import SGDecoder
from tests.generator.synthetic import LAYERS, tiny_layout

SHIFT, SCALE = -3.0, 2.5


def random_world(
    seed: int,
) -> tuple[LoraLayout, BlockNormaliser, SGLoraNet, list[Rows], list[Rows]]:
    torch.manual_seed(seed)
    layout = tiny_layout()
    means = [
        {m: 0.3 + 0.05 * torch.randn(LAYERS, layout.block_size(m)) for m in layout.modules}
        for _ in range(4)
    ]
    variances = [{m: 1e-3 * torch.rand_like(v) for m, v in e.items()} for e in means]
    variances[1] = {m: torch.zeros_like(v) for m, v in variances[1].items()}  # no trajectory
    norm = BlockNormaliser.fit(layout, means)
    net = SGLoraNet(module_shapes(layout), NetConfig(hidden=16, latent=4))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn_like(p))
    return layout, norm, net, means, variances


def reference(
    layout: LoraLayout,
    norm: BlockNormaliser,
    net: SGLoraNet,
    weights: list[float],
    means: list[Rows],
    variances: list[Rows],
    eps: torch.Tensor,
) -> Rows:
    mixture = mix(torch.tensor(weights), means, variances)
    mean_t = to_tokens(layout, norm, [mixture.mean])
    logvar_t = var_tokens(layout, norm, [mixture.var], SHIFT, SCALE)
    with torch.no_grad():
        return from_tokens(layout, norm, net.sample(mean_t, logvar_t, eps[None]))[0]


@pytest.mark.parametrize("version", ["2", "3"])
@pytest.mark.parametrize(
    "weights", [[1.0], [0.5, 0.3, 0.2], [0.1, 0.2, 0.3, 0.4]], ids=["gate", "three", "four"]
)
def test_the_serving_decode_computes_the_networks_sample(
    weights: list[float], version: str
) -> None:
    layout, norm, net, means, variances = random_world(0)
    decoder = SGDecoder(net, layout, norm, logvar_shift=SHIFT, logvar_scale=SCALE)
    k = len(weights)
    terms = [decoder.expert_terms(means[i], variances[i]) for i in range(k)]
    eps = torch.randn(4)
    want = reference(layout, norm, net, weights, means[:k], variances[:k], eps)
    got = decoder.rows(decoder.decode(weights, terms, eps, version=version))
    mixture = mix(torch.tensor(weights), means[:k], variances[:k]).mean
    for m in layout.modules:
        correction = (want[m] - mixture[m]).abs().max()
        assert correction > 1e-2  # the network changes the mixture: the test can fail
        assert torch.allclose(got[m], want[m], rtol=0, atol=1e-5 * float(want[m].abs().max()))


def test_an_adapter_does_not_depend_on_what_else_is_decoded() -> None:
    layout, norm, net, means, variances = random_world(1)
    decoder = SGDecoder(net, layout, norm, logvar_shift=SHIFT, logvar_scale=SCALE)
    terms = [decoder.expert_terms(means[i], variances[i]) for i in range(3)]
    eps = torch.randn(4)
    kept = {m: means[0][m].clone() for m in layout.modules}
    first = decoder.decode([0.6, 0.4], terms[:2], eps).clone()
    decoder.decode([0.2, 0.3, 0.5], terms, torch.randn(4))
    assert torch.equal(decoder.decode([0.6, 0.4], terms[:2], eps), first)
    # the experts' own tensors are read, never changed
    assert all(torch.equal(terms[0].mean[m], kept[m]) for m in layout.modules)
    assert all(terms[0].var[m] is variances[0][m] for m in layout.modules)


def test_bad_mixtures_are_refused() -> None:
    layout, norm, net, means, variances = random_world(2)
    decoder = SGDecoder(net, layout, norm, logvar_shift=SHIFT, logvar_scale=SCALE)
    terms = [decoder.expert_terms(means[0], variances[0])]
    with pytest.raises(ValueError, match="2 weights for 1 experts"):
        decoder.decode([0.5, 0.5], terms, torch.randn(4))
    with pytest.raises(ValueError, match="0 weights for 0 experts"):
        decoder.decode([], [], torch.randn(4))
    with pytest.raises(ValueError, match="decoder version '9'"):
        decoder.decode([1.0], terms, torch.randn(4), version="9")


def test_a_network_that_adds_nothing_decodes_to_the_mixture_mean_with_the_same_bits() -> None:
    """Writers of exact zeros (an untrained network, or a correction not kept): the
    decode skips the network, and gives the bytes the whole decode gives."""
    layout, norm, net, means, variances = random_world(3)
    with torch.no_grad():
        for writer in net.codec.writers.values():
            for p in writer.parameters():
                p.zero_()
    module = layout.modules[0]
    for e in means[:3]:  # where every expert is -0.0, the whole decode gives +0.0
        e[module][0, :5] = -0.0
    decoder = SGDecoder(net, layout, norm, logvar_shift=SHIFT, logvar_scale=SCALE)
    assert decoder.mixture_only
    terms = [decoder.expert_terms(means[i], variances[i]) for i in range(3)]
    weights, eps = [0.5, 0.3, 0.2], torch.randn(4)
    fast = decoder.decode(weights, terms, eps)
    decoder.mixture_only = False  # the whole decode, network and all
    whole = decoder.decode(weights, terms, eps)
    assert fast.numpy().tobytes() == whole.numpy().tobytes()
    assert not torch.signbit(decoder.rows(fast)[module][0, :5]).any()
    mixture = mix(torch.tensor(weights), means[:3], variances[:3]).mean
    got = decoder.rows(fast)
    assert all(torch.allclose(got[m], mixture[m], rtol=1e-6, atol=0) for m in layout.modules)


def test_a_network_with_any_nonzero_writer_runs_whole() -> None:
    layout, norm, net, _, _ = random_world(4)
    with torch.no_grad():
        for writer in net.codec.writers.values():
            for p in writer.parameters():
                p.zero_()
        writer = net.codec.writers[layout.modules[0]]
        assert isinstance(writer, torch.nn.Linear)
        writer.bias[3] = 1e-6
    assert not SGDecoder(net, layout, norm, logvar_shift=SHIFT, logvar_scale=SCALE).mixture_only
