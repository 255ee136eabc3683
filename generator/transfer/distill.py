"""Trans-LoRA's last step: train the target LoRA by knowledge distillation from
the source model + source LoRA on the (filtered) synthetic inputs.

Classification tasks (a label set): the teacher's distribution over the labels
(rank classification: softmax of each label's total log-likelihood after the
prompt, in the *source* model's prompt format and tokenizer) is matched by the
student's distribution over the same labels in the *target* model's format,
with KL(teacher || student). Only label strings cross between the models, so
different tokenizers, depths and widths do not matter.

Free-form tasks: the teacher answers each input greedily and the student is
trained on those answers with the zoo trainer (answer-only cross-entropy).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from generator.tasks.device import model_device
from generator.tasks.evaluation import Evaluator
from generator.tasks.prompting import PromptFormat, shared_prefix
from generator.tasks.scoring import label_logprobs, label_tensor, score_batch
from generator.tasks.task import Example
from generator.zoo.trainer import (
    TrainConfig,
    attach_lora,
    encode,
    lora_state,
    lr_schedule,
    peft_config_dict,
    train_lora,
)
from registry.errors import InvalidInput
from registry.lora_spec import Adapter, Tensors


@dataclass(frozen=True)
class Distilled:
    peft_config: dict[str, Any]
    weights: Tensors
    losses: list[float]
    examples: int
    mode: str  # "labels" (KL on the label distribution) or "answers" (teacher's greedy text)
    seconds: float
    agreement: float | None = None  # student argmax == teacher argmax on the training inputs

    def figures(self) -> dict[str, Any]:
        k = max(1, min(5, len(self.losses) // 4))  # mean of the first / last k steps
        head, tail = self.losses[:k], self.losses[-k:]
        return {
            "mode": self.mode,
            "examples": self.examples,
            "steps": len(self.losses),
            "loss_first": round(sum(head) / len(head), 4),
            "loss_last": round(sum(tail) / len(tail), 4),
            "agreement": None if self.agreement is None else round(self.agreement, 4),
            "seconds": round(self.seconds, 2),
        }


def teacher_label_probs(
    teacher: Evaluator,
    adapter: Adapter,
    description: str,
    inputs: Sequence[str],
    labels: Sequence[str],
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """(N, L) the source model + LoRA's distribution over the labels for each input."""
    fmt = teacher.format
    prompts = [fmt.prompt_ids(description, x) for x in inputs]
    label_ids = [fmt.answer_ids(label) for label in labels]
    with teacher.attached(*adapter) as model:
        scores = label_logprobs(
            model, prompts, label_ids, pad_id=teacher.pad_id, batch_size=teacher.batch_size
        )  # (N, L)
    return torch.softmax(scores / temperature, dim=-1)


@torch.no_grad()
def teacher_answers(
    teacher: Evaluator,
    adapter: Adapter,
    description: str,
    inputs: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 8,
) -> list[str]:
    """The source model + LoRA's greedy answer to each input (free-form tasks)."""
    fmt = teacher.format
    tok = fmt.tokenizer
    stop = list(dict.fromkeys([*fmt.end_ids, *([tok.eos_token_id] if tok.eos_token_id else [])]))
    out: list[str] = []
    with teacher.attached(*adapter) as model:
        for start in range(0, len(inputs), batch_size):
            chunk = [fmt.prompt_ids(description, x) for x in inputs[start : start + batch_size]]
            B, T = len(chunk), max(len(p) for p in chunk)
            ids = torch.full((B, T), teacher.pad_id, dtype=torch.long)
            mask = torch.zeros((B, T), dtype=torch.long)
            for b, p in enumerate(chunk):  # left padding
                ids[b, T - len(p) :] = torch.tensor(p)
                mask[b, T - len(p) :] = 1
            device = model_device(model)
            gen = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=stop or None,
                pad_token_id=teacher.pad_id,
            )  # (B, T + new)
            answers = tok.batch_decode(gen[:, T:].cpu(), skip_special_tokens=True)
            out += [t.strip() for t in answers]
    return out


def balanced_weights(teacher: torch.Tensor, *, max_weight: float = 10.0) -> torch.Tensor:
    """(N,) weights under which every label the teacher picks (argmax) on the inputs
    counts as much in the loss as every other.

    Synthetic inputs follow the target model's idea of the task, not the task: for
    "is this about a plant?" it writes mostly plants, so the student would spend
    its steps on "yes". The targets stay the teacher's own distributions, so the
    weights change which inputs the student fits first, not what it should
    predict for any one input. Capped at ``max_weight`` (relative to the mean) so
    that one input of a rare label cannot take over."""
    N, L = teacher.shape
    picked = teacher.argmax(-1)  # (N,)
    counts = torch.bincount(picked, minlength=L).float()  # (L,)
    w = 1.0 / counts[picked]  # (N,) each present label sums to 1
    w = w / w.mean()
    return w.clamp(max=max_weight)


