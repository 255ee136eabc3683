"""A tiny self-contained world for notebooks and tests.

Everything loramint does, in seconds and with nothing downloaded: a randomly
initialised two-layer Llama with a character tokenizer (saved as a local
Hugging Face folder, so it is a base model like any other), a task suite of
six "does the text mention a <word>?" tasks (one held out), and a registry on
a SQLite file holding the zoo trained on them. The description embedder is the
real MiniLM. Accuracies in this world mean nothing; the code paths are the
real ones.

    world = build_world(Path(tmp))    # seconds (set OMP_NUM_THREADS=1 on a busy machine)
    train_generators(world)           # {"sg-lora": GeneratorRecord}
"""

from __future__ import annotations

import dataclasses
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from generator.fit.config import GeneratorConfig
from generator.fit.train import train_generator
from generator.tasks.task import Example, Task, TaskSuite
from generator.zoo.build import build_zoo
from generator.zoo.trainer import TrainConfig
from registry.records import GeneratorRecord
from registry.service import Registry
from registry.settings import Settings

TINY_CONFIG: dict[str, Any] = dict(
    vocab_size=104,  # the character tokenizer below
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    # a wider init than Llama's 0.02, so that the tiny model's logits can move
    # far enough for a LoRA to change its answers in a few steps
    initializer_range=0.2,
)

WORDS = ["dog", "bird", "tree", "car", "sun", "cat", "moon", "fish"]
# (task name, word): the sandbox zoo's training tasks; "moon" is held out
TASKS = [("cat", "cat"), ("dog", "dog"), ("bird", "bird"), ("tree", "tree"), ("car", "car")]
HELD_OUT = "moon"

# the zoo's LoRA: rank 4 on q/v, a few steps (seconds per task on the tiny model)
ZOO_CONFIG = TrainConfig(rank=4, alpha=8, steps=6, batch_size=8, lr=1e-2, snapshots=3)
# a generator small enough to train in about a second
SANDBOX_GENERATOR = GeneratorConfig(hidden=32, latent=4, steps=10)


def char_tokenizer() -> Any:
    """A character-level tokenizer with a ChatML-style chat template (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials + list(string.printable))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="?"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tok


def save_tiny_llama(path: Path, seed: int = 0) -> Path:
    """A tiny randomly initialised Llama and its tokenizer, saved as a local HF folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(**TINY_CONFIG)).save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


def tiny_task(name: str, word: str, held_out: bool = False) -> Task:
    """A "does the text mention a <word>?" task over three-word inputs from ``WORDS``."""

    def make(n: int, offset: int) -> tuple[Example, ...]:
        out = []
        for i in range(n):
            ws = [WORDS[(i * 3 + j + offset) % len(WORDS)] for j in range(3)]
            out.append(Example(" ".join(ws), "yes" if word in ws else "no"))
        return tuple(out)

    return Task(
        name,
        f"Does the text mention a {word}? Answer yes or no.",
        "mentions",
        ("yes", "no"),
        make(32, 0),
        make(12, 1),
        "synthetic",
        "CC0-1.0",
        held_out,
    )


@dataclass
class SandboxWorld:
    registry: Registry
    suite: TaskSuite
    base: str  # the tiny Llama's folder: its base-model name in the registry
    settings: Settings

    def environment(self) -> dict[str, str]:
        """Variables that point a ``loramint`` process (CLI, server) at this world."""
        return self.settings.environment()

    def held_out(self) -> Task:
        return self.suite.load(HELD_OUT)

    def close(self) -> None:
        self.registry.close()


def build_world(
    root: Path, *, embedder: Any = None, base: Path | None = None, evaluate: bool = True
) -> SandboxWorld:
    """A registry (SQLite file under ``root``) holding a tiny zoo of five tasks plus
    one held-out task, trained on ``base`` (default: a tiny Llama under ``root``).
    ``embedder`` reuses a loaded MiniLM; ``evaluate=False`` skips scoring the zoo.
    Calling it again on the same ``root`` reuses everything (the zoo build resumes)."""
    root.mkdir(parents=True, exist_ok=True)
    if base is None:
        base = root / "tiny-llama"
        if not (base / "config.json").exists():  # a second call reuses the world
            save_tiny_llama(base)
    settings = Settings(
        home=root / "home", database_url=f"sqlite:///{root}/r.db", model_cache=root / "models"
    )
    reg = Registry(settings, embedder=embedder)
    suite = TaskSuite(root / "suite")
    suite.write_all(
        [tiny_task(n, w) for n, w in TASKS] + [tiny_task(HELD_OUT, HELD_OUT, held_out=True)]
    )
    build_zoo(reg, suite.select(), base_model=str(base), config=ZOO_CONFIG, evaluate=evaluate)
    return SandboxWorld(registry=reg, suite=suite, base=str(base), settings=settings)


def train_generators(
    world: SandboxWorld, methods: tuple[str, ...] = ("sg-lora",)
) -> dict[str, GeneratorRecord]:
    """Train (or reuse) one small generator per method on the sandbox zoo."""
    out = {}
    for method in methods:
        rec = world.registry.latest_generator(world.base, method)
        if rec is None:
            config = dataclasses.replace(SANDBOX_GENERATOR, method=method)
            rec, _ = train_generator(world.registry, world.base, config, tasks=list(world.suite))
        out[method] = rec
    return out
