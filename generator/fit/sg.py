"""SG-LoRA training from an ``ExpertBank`` (pure torch over loaded experts).

For every expert t, the condition is the mixture of its top-K *other* experts
(leave-one-out, exactly what a new task sees at inference); the targets are
t's late-trajectory snapshots. K and tau, when not given, are chosen on the
training experts alone: by the leave-one-out error of the mixture mean in
update space (dW = B A, ``choose_k_tau``), or by its accuracy on the experts'
own tasks (``generator.fit.selection``). A fraction of the experts is held
out for validation; the learned correction is kept only where it beats the
plain mixture there.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from generator.experts import ExpertBank
from generator.fit.config import GeneratorConfig
from generator.fit.loop import (
    FitResult,
    StepCallback,
    Trained,
    cvae_loss,
    finite,
    fit_result,
    split_experts,
    train_loop,
    validation_error,
)
from generator.hypernet.geometry import delta_relative_error
from generator.hypernet.layout import BlockNormaliser, LoraLayout, Rows
from generator.hypernet.methods import SG_LORA
from generator.hypernet.mixture import Mixture, experts_needed, guided_mixture
from generator.hypernet.networks import NetConfig, SGLoraNet
from generator.hypernet.tokens import (
    VAR_FLOOR,
    Tokens,
    from_tokens,
    module_shapes,
    take,
    to_tokens,
    var_tokens,
)
from registry.errors import InvalidInput

# (expert index, adapter) -> accuracy on that expert's task; None: no task to score
TaskCheck = Callable[[int, Rows], float | None]
K_GRID = (1, 2, 3, 4, 6, 8)

TAU_GRID = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def choose_k_tau(
    bank: ExpertBank, ks: Sequence[int] = K_GRID, taus: Sequence[float] = TAU_GRID
) -> tuple[int, float, dict[str, float]]:
    """Leave-one-out over the bank: the (K, tau) whose mixture mean best predicts
    each expert's own mean in update space."""
    if len(bank) < 2:
        raise InvalidInput("SG-LoRA needs at least 2 experts")
    errors: dict[str, float] = {}
    best: tuple[float, int, float] | None = None
    for k in ks:
        if k > len(bank) - 1:
            continue
        for tau in taus if k > 1 else taus[:1]:
            err = 0.0
            for t in range(len(bank)):
                idx, sims = bank.nearest(bank.embeddings[t], k, exclude=t)
                mixture = bank.mixture(idx, sims, tau)
                err += delta_relative_error(bank.layout, mixture.mean, bank.experts[t].mean)
            err /= len(bank)
            errors[f"k={k},tau={tau}"] = round(err, 5)
            if best is None or err < best[0]:
                best = (err, k, tau)
    assert best is not None
    return best[1], best[2], errors


@dataclass(frozen=True)
class KTauChoice:
    """K and tau chosen before training, how, and the score of every candidate."""

    k: int
    tau: float
    by: str  # "task" (mean accuracy) or "weights" (mean error in update space)
    grid: dict[str, float]
    gate: float | None = None
    gate_grid: dict[str, float] = field(default_factory=dict)
    # per training expert (by its task's name): every ungated candidate's leave-one-out accuracy
    scores: dict[str, dict[str, float]] = field(default_factory=dict)


