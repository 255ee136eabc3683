"""LoRA trainer for any causal LM: the zoo's workhorse.

Speed on CPU comes from four things: the prompt prefix every example of a
task shares (chat template + description, often two thirds of the tokens) is
run once per step and its key/value cache shared by the batch, gradients
flowing back through it; left-padded batches (every answer ends in the last
columns, so the LM head runs only on ``logits_to_keep`` positions); length
bucketing (batches of similar length, little padding); and loading the base
model once per zoo build (adapters are attached and removed around it).

Every adapter of one base model and layout starts from the SAME A matrices
(``init_seed``), so adapters are comparable element-wise (docs/design.md, weight
geometry). During the late part of training the trainer keeps the running
mean and variance of the LoRA weights (Welford) and a few snapshots: the
trajectory statistics SG-LoRA and ICM-LoRA learn from.
"""

from __future__ import annotations

import enum
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from generator.tasks.device import model_device
from generator.tasks.kv_cache import passing, returned
from generator.tasks.prompting import PromptFormat, shared_prefix
from generator.tasks.task import Example
from generator.zoo.trajectory import Trajectory
from registry.base_models import MODEL_LOADING
from registry.errors import InvalidInput
from registry.lora_spec import Tensors


@dataclass(frozen=True)
class TrainConfig:
    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    steps: int = 40
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 4
    seed: int = 0  # data order
    init_seed: int = 0  # A matrices: the same for every adapter of one layout
    trajectory_start: float = 0.5  # running mean/variance over the last half of the steps
    snapshots: int = 5
    max_prompt_tokens: int = 320  # longer prompts keep their end (the input's tail is cut)
    # sort batches by length (little padding); off where every batch must mix examples of
    # all kinds (a discriminator whose classes differ in length would see one-class batches)
    length_buckets: bool = True

    def __post_init__(self) -> None:
        # name -> (lowest, highest) allowed; the upper bounds stop absurd job parameters
        ranges = {
            "rank": (1, 1024), "alpha": (1e-6, 1e6), "steps": (1, 1_000_000),
            "batch_size": (1, 4096), "lr": (1e-12, 10.0), "warmup_steps": (0, 1_000_000),
            "snapshots": (1, 1000), "max_prompt_tokens": (9, 100_000),
        }  # fmt: skip
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if not (math.isfinite(value) and low <= value <= high):
                raise InvalidInput(f"{name} must be in [{low:g}, {high:g}], got {value}")
        if not 0.0 <= self.trajectory_start < 1.0:
            raise InvalidInput(f"trajectory_start must be in [0, 1), got {self.trajectory_start}")
        if not self.target_modules:
            raise InvalidInput("target_modules is empty")

    def lora_config(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,  # type: ignore[arg-type]
            target_modules=list(self.target_modules),
            lora_dropout=0.0,
            bias="none",
            task_type="CAUSAL_LM",
        )


@dataclass
class TrainResult:
    peft_config: dict[str, Any]
    weights: Tensors  # final LoRA weights, PEFT state-dict names
    mean: Tensors  # over the late trajectory
    var: Tensors
    snapshots: list[Tensors]
    losses: list[float]
    seconds: float
    tokens: int  # non-padding tokens processed
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def attach_lora(model: torch.nn.Module, config: TrainConfig) -> Any:
    """Wrap ``model`` in a PEFT LoRA whose A matrices depend only on ``init_seed``."""
    from peft import get_peft_model

    with MODEL_LOADING:  # LoRA init must not meet another thread's model load
        state = torch.random.get_rng_state()
        torch.manual_seed(config.init_seed)
        peft_model = get_peft_model(model, config.lora_config())  # type: ignore[arg-type]
        torch.random.set_rng_state(state)
    return peft_model


def lora_state(peft_model: Any) -> Tensors:
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(peft_model)
    return {k: v.detach().float().cpu().clone() for k, v in state.items()}  # CPU, any device


