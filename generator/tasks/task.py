"""Tasks: what an adapter is trained on and evaluated with.

A task is a name, a description (written as the instruction a user would type
to ask for an adapter; it is also the prompt's instruction), a family (tasks
of one family are related, so an unseen task has informative neighbours), a
label set (empty for free-form outputs), train and test examples, and where
the data came from under which licence. ``held_out`` marks tasks no generator
may train on.

On disk a suite is a folder: ``manifest.json`` lists the tasks' metadata and
each task's examples live in ``<name>.jsonl`` (one ``{"input", "output",
"split"}`` object per line). A user adds a task by dropping in a JSONL file and
a manifest entry (or with ``TaskSuite.add``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from registry.blobs import write_atomic
from registry.errors import InvalidInput, NotFound

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-.]{0,99}$")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Example:
    input: str
    output: str


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    family: str
    labels: tuple[str, ...]
    train: tuple[Example, ...]
    test: tuple[Example, ...]
    source: str
    licence: str
    held_out: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise InvalidInput(
                f"task name {self.name!r} must be lowercase letters, digits, '_', '-' or '.'"
            )
        if not self.description.strip():
            raise InvalidInput(f"task {self.name}: description is empty")
        if not self.train or not self.test:
            raise InvalidInput(f"task {self.name}: needs train and test examples")
        if len(set(self.labels)) != len(self.labels):
            raise InvalidInput(f"task {self.name}: duplicate labels in {self.labels}")
        if self.labels:
            bad = {e.output for e in (*self.train, *self.test)} - set(self.labels)
            if bad:
                raise InvalidInput(
                    f"task {self.name}: outputs {sorted(bad)[:3]} are not in its labels"
                )

    @property
    def is_classification(self) -> bool:
        return bool(self.labels)

    def seeds(self, n: int = 5) -> tuple[Example, ...]:
        """A handful of training examples kept with the adapter (Trans-LoRA seeds)."""
        return self.train[:n]

    def header(self) -> dict[str, Any]:
        """The manifest entry: everything but the examples."""
        d = asdict(self)
        d.pop("train")
        d.pop("test")
        d["labels"] = list(self.labels)
        d["n_train"], d["n_test"] = len(self.train), len(self.test)
        return d


class TaskSuite:
    """A folder of tasks: ``manifest.json`` + one JSONL file per task."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _manifest(self) -> dict[str, Any]:
        path = self.root / MANIFEST
        if not path.is_file():
            return {"tasks": []}
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
            raise InvalidInput(f"{path} must be an object with a 'tasks' list")
        return data

    def names(self) -> list[str]:
        return [t["name"] for t in self._manifest()["tasks"]]

    def exists(self) -> bool:
        return (self.root / MANIFEST).is_file()

    def load(self, name: str) -> Task:
        entries = {t["name"]: t for t in self._manifest()["tasks"]}
        if name not in entries:
            raise NotFound(f"no task named {name!r} in {self.root}")
        return _task_from(entries[name], self.root / f"{name}.jsonl")

    def __iter__(self) -> Iterator[Task]:
        for name in self.names():
            yield self.load(name)

    def select(
        self, names: Sequence[str] | None = None, *, held_out: bool | None = None
    ) -> list[Task]:
        wanted = list(names) if names else self.names()
        unknown = sorted(set(wanted) - set(self.names()))
        if unknown:
            raise NotFound(f"unknown tasks: {', '.join(unknown)}")
        tasks = [self.load(n) for n in wanted]
        return [t for t in tasks if held_out is None or t.held_out == held_out]

    def add(self, task: Task, *, replace: bool = False) -> None:
        """Write a task's JSONL, then its manifest entry (both atomically)."""
        manifest = self._manifest()
        names = [t["name"] for t in manifest["tasks"]]
        if task.name in names and not replace:
            raise InvalidInput(f"task {task.name!r} already exists in {self.root}")
        write_atomic(self.root / f"{task.name}.jsonl", _jsonl(task))
        entries = [t for t in manifest["tasks"] if t["name"] != task.name] + [task.header()]
        manifest["tasks"] = entries
        write_atomic(self.root / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())

    def write_all(self, tasks: Sequence[Task], **meta: Any) -> None:
        """Replace the suite with ``tasks`` (used by the default suite builder)."""
        for task in tasks:
            write_atomic(self.root / f"{task.name}.jsonl", _jsonl(task))
        manifest = {**meta, "tasks": [t.header() for t in tasks]}
        write_atomic(self.root / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())


def _jsonl(task: Task) -> bytes:
    lines = [
        json.dumps({"input": e.input, "output": e.output, "split": split}, ensure_ascii=False)
        for split, examples in (("train", task.train), ("test", task.test))
        for e in examples
    ]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _task_from(entry: dict[str, Any], path: Path) -> Task:
    train: list[Example] = []
    test: list[Example] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise InvalidInput(f"task {entry.get('name')!r}: {path} is missing") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            example = Example(str(row["input"]), str(row["output"]))
            split = row.get("split", "train")
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InvalidInput(f"{path}:{number}: expected {{'input', 'output', 'split'}}") from exc
        if split not in ("train", "test"):
            raise InvalidInput(f"{path}:{number}: split must be 'train' or 'test', got {split!r}")
        (train if split == "train" else test).append(example)
    try:
        return Task(
            name=entry["name"],
            description=entry["description"],
            family=entry.get("family", "custom"),
            labels=tuple(entry.get("labels") or ()),
            train=tuple(train),
            test=tuple(test),
            source=entry.get("source", "unknown"),
            licence=entry.get("licence", "unknown"),
            held_out=bool(entry.get("held_out", False)),
            meta=dict(entry.get("meta") or {}),
        )
    except KeyError as exc:
        raise InvalidInput(f"manifest entry is missing {exc.args[0]!r}: {entry}") from exc
