"""Task suite v2: a few hundred tasks in three label formats, with paraphrased descriptions.

Built from the default suite's corpora (``v2_families``), deterministically
under a seed. Every group of classes gives three formats of task:

    yes_no      one class against the rest of its group (labels yes/no)
    two_labels  two neighbouring classes of the group, by name
    multi       three neighbouring classes, and all of them for a group of 4-6

A candidate whose corpus is too small for a balanced split is skipped (the
same candidates are skipped for every seed). The split: in each training
family but those of TRAIN_ONLY a seeded random HELD_SHARE of its tasks (at
least one) is held out (``split: held_out``); the whole NEW_FAMILY is held out
too (``split: new_family``), so no generator trains on any task of it. Each task's meta holds
``format``, ``split``, ``paraphrases`` (six training wordings, the first is the
description) and ``eval_description`` (a seventh wording for evaluation only).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from generator.tasks.suite.sampling import make_task, task_rng
from generator.tasks.suite.v2_families import FAMILIES, NEW_FAMILY, Family, Group, LabelPool
from generator.tasks.suite.v2_paraphrases import N_TRAIN_PARAPHRASES, wordings
from generator.tasks.task import Task, TaskSuite
from registry.errors import InvalidInput

SUITE_NAME = "v2"
SUITE_VERSION = 2
HELD_SHARE = 0.2
# Families none of whose tasks is held out: no held-out speaker task's oracle gained 0.1
# over the bare model (docs/experiments.md, "Suite v2's held-out oracles"), so each one
# held out would cost a training task and add nothing to the evaluation.
TRAIN_ONLY: tuple[str, ...] = ("simpsons_speaker", "seinfeld_speaker")
FORMATS: tuple[str, ...] = ("yes_no", "two_labels", "multi")
SPLITS: tuple[str, ...] = ("train", "held_out", "new_family")


@dataclasses.dataclass(frozen=True)
class Candidate:
    name: str
    format: str
    classes: tuple[LabelPool, ...]


def _slug(label: str) -> str:
    return label.lower().replace(" ", "_")


def candidates(group: Group) -> Iterator[Candidate]:
    """The group's tasks in a fixed order: yes/no per class, neighbour pairs, triples, all."""
    classes = group.classes
    n = len(classes)
    for c in classes:
        yield Candidate(f"{group.key}.yes_no.{_slug(c.label)}", "yes_no", (c,))
    pairs = [(classes[0], classes[1])] if n == 2 else [
        (classes[i], classes[(i + 1) % n]) for i in range(n)
    ]  # fmt: skip
    for pair in pairs:
        yield Candidate(
            f"{group.key}.two.{'-'.join(_slug(c.label) for c in pair)}", "two_labels", pair
        )
    sets = [classes[i : i + 3] for i in range(0, n - 2, 3)]
    if 4 <= n <= 6:
        sets.append(classes)
    for chosen in sets:
        yield Candidate(
            f"{group.key}.multi.{'-'.join(_slug(c.label) for c in chosen)}", "multi", chosen
        )


def _pools(group: Group, candidate: Candidate) -> dict[str, tuple[str, ...]]:
    if candidate.format != "yes_no":
        return {c.label: c.texts for c in candidate.classes}
    (chosen,) = candidate.classes
    rest = tuple(t for c in group.classes if c is not chosen for t in c.texts)
    return {"yes": chosen.texts, "no": rest}


def family_tasks(family: Family, seed: int) -> list[Task]:
    """Every candidate of the family with enough data, split ``train`` for now."""
    tasks: list[Task] = []
    for group in family.groups(seed):
        for candidate in candidates(group):
            texts = wordings(group, candidate.classes, one_vs_rest=candidate.format == "yes_no")
            try:
                task = make_task(
                    candidate.name,
                    texts[0],
                    family.name,
                    _pools(group, candidate),
                    seed=seed,
                    source=group.source,
                    licence=group.licence,
                    meta={
                        "format": candidate.format,
                        "split": "train",
                        "paraphrases": texts[:N_TRAIN_PARAPHRASES],
                        "eval_description": texts[N_TRAIN_PARAPHRASES],
                        "classes": [c.label for c in candidate.classes],
                    },
                )
            except InvalidInput:
                continue  # too little distinct data for both splits: skipped for every seed
            tasks.append(task)
    return tasks


def _with_split(task: Task, split: str) -> Task:
    return dataclasses.replace(task, held_out=split != "train", meta={**task.meta, "split": split})


def split_tasks(tasks: list[Task], seed: int) -> list[Task]:
    """Hold out NEW_FAMILY whole and a seeded HELD_SHARE of every family not in TRAIN_ONLY."""
    by_family: dict[str, list[str]] = {}
    for task in tasks:
        by_family.setdefault(task.family, []).append(task.name)
    held: set[str] = set()
    for family, names in by_family.items():
        if family == NEW_FAMILY or family in TRAIN_ONLY:
            continue
        k = max(1, round(HELD_SHARE * len(names)))
        if k >= len(names):
            raise InvalidInput(f"family {family} has too few tasks ({len(names)}) to hold some out")
        held.update(task_rng(f"v2:held_out:{family}", seed).sample(names, k))
    out: list[Task] = []
    for task in tasks:
        if task.family == NEW_FAMILY:
            out.append(_with_split(task, "new_family"))
        else:
            out.append(_with_split(task, "held_out" if task.name in held else "train"))
    return out


def v2_tasks(*, seed: int = 0) -> list[Task]:
    """Build every task of suite v2 in memory, split and marked."""
    tasks = [task for family in FAMILIES for task in family_tasks(family, seed)]
    names = Counter(t.name for t in tasks)
    duplicates = sorted(n for n, count in names.items() if count > 1)
    if duplicates:
        raise InvalidInput(f"duplicate task names in suite v2: {duplicates}")
    return split_tasks(tasks, seed)


def build_suite_v2(root: Path, *, seed: int = 0) -> list[Task]:
    """Build suite v2 and write it to ``root`` (manifest.json + one JSONL per task)."""
    tasks = v2_tasks(seed=seed)
    TaskSuite(Path(root)).write_all(tasks, suite=SUITE_NAME, version=SUITE_VERSION, seed=seed)
    return tasks


def split_table(tasks: list[Task]) -> str:
    """A markdown table of tasks per family and split, each cell yes_no/two_labels/multi."""
    counts = Counter((t.family, t.meta["split"], t.meta["format"]) for t in tasks)
    families = list(dict.fromkeys(t.family for t in tasks))
    rows = [
        "| family | " + " | ".join(SPLITS) + " | total |",
        "|---" * (len(SPLITS) + 2) + "|",
    ]
    for family in [*families, "all"]:
        cells = []
        for split in SPLITS:
            n = [
                sum(
                    c
                    for (fam, s, f), c in counts.items()
                    if family in ("all", fam) and (s, f) == (split, fmt)
                )
                for fmt in FORMATS
            ]
            cells.append(f"{sum(n)} ({'/'.join(map(str, n))})" if sum(n) else "0")
        total = sum(c for (fam, _, _), c in counts.items() if family in ("all", fam))
        rows.append(f"| {family} | " + " | ".join(cells) + f" | {total} |")
    return "\n".join(rows) + "\n"