@dataclass(frozen=True)
class Encoded:
    prompt: list[int]
    answer: list[int]

    def __len__(self) -> int:
        return len(self.prompt) + len(self.answer)


def encode(
    fmt: PromptFormat, description: str, examples: Sequence[Example], max_prompt: int
) -> list[Encoded]:
    out = []
    for e in examples:
        prompt = fmt.prompt_ids(description, e.input)
        if len(prompt) > max_prompt:
            # keep the template's head and the generation prompt at the end
            prompt = prompt[: max_prompt // 2] + prompt[-(max_prompt - max_prompt // 2) :]
        out.append(Encoded(prompt, fmt.answer_ids(e.output)))
    return out


def split_prefix(data: list[Encoded]) -> tuple[list[int], list[Encoded]]:
    n = shared_prefix([d.prompt for d in data])
    return data[0].prompt[:n], [Encoded(d.prompt[n:], d.answer) for d in data]


def forward_with_prefix(
    model: Any,
    prefix: Sequence[int],
    ids: torch.Tensor,
    mask: torch.Tensor,
    pos: torch.Tensor,
    logits_to_keep: int,
) -> torch.Tensor:
    """Logits (B, K, V) of the last K columns of ``prefix + ids[b]`` for every row b.

    The prefix runs once; its cache is repeated for the batch (gradients from
    every row flow back into the one prefix computation). ``ids`` are left
    padded, ``pos`` counts from 0 at each row's first real token; the model runs
    on ``ids``' device.
    """
    B, P = ids.shape[0], len(prefix)
    if P == 0:
        out = model(
            input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=logits_to_keep
        )
        return out.logits
    device = ids.device
    pre = model(
        input_ids=torch.tensor([list(prefix)], device=device), use_cache=True, logits_to_keep=1
    )
    cache = returned(pre)
    cache.batch_repeat_interleave(B)
    ones = torch.ones((B, P), dtype=mask.dtype, device=device)
    full_mask = torch.cat([ones, mask], dim=1)  # (B, P+S)
    out = model(
        input_ids=ids,
        attention_mask=full_mask,
        position_ids=pos + P,
        logits_to_keep=logits_to_keep,
        **passing(cache),
    )
    return out.logits


def batches(
    items: list[Encoded], batch_size: int, rng: random.Random, *, buckets: bool = True
) -> list[list[Encoded]]:
    """One epoch: shuffle, sort within windows of 8 batches by length, shuffle batches
    (without ``buckets``: shuffle and cut)."""
    order = items[:]
    rng.shuffle(order)
    if not buckets:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    window = batch_size * 8
    out: list[list[Encoded]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=len)
        out += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(out)
    return out


def collate(
    batch: list[Encoded], pad_id: int, device: torch.device | None = None
) -> tuple[torch.Tensor, ...]:
    """Left-padded ids, mask, positions, targets (B, K-1) and target mask for the last K
    columns (on ``device``, else the CPU)."""
    T = max(len(x) for x in batch)
    K = max(len(x.answer) for x in batch) + 1
    B = len(batch)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    tgt_mask = torch.zeros((B, K - 1), dtype=torch.bool)
    for b, x in enumerate(batch):
        seq = x.prompt + x.answer
        ids[b, T - len(seq) :] = torch.tensor(seq)
        mask[b, T - len(seq) :] = 1
        tgt_mask[b, K - 1 - len(x.answer) :] = True
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    targets = ids[:, T - K + 1 :]  # (B, K-1): the tokens the last K-1 logits predict
    out = (ids, mask, pos, targets, tgt_mask)
    return out if device is None else tuple(t.to(device) for t in out)


@dataclass(frozen=True)
class EarlyStop:
    """Validation while training: the answer-token loss on ``examples`` before the first
    step and every ``every`` steps; training stops after ``patience`` checks without a
    better loss, and the weights of the best check are the result (the starting
    weights included, so training never returns worse than it started on them)."""

    examples: Sequence[Example]
    every: int = 2
    patience: int = 3

    def __post_init__(self) -> None:
        if not self.examples:
            raise InvalidInput("early stopping needs validation examples")
        if self.every < 1 or self.patience < 1:
            raise InvalidInput("early stopping checks every >= 1 steps, patience >= 1")


def train_lora(
    model: torch.nn.Module,
    fmt: PromptFormat,
    description: str,
    examples: Sequence[Example],
    config: TrainConfig,
    *,
    on_step: Callable[[int, float], None] | None = None,
    initial: Tensors | None = None,
    early_stop: EarlyStop | None = None,
) -> TrainResult:
    """Train one LoRA on ``examples`` (loss on the answer tokens only) and return its weights
    with the late-trajectory statistics; from ``initial`` weights (PEFT names) when given,
    else from the layout's shared A and a zero B. ``model`` is left as it was (the LoRA is
    removed)."""
    if not examples:
        raise InvalidInput("no training examples")
    return train_multitask(
        model, fmt, [(description, examples)], config, on_step=on_step, initial=initial,
        early_stop=early_stop,
    )  # fmt: skip


def train_multitask(
    model: torch.nn.Module,
    fmt: PromptFormat,
    tasks: Sequence[tuple[str, Sequence[Example]]],
    config: TrainConfig,
    *,
    on_step: Callable[[int, float], None] | None = None,
    initial: Tensors | None = None,
    early_stop: EarlyStop | None = None,
) -> TrainResult:
    """Train one LoRA on several tasks, each (description, examples): every batch comes
    from one task (its shared prompt prefix runs once) and the tasks take turns in a
    shuffled round, so each gets the same number of steps whatever its size. One task
    is ``train_lora``. ``model`` is left as it was (the LoRA is removed)."""
    groups = [(d, ex) for d, ex in tasks if ex]
    if not groups:
        raise InvalidInput("no training examples")
    if early_stop is not None and len(groups) != 1:
        raise InvalidInput("early stopping validates one task")
    pad_id = pad_id_of(fmt)
    encoded = [split_prefix(encode(fmt, d, ex, config.max_prompt_tokens)) for d, ex in groups]
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    queues: list[list[list[Encoded]]] = [[] for _ in encoded]
    turns: list[int] = []

    def next_batch() -> tuple[list[int], list[Encoded]]:
        if not turns:  # one task draws nothing here: its data order is train_lora's own
            turns.extend(rng.sample(range(len(encoded)), len(encoded)) if len(encoded) > 1 else [0])
        g = turns.pop()
        prefix, data = encoded[g]
        if not queues[g]:
            queues[g] = batches(data, config.batch_size, rng, buckets=config.length_buckets)
        return prefix, queues[g].pop()

    validate = None
    if early_stop is not None:
        val = split_prefix(encode(fmt, groups[0][0], early_stop.examples, config.max_prompt_tokens))
        validate = _validator(val, config.batch_size, pad_id)
    peft_model = attach_lora(model, config)
    try:
        if initial is not None:
            _load_weights(peft_model, initial)
        return _train(peft_model, next_batch, config, pad_id, on_step, validate, early_stop)
    finally:
        peft_model.unload()  # back to the bare base model for the next task


def pad_id_of(fmt: PromptFormat) -> int:
    pad_id = fmt.tokenizer.pad_token_id
    return int(pad_id) if pad_id is not None else int(fmt.tokenizer.eos_token_id or 0)


def lr_schedule(config: TrainConfig) -> Callable[[int], float]:
    """The learning-rate factor at each step: linear warm-up, cosine decay to 10 %."""

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return lr_at


def _train(
    peft_model: Any,
    next_batch: Callable[[], tuple[list[int], list[Encoded]]],  # -> (prefix, batch)
    config: TrainConfig,
    pad_id: int,
    on_step: Callable[[int, float], None] | None,
    validate: Callable[[Any], float] | None = None,
    early_stop: EarlyStop | None = None,
) -> TrainResult:
    params = [p for p in peft_model.parameters() if p.requires_grad]
    device = model_device(peft_model)
    best: tuple[float, int, Tensors] | None = None  # (validation loss, step, weights)
    checks: list[list[float]] = []  # [step, validation loss]; step 0: before training

    def check(step: int) -> bool:
        """Validate after ``step`` steps; True when training should stop."""
        nonlocal best
        assert validate is not None and early_stop is not None
        loss = validate(peft_model)
        checks.append([step, round(loss, 5)])
        if best is None or loss < best[0]:
            best = (loss, step, lora_state(peft_model))
        stale = (step - best[1]) // early_stop.every
        return stale >= early_stop.patience

    if validate is not None:
        check(0)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(config))
    trajectory = Trajectory(config.steps, config.trajectory_start, config.snapshots)
    losses: list[float] = []
    tokens = 0
    peft_model.train()
    t0 = time.perf_counter()
    for step in range(config.steps):
        prefix, batch = next_batch()
        ids, mask, pos, targets, tgt_mask = collate(batch, pad_id, device)
        K = targets.shape[1] + 1
        # (B, K-1, V): each logit predicts the next column's token
        logits = forward_with_prefix(peft_model, prefix, ids, mask, pos, K)[:, :-1]
        loss = F.cross_entropy(logits[tgt_mask].float(), targets[tgt_mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        tokens += int(mask.sum()) + len(prefix) * ids.shape[0]  # tokens the batch stands for
        losses.append(loss.item())
        if step >= trajectory.start:
            trajectory.add(step, lora_state(peft_model))
        if on_step:
            on_step(step, losses[-1])
        if early_stop is not None and (step + 1) % early_stop.every == 0 and check(step + 1):
            break
    seconds = time.perf_counter() - t0
    peft_model.eval()
    extra: dict[str, Any] = {}
    weights = lora_state(peft_model)
    if best is not None:
        weights = best[2]
        extra = {"best_step": best[1], "val_losses": checks, "steps_run": len(losses)}
    return TrainResult(
        peft_config=peft_config_dict(peft_model),
        weights=weights,
        mean=trajectory.mean,
        var=trajectory.var(),
        snapshots=trajectory.snapshots,
        losses=losses,
        seconds=seconds,
        tokens=tokens,
        extra=extra,
    )


def _load_weights(peft_model: Any, weights: Tensors) -> None:
    """Start from ``weights`` (PEFT state-dict names) instead of the fresh LoRA."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(peft_model, weights)
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing:
        raise InvalidInput(f"starting weights are missing {missing[0]}")


def _validator(
    data: tuple[list[int], list[Encoded]], batch_size: int, pad_id: int
) -> Callable[[Any], float]:
    """The mean answer-token loss of ``data`` (prefix, examples) under a model."""
    prefix, examples = data

    @torch.no_grad()
    def loss(model: Any) -> float:
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            ids, mask, pos, targets, tgt_mask = collate(batch, pad_id, model_device(model))
            logits = forward_with_prefix(model, prefix, ids, mask, pos, targets.shape[1] + 1)
            picked = logits[:, :-1][tgt_mask].float()
            total += float(F.cross_entropy(picked, targets[tgt_mask], reduction="sum"))
            count += int(tgt_mask.sum())
        if was_training:
            model.train()
        return total / max(1, count)

    return loss


def peft_config_dict(peft_model: Any) -> dict[str, Any]:
    """The attached LoRA's adapter_config.json as a JSON-ready dict."""
    config = peft_model.peft_config["default"].to_dict()
    config["target_modules"] = sorted(config["target_modules"])
    result: dict[str, Any] = _jsonable(config)
    return result


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in (sorted(value) if isinstance(value, set) else value)]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
