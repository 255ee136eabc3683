"""Trainer throughput: loramint's LoRA trainer vs a plain transformers.Trainer + peft.

    .venv/bin/python bench/train.py [--task NAME] [--steps 12] [--batch-size 16]

Same base model (SmolLM2-135M-Instruct), same task examples and prompt format,
same LoRA (r=8, alpha=16, q_proj/v_proj), same batch size and number of
steps, one run on this machine. Throughput counts non-padding tokens per
second of training. The baseline is what one would write first: right padding,
labels -100 on the prompt, full logits over the sequence, dataset order from
the Trainer's sampler.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def baseline(path: Path, fmt: Any, task: Any, steps: int, batch_size: int) -> tuple[float, int]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    loaded = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    torch.manual_seed(0)
    model = get_peft_model(
        loaded,
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    rows = []
    for e in task.train:
        prompt, answer = fmt.prompt_ids(task.description, e.input), fmt.answer_ids(e.output)
        rows.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})
    pad = fmt.tokenizer.pad_token_id
    counted = {"tokens": 0}

    def collate(batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        T = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), T), pad)
        labels = torch.full((len(batch), T), -100)
        mask = torch.zeros((len(batch), T), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = (
                torch.tensor(b["input_ids"]),
                torch.tensor(b["labels"]),
                1,
            )
        counted["tokens"] += int(mask.sum())
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=batch_size,
            max_steps=steps,
            learning_rate=1e-3,
            save_strategy="no",
            report_to=[],
            logging_steps=steps,
            use_cpu=True,
            dataloader_num_workers=0,
            remove_unused_columns=False,
            seed=0,
        )
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate)
        t = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t
    return seconds, counted["tokens"]


def ours(path: Path, task: Any, steps: int, batch_size: int) -> tuple[float, int]:
    from generator.tasks.evaluation import load_base
    from generator.tasks.prompting import PromptFormat
    from generator.zoo.trainer import TrainConfig, train_lora

    model, tok = load_base(path)
    result = train_lora(
        model,
        PromptFormat.for_tokenizer(tok),
        task.description,
        task.train,
        TrainConfig(steps=steps, batch_size=batch_size),
    )
    return result.seconds, result.tokens


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--task", default=None, help="task of the default suite (default: the first)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    if args.steps < 1 or args.batch_size < 1:
        ap.error("--steps and --batch-size must be positive")
    from transformers import AutoTokenizer

    from api.cli_zoo import open_suite
    from generator.tasks.prompting import PromptFormat
    from registry.service import Registry

    reg = Registry()
    path = reg.base_model_path("smollm2-135m-instruct")
    suite = open_suite(None)
    task = suite.load(args.task or suite.names()[0])
    fmt = PromptFormat.for_tokenizer(AutoTokenizer.from_pretrained(str(path)))
    rows = []
    runs: list[tuple[str, Callable[[], tuple[float, int]]]] = [
        (
            "transformers.Trainer + peft (baseline)",
            lambda: baseline(path, fmt, task, args.steps, args.batch_size),
        ),
        ("loramint trainer", lambda: ours(path, task, args.steps, args.batch_size)),
    ]
    for name, run in runs:
        seconds, tokens = run()
        rows.append((name, seconds, tokens, tokens / seconds))
        print(
            f"{name}: {seconds:.1f} s, {tokens} tokens, {tokens / seconds:.0f} tokens/s", flush=True
        )
    threads = torch.get_num_threads()
    print(
        f"\ntask {task.name}, {args.steps} steps x {args.batch_size} examples, {threads} threads\n"
    )
    print("| trainer | seconds | tokens | tokens/s | s/step |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds, tokens, tps in rows:
        print(f"| {name} | {seconds:.1f} | {tokens} | {tps:.0f} | {seconds / args.steps:.2f} |")
    speedup, wall = rows[1][3] / rows[0][3], rows[0][1] / rows[1][1]
    print(f"\nspeed-up: {speedup:.2f}x tokens/s, {wall:.2f}x wall time")


if __name__ == "__main__":
    main()
