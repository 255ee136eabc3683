"""Training the generators from an ``ExpertBank`` (pure torch over loaded experts).

SG-LoRA: for every expert t, the condition is the mixture of its top-K
*other* experts (leave-one-out, exactly what a new task sees at inference);
the targets are t's late-trajectory snapshots. K and tau, when not given, are
chosen on the training experts alone by the leave-one-out error of the
mixture mean in update space (dW = B A).

ICM-LoRA: the condition is the description embedding, plus the base model's
in-context task vector; the task vector is dropped (zeroed, flag 0) for half
the samples so one network serves callers with and without examples.

Both hold out a fraction of the training experts as validation and keep the
network state with the lowest validation error of the decoded adapter.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from generator.checkpoint import ICM_LORA, SG_LORA, Checkpoint
from generator.experts import ExpertBank
from generator.geometry import delta_relative_error
from generator.guidance import Mixture, experts_needed, guided_mixture
from generator.hypernet import (
    ICMLoraNet,
    NetConfig,
    SGLoraNet,
    Tokens,
    module_shapes,
    parameter_count,
    rows_to_tokens,
    tokens_to_rows,
)
from generator.layout import BlockNormaliser, LoraLayout
from registry.errors import InvalidInput

Rows = dict[str, torch.Tensor]
StepCallback = Callable[[int, int, float], None]

K_GRID = (1, 2, 3, 4, 6, 8)
TAU_GRID = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
SELECT_BY = ("task", "weights")
VAR_FLOOR = 1e-4  # in normalised units: below it a coordinate counts as certain


@dataclass(frozen=True)
class GeneratorConfig:
    method: str = SG_LORA
    hidden: int = 128
    latent: int = 32
    steps: int = 800
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    kl_weight: float | None = None  # default: 0.01 (SG-LoRA), 0.005 (ICM-LoRA, the paper's)
    k: int | None = None  # SG-LoRA experts per mixture (None: chosen leave-one-out)
    tau: float | None = None  # SG-LoRA softmax temperature (None: chosen leave-one-out)
    # how K and tau are chosen when not given: "weights" (error of the leave-one-out
    # mixture in update space; seconds) or "task" (its accuracy on each expert's task
    # through the base model, generator/selection.py; ~15-25 s an expert on 2 cores,
    # and falls back to "weights" without the experts' tasks)
    select: str = "weights"
    select_examples: int = 16  # each training task's examples a "task" choice scores
    # SG-LoRA's similarity gate (guidance.guide_weights): the nearest expert alone when
    # it leads the runner-up by more than this; None = always the top-K mixture. The
    # "task" choice picks it with K and tau.
    gate: float | None = None
    val_fraction: float = 0.15
    eval_every: int = 100
    task_vector_dropout: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in (SG_LORA, ICM_LORA):
            raise InvalidInput(f"unknown method {self.method!r}")
        for name in ("hidden", "latent", "steps", "batch_size", "eval_every", "select_examples"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.val_fraction < 1:
            raise InvalidInput(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.k is not None and self.k < 1:
            raise InvalidInput(f"k must be at least 1, got {self.k}")
        if self.select not in SELECT_BY:
            raise InvalidInput(f"select must be one of {', '.join(SELECT_BY)}, got {self.select!r}")
        if self.gate is not None and not self.gate >= 0:
            raise InvalidInput(f"gate must be non-negative, got {self.gate}")
        if self.tau is not None and self.tau <= 0:
            raise InvalidInput(f"tau must be positive, got {self.tau}")
        if not self.lr > 0:
            raise InvalidInput(f"lr must be positive, got {self.lr}")

    @classmethod
    def from_params(cls, p: Mapping[str, Any]) -> GeneratorConfig:
        """The config of a training request (a job's or the API's parameters)."""
        return cls(
            method=p.get("method", SG_LORA),
            steps=int(p.get("steps", 800)),
            k=p.get("k"),
            tau=p.get("tau"),
            select=p.get("select", "weights"),
            select_examples=int(p.get("select_examples", 16)),
            gate=p.get("gate"),
            seed=int(p.get("seed", 0)),
        )

    @property
    def beta(self) -> float:
        if self.kl_weight is not None:
            return self.kl_weight
        return 0.01 if self.method == SG_LORA else 0.005


@dataclass
class FitResult:
    checkpoint: Checkpoint
    metrics: dict[str, Any]


# ---- conversions between rows and normalised tokens ----------------------------


def to_tokens(layout: LoraLayout, norm: BlockNormaliser, rows: Sequence[Rows]) -> Tokens:
    """N flattened adapters -> normalised tokens {module: (N, L, r, w)}."""
    shapes = {s.module: s for s in module_shapes(layout)}
    out = {}
    for m in layout.modules:
        x = torch.stack([r[m] for r in rows])  # (N, L, d)
        x = (x - norm.mean[m]) / norm.scale(layout, m)
        out[m] = rows_to_tokens(x, shapes[m])
    return out


def var_tokens(
    layout: LoraLayout, norm: BlockNormaliser, var: Sequence[Rows], shift: float, scale: float
) -> Tokens:
    """Variances -> standardised log-variances in normalised units, as tokens."""
    shapes = {s.module: s for s in module_shapes(layout)}
    out = {}
    for m in layout.modules:
        v = torch.stack([r[m] for r in var])  # (N, L, d)
        v = v / norm.scale(layout, m).pow(2)
        out[m] = rows_to_tokens(((v + VAR_FLOOR).log() - shift) / scale, shapes[m])
    return out


def from_tokens(layout: LoraLayout, norm: BlockNormaliser, tokens: Tokens) -> list[Rows]:
    """Normalised tokens {module: (N, L, r, w)} -> N de-normalised flattened adapters."""
    shapes = {s.module: s for s in module_shapes(layout)}
    rows = {m: tokens_to_rows(tokens[m], shapes[m]) for m in layout.modules}  # (N, L, d)
    denorm = norm.denormalise(layout, rows)
    n = next(iter(denorm.values())).shape[0]
    return [{m: denorm[m][i] for m in layout.modules} for i in range(n)]


def _index(tokens: Tokens, idx: torch.Tensor | list[int]) -> Tokens:
    return {m: t[idx] for m, t in tokens.items()}


# ---- SG-LoRA -------------------------------------------------------------------


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


def _split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = int(round(n * fraction)) if n >= 5 else 0
    return sorted(order[n_val:]), sorted(order[:n_val])


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


# (expert index, adapter) -> accuracy on that expert's task; None: no task to score
TaskCheck = Callable[[int, Rows], float | None]


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

    train_idx, val_idx = _split(len(bank), config.val_fraction, config.seed)
    samples = [(t, s) for t in train_idx for s in bank.experts[t].snapshots]
    targets = to_tokens(layout, norm, [s for _, s in samples])  # {m: (S, L, r, w)}
    owner = torch.tensor([t for t, _ in samples])  # (S,) expert index of each sample

    net = SGLoraNet(module_shapes(layout), NetConfig(config.hidden, config.latent))

    def val_error() -> float:
        return _val_error(
            net,
            bank,
            norm,
            val_idx,
            lambda: net.sample(_index(cond_mean, val_idx), _index(cond_logvar, val_idx)),
        )

    def step_loss(batch: torch.Tensor) -> torch.Tensor:
        tasks = owner[batch]
        recon, kl = net(
            _index(targets, batch), _index(cond_mean, tasks), _index(cond_logvar, tasks)
        )
        return _loss(recon, _index(targets, batch), kl, config.beta)

    mixture_val = (
        sum(delta_relative_error(layout, mixtures[t].mean, bank.experts[t].mean) for t in val_idx)
        / len(val_idx)
        if val_idx
        else float("nan")
    )
    untrained = copy.deepcopy(net.state_dict())  # zero correction: the mixture means
    best_val, history = _train_loop(net, len(samples), step_loss, val_error, config, on_step)
    correction: dict[str, Any] = {}
    if task_check is not None and val_idx:
        val_means = [mixtures[t].mean for t in val_idx]
        correction = _check_correction(
            net, layout, norm, val_idx, task_check, cond_mean, cond_logvar, val_means
        )
        if not correction.get("correction_kept", True):
            net.load_state_dict(untrained)
    metrics = {
        "method": SG_LORA,
        "experts": len(bank),
        "train_experts": len(train_idx),
        "val_experts": len(val_idx),
        "samples": len(samples),
        "k": k,
        "tau": tau,
        "k_tau_grid": grid,
        "k_tau_by": choice.by,
        "gate": gate,
        "gate_grid": choice.gate_grid,
        "k_tau_scores": choice.scores,
        **correction,
        "val_rel_error": _finite(best_val),
        "val_rel_error_mixture": _finite(mixture_val),
        "history": history,
        "parameters": parameter_count(net),
        "train_seconds": round(time.perf_counter() - t0, 1),
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
    ckpt = Checkpoint(
        method=SG_LORA,
        layout=layout,
        template=bank.template,
        normaliser=norm,
        net=net,
        hyper=hyper,
        expert_ids=bank.ids,
        expert_embeddings=bank.embeddings,
    )
    return FitResult(ckpt, metrics)


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
            net.sample(_index(cond_mean, val_idx), _index(cond_logvar, val_idx)),
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


# ---- ICM-LoRA ------------------------------------------------------------------


def icm_condition(
    description: torch.Tensor, task_vector: torch.Tensor | None, hidden_size: int
) -> torch.Tensor:
    """(D,) description embedding (+ (H,) task vector) -> (D + H + 1,) condition."""
    d = torch.nn.functional.normalize(description.float(), dim=-1)
    if task_vector is None:
        return torch.cat([d, torch.zeros(hidden_size), torch.zeros(1)])
    tv = torch.nn.functional.normalize(task_vector.float(), dim=-1)
    return torch.cat([d, tv, torch.ones(1)])


def fit_icm(
    bank: ExpertBank,
    config: GeneratorConfig,
    task_vectors: Sequence[torch.Tensor | None] | None,  # per expert (H,), None: no examples
    *,
    hidden_size: int,
    on_step: StepCallback | None = None,
) -> FitResult:
    torch.manual_seed(config.seed)
    t0 = time.perf_counter()
    layout = bank.layout
    norm = BlockNormaliser.fit(layout, [s for e in bank.experts for s in e.snapshots])
    with_tv = torch.stack(
        [
            icm_condition(
                bank.embeddings[t], None if task_vectors is None else task_vectors[t], hidden_size
            )
            for t in range(len(bank))
        ]
    )  # (E, C)
    without_tv = torch.stack(
        [icm_condition(bank.embeddings[t], None, hidden_size) for t in range(len(bank))]
    )
    train_idx, val_idx = _split(len(bank), config.val_fraction, config.seed)
    samples = [(t, s) for t in train_idx for s in bank.experts[t].snapshots]
    targets = to_tokens(layout, norm, [s for _, s in samples])
    owner = torch.tensor([t for t, _ in samples])
    net = ICMLoraNet(
        module_shapes(layout), with_tv.shape[1], NetConfig(config.hidden, config.latent)
    )
    has_tv = task_vectors is not None and any(v is not None for v in task_vectors)
    drop = config.task_vector_dropout if has_tv else 1.0

    def val_error() -> float:
        return _val_error(net, bank, norm, val_idx, lambda: net.sample(without_tv[val_idx]))

    def step_loss(batch: torch.Tensor) -> torch.Tensor:
        tasks = owner[batch]
        keep = (torch.rand(len(batch)) >= drop)[:, None]
        cond = torch.where(keep, with_tv[tasks], without_tv[tasks])
        recon, kl = net(_index(targets, batch), cond)
        return _loss(recon, _index(targets, batch), kl, config.beta)

    best_val, history = _train_loop(net, len(samples), step_loss, val_error, config, on_step)
    metrics = {
        "method": ICM_LORA,
        "experts": len(bank),
        "train_experts": len(train_idx),
        "val_experts": len(val_idx),
        "samples": len(samples),
        "task_vectors": has_tv,
        "val_rel_error": _finite(best_val),
        "history": history,
        "parameters": parameter_count(net),
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    hyper = {**asdict(config), "hidden_size": hidden_size}
    ckpt = Checkpoint(
        method=ICM_LORA,
        layout=layout,
        template=bank.template,
        normaliser=norm,
        net=net,
        hyper=hyper,
        expert_ids=bank.ids,
    )
    return FitResult(ckpt, metrics)


# ---- shared loop ---------------------------------------------------------------


def _loss(recon: Tokens, target: Tokens, kl: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean squared error per module (normalised units) + beta * mean KL."""
    mse = sum(((recon[m] - target[m]) ** 2).mean() for m in target)
    assert isinstance(mse, torch.Tensor)
    return mse / len(target) + beta * kl.mean()


