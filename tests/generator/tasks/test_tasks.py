import json
from pathlib import Path
from typing import Any

import pytest

from generator.tasks.task import Example, Task, TaskSuite
from registry.errors import InvalidInput, NotFound


def task(name: str = "my_task", **kw: object) -> Task:
    fields: dict[str, Any] = dict(
        name=name,
        description="Is this about a tree? Answer yes or no.",
        family="custom",
        labels=("yes", "no"),
        train=(Example("oak leaves", "yes"), Example("a horse post", "no")),
        test=(Example("pine bark", "yes"),),
        source="my notes",
        licence="CC0",
    )
    fields.update(kw)
    return Task(**fields)


def test_add_load_and_refuse_duplicates(tmp_path: Path) -> None:
    suite = TaskSuite(tmp_path)
    suite.add(task())
    suite.add(task("other", held_out=True))
    assert suite.names() == ["my_task", "other"]
    assert suite.load("my_task") == task()
    assert [t.name for t in suite.select(held_out=True)] == ["other"]
    with pytest.raises(InvalidInput, match="already exists"):
        suite.add(task())
    suite.add(task(description="Tree or not? Answer yes or no."), replace=True)
    assert suite.load("my_task").description.startswith("Tree or not")
    with pytest.raises(NotFound):
        suite.load("nope")
    with pytest.raises(NotFound, match="unknown tasks: nope"):
        suite.select(["nope"])


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"name": "Bad Name"}, "task name"),
        ({"description": "  "}, "description is empty"),
        ({"test": ()}, "needs train and test"),
        ({"labels": ("yes", "yes")}, "duplicate labels"),
        ({"train": (Example("x", "maybe"),)}, "not in its labels"),
    ],
)
def test_bad_tasks(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        task(**kw)


def test_hand_written_files_with_errors_name_the_line(tmp_path: Path) -> None:
    suite = TaskSuite(tmp_path)
    suite.add(task())
    (tmp_path / "my_task.jsonl").write_text('{"input": "a", "output": "yes"}\n{"oops": 1}\n')
    with pytest.raises(InvalidInput, match="my_task.jsonl:2"):
        suite.load("my_task")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(InvalidInput, match="not valid JSON"):
        suite.names()
    (tmp_path / "manifest.json").write_text(json.dumps({"tasks": "x"}))
    with pytest.raises(InvalidInput, match="'tasks' list"):
        suite.names()