def distill_labels(
    model: torch.nn.Module,
    fmt: PromptFormat,
    description: str,
    inputs: Sequence[str],
    labels: Sequence[str],
    teacher: torch.Tensor,
    config: TrainConfig,
    *,
    kd_temperature: float = 1.0,
    weights: torch.Tensor | None = None,
    draw: torch.Tensor | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> Distilled:
    """Train a LoRA on ``model`` whose label distribution matches ``teacher`` (N, L).

    ``weights`` (N,), if given, weighs each input's KL term (see ``balanced_weights``).
    ``draw`` (N,), if given, makes every batch a seeded draw (with replacement) in
    which input i comes with probability proportional to ``draw[i]`` (how much an
    input is trusted, e.g. the discriminator's p(real)); without it each epoch takes
    every input once, in a new order."""
    N, L = len(inputs), len(labels)
    if N == 0:
        raise InvalidInput("nothing to distill on: no inputs")
    if tuple(teacher.shape) != (N, L):
        raise ValueError(f"teacher has shape {tuple(teacher.shape)}, expected ({N}, {L})")
    if weights is not None and (tuple(weights.shape) != (N,) or bool((weights <= 0).any())):
        raise ValueError(f"weights must be ({N},) and positive, got {tuple(weights.shape)}")
    if draw is not None and (
        tuple(draw.shape) != (N,) or bool((draw < 0).any()) or not float(draw.sum()) > 0
    ):
        raise ValueError(f"draw must be ({N},), >= 0 and not all 0, got {tuple(draw.shape)}")
    pad_id = fmt.tokenizer.pad_token_id
    pad_id = pad_id if pad_id is not None else (fmt.tokenizer.eos_token_id or 0)
    examples = [Example(x, labels[0]) for x in inputs]
    prompts = [e.prompt for e in encode(fmt, description, examples, config.max_prompt_tokens)]
    n = shared_prefix(prompts)
    prefix, own = prompts[0][:n], [p[n:] for p in prompts]
    device = model_device(model)  # the student trains where the target model is
    lab, lab_mask = (
        t.to(device) for t in label_tensor([fmt.answer_ids(label) for label in labels], pad_id)
    )  # (L, M)
    targets = teacher.to(device)
    weights = weights.to(device) if weights is not None else None
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    drawer = torch.Generator().manual_seed(config.seed)
    peft_model = attach_lora(model, config)
    try:
        params = [p for p in peft_model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(config))
        T = kd_temperature
        losses: list[float] = []
        queue: list[int] = []
        peft_model.train()
        t0 = time.perf_counter()
        for step in range(config.steps):
            if draw is not None:
                idx = torch.multinomial(draw, config.batch_size, True, generator=drawer).tolist()
            else:
                if len(queue) < config.batch_size:  # a new epoch, in a new order
                    order = list(range(N))
                    rng.shuffle(order)
                    queue += order
                idx, queue = queue[: config.batch_size], queue[config.batch_size :]
            scores = score_batch(peft_model, prefix, [own[i] for i in idx], lab, lab_mask, pad_id)
            log_student = F.log_softmax(scores / T, dim=-1)  # (B, L)
            # KL(teacher || student); T^2 keeps gradients comparable across temperatures
            kl = F.kl_div(log_student, targets[idx], reduction="none").sum(-1)  # (B,)
            w = weights[idx] if weights is not None else torch.ones_like(kl)
            loss = (w * kl).sum() / w.sum() * (T * T)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            if on_step:
                on_step(step, losses[-1])
        seconds = time.perf_counter() - t0
        peft_model.eval()
        student = label_logprobs(
            peft_model, prompts, [fmt.answer_ids(label) for label in labels], pad_id=pad_id
        )  # (N, L)
        agreement = float((student.argmax(-1) == teacher.argmax(-1)).float().mean())
        return Distilled(
            peft_config=peft_config_dict(peft_model),
            weights=lora_state(peft_model),
            losses=losses,
            examples=N,
            mode="labels",
            seconds=seconds,
            agreement=agreement,
        )
    finally:
        peft_model.unload()  # the target model goes back to its bare weights


def distill_answers(
    model: torch.nn.Module,
    fmt: PromptFormat,
    description: str,
    inputs: Sequence[str],
    answers: Sequence[str],
    config: TrainConfig,
    *,
    on_step: Callable[[int, float], None] | None = None,
) -> Distilled:
    """Train a LoRA on ``model`` to give the teacher's answers (free-form tasks)."""
    examples = [Example(x, a) for x, a in zip(inputs, answers, strict=True) if a.strip()]
    if not examples:
        raise InvalidInput("the teacher gave no non-empty answer to distill on")
    result = train_lora(model, fmt, description, examples, config, on_step=on_step)
    return Distilled(
        peft_config=result.peft_config,
        weights=result.weights,
        losses=result.losses,
        examples=len(examples),
        mode="answers",
        seconds=result.seconds,
    )