def fit_sg(
    bank: ExpertBank,
    config: GeneratorConfig,
    *,
    on_step: StepCallback | None = None,
    choice: KTauChoice | None = None,
    task_check: TaskCheck | None = None,
) -> FitResult:
    """Train SG-LoRA; K and tau: the config's, else ``choice``, else by weight-space error.
    With ``task_check``, the learned correction is kept only when it raises the
    validation experts' mean task accuracy above their mixture means'."""
    torch.manual_seed(config.seed)
    t0 = time.perf_counter()
    layout = bank.layout
    if config.k is not None and config.tau is not None:
        choice = KTauChoice(config.k, config.tau, "given", {}, config.gate)
    elif choice is None:
        k_w, tau_w, grid_w = choose_k_tau(bank)
        choice = KTauChoice(k_w, tau_w, "weights", grid_w, config.gate)
    k = min(config.k or choice.k, len(bank) - 1)
    tau = config.tau or choice.tau
    gate = config.gate if config.gate is not None else choice.gate  # a given gate wins
    grid = choice.grid

    norm = BlockNormaliser.fit(layout, [s for e in bank.experts for s in e.snapshots])
    # leave-one-out conditions, one per expert: what a new task would get
    mixtures = [loo_mixture(bank, t, k, tau, gate) for t in range(len(bank))]
    logv = []
    for mx in mixtures:
        for m in layout.modules:
            v = mx.var[m] / norm.scale(layout, m).pow(2)
            logv.append((v + VAR_FLOOR).log().flatten())
    all_logv = torch.cat(logv)
    shift, scale = float(all_logv.mean()), float(all_logv.std().clamp(min=1e-3))
    del logv, all_logv
    cond_mean = to_tokens(layout, norm, [mx.mean for mx in mixtures])  # {m: (E, L, r, w)}
    cond_logvar = var_tokens(layout, norm, [mx.var for mx in mixtures], shift, scale)

    train_idx, val_idx = split_experts(len(bank), config.val_fraction, config.seed)
    samples = [(t, s) for t in train_idx for s in bank.experts[t].snapshots]
    targets = to_tokens(layout, norm, [s for _, s in samples])  # {m: (S, L, r, w)}
    owner = torch.tensor([t for t, _ in samples])  # (S,) expert index of each sample

    net = SGLoraNet(module_shapes(layout), NetConfig(config.hidden, config.latent))

    def val_error() -> float:
        return validation_error(
            net,
            bank,
            norm,
            val_idx,
            lambda: net.sample(take(cond_mean, val_idx), take(cond_logvar, val_idx)),
        )

    def step_loss(batch: torch.Tensor) -> torch.Tensor:
        tasks = owner[batch]
        recon, kl = net(take(targets, batch), take(cond_mean, tasks), take(cond_logvar, tasks))
        return cvae_loss(recon, take(targets, batch), kl, config.beta)

    mixture_val = (
        sum(delta_relative_error(layout, mixtures[t].mean, bank.experts[t].mean) for t in val_idx)
        / len(val_idx)
        if val_idx
        else float("nan")
    )
    untrained = copy.deepcopy(net.state_dict())  # zero correction: the mixture means
    best_val, history = train_loop(net, len(samples), step_loss, val_error, config, on_step)
    correction: dict[str, Any] = {}
    if task_check is not None and val_idx:
        val_means = [mixtures[t].mean for t in val_idx]
        correction = _check_correction(
            net, layout, norm, val_idx, task_check, cond_mean, cond_logvar, val_means
        )
        if not correction.get("correction_kept", True):
            net.load_state_dict(untrained)
    metrics = {
        "k": k,
        "tau": tau,
        "k_tau_grid": grid,
        "k_tau_by": choice.by,
        "gate": gate,
        "gate_grid": choice.gate_grid,
        "k_tau_scores": choice.scores,
        **correction,
        "val_rel_error_mixture": finite(mixture_val),
    }
    hyper = {
        **asdict(config),
        "k": k,
        "tau": tau,
        "k_tau_by": choice.by,
        "k_tau_grid": grid,
        "gate": gate,
        "gate_grid": choice.gate_grid,
        "logvar_shift": shift,
        "logvar_scale": scale,
    }
    run = Trained(SG_LORA, bank, net, norm, train_idx, val_idx, len(samples), best_val, history, t0)
    return fit_result(run, hyper, metrics, embeddings=bank.embeddings)


def loo_mixture(bank: ExpertBank, t: int, k: int, tau: float, gate: float | None) -> Mixture:
    """Expert ``t``'s leave-one-out condition: the (K, tau, gate) mixture of the other
    experts, exactly what a new task with ``t``'s description would get."""
    fetch = min(experts_needed(k, gate), len(bank) - 1)
    idx, sims = bank.nearest(bank.embeddings[t], fetch, exclude=t)
    experts = [bank.experts[i] for i in idx]
    return guided_mixture(
        sims, [e.mean for e in experts], [e.var for e in experts], k=k, tau=tau, gate=gate
    )[1]


def _check_correction(
    net: SGLoraNet,
    layout: LoraLayout,
    norm: BlockNormaliser,
    val_idx: list[int],
    task_check: TaskCheck,
    cond_mean: Tokens,
    cond_logvar: Tokens,
    mixture_means: list[Rows],
) -> dict[str, Any]:
    """Validation experts' mean task accuracy with and without the learned correction
    (experts whose task ``task_check`` cannot score, None, are skipped)."""
    with torch.no_grad():
        decoded = from_tokens(
            layout,
            norm,
            net.sample(take(cond_mean, val_idx), take(cond_logvar, val_idx)),
        )
    plain, corrected = [], []
    for t, m, r in zip(val_idx, mixture_means, decoded, strict=True):
        a = task_check(t, m)
        if a is not None:
            plain.append(a)
            corrected.append(task_check(t, r) or 0.0)
    if not plain:
        return {}
    with_mixture, with_correction = sum(plain) / len(plain), sum(corrected) / len(plain)
    return {
        "val_task_acc_mixture": round(with_mixture, 4),
        "val_task_acc_generated": round(with_correction, 4),
        # a correction must earn its place: ties keep the plain mixture
        "correction_kept": with_correction > with_mixture,
    }