def _val_error(
    net: torch.nn.Module,
    bank: ExpertBank,
    norm: BlockNormaliser,
    val_idx: list[int],
    decode: Callable[[], Tokens],
) -> float:
    """Mean update-space error of the decoded (prior-mean) adapters of the validation experts."""
    if not val_idx:
        return float("nan")
    net.eval()
    with torch.no_grad():
        rows = from_tokens(bank.layout, norm, decode())
    net.train()
    return sum(
        delta_relative_error(bank.layout, r, bank.experts[t].mean)
        for r, t in zip(rows, val_idx, strict=True)
    ) / len(val_idx)


def _train_loop(
    net: torch.nn.Module,
    n_samples: int,
    step_loss: Callable[[torch.Tensor], torch.Tensor],
    val_error: Callable[[], float],
    config: GeneratorConfig,
    on_step: StepCallback | None,
) -> tuple[float, list[dict[str, float | None]]]:
    """AdamW with cosine decay; keeps the state with the lowest validation error."""
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    net.train()
    best_val = val_error()
    best_state = copy.deepcopy(net.state_dict())
    history: list[dict[str, float | None]] = [{"step": 0, "val": _finite(best_val)}]
    running = 0.0
    for step in range(1, config.steps + 1):
        lr = config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / config.steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        batch = torch.randint(n_samples, (min(config.batch_size, n_samples),), generator=gen)
        loss = step_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        running = 0.9 * running + 0.1 * loss.item() if step > 1 else loss.item()
        if on_step:
            on_step(step, config.steps, running)
        if step % config.eval_every == 0 or step == config.steps:
            val = val_error()
            history.append({"step": step, "loss": round(running, 5), "val": _finite(val)})
            if math.isnan(best_val) or val < best_val:
                best_val = val
                best_state = copy.deepcopy(net.state_dict())
    if not math.isnan(best_val):
        net.load_state_dict(best_state)
    net.eval()
    return best_val, history


def _finite(x: float) -> float | None:
    """JSON (and every database) has no NaN: an absent validation score is None."""
    return None if math.isnan(x) else round(x, 6)
