"""Adapters side by side, and the oracle beside an adapter's measured accuracy.

An adapter's accuracy is measured on one task (``metrics["accuracy"]`` with
``base_accuracy``; the task is ``eval_task``, or ``task`` for a zoo adapter,
which is evaluated on its own task). The oracle of a task is its zoo adapter
(``zoo-<task>`` on the same base model), when that was evaluated too.
"""

from __future__ import annotations

from dataclasses import dataclass

from api.ui.accuracy_chart import AccuracyChart, Row, accuracy_chart
from generator.zoo.build import ZOO_PREFIX
from registry.errors import InvalidInput, NotFound
from registry.records import AdapterRecord
from registry.service import Registry

MAX_COMPARED = 8


def measured_task(rec: AdapterRecord) -> str | None:
    """The task whose test split ``rec``'s recorded accuracy was measured on."""
    if not isinstance(rec.metrics.get("accuracy"), int | float):
        return None
    task = rec.metrics.get("eval_task", rec.metrics.get("task"))
    return task if isinstance(task, str) and task else None


def accuracy(rec: AdapterRecord, key: str = "accuracy") -> float | None:
    value = rec.metrics.get(key)
    return float(value) if isinstance(value, int | float) else None


@dataclass(frozen=True)
class Oracle:
    """The task's own trained adapter, and its accuracy on the task's test split."""

    adapter: AdapterRecord
    accuracy: float

    def share_of_gain(self, value: float, bare: float | None) -> float | None:
        """(value - bare) / (oracle - bare), where the oracle gains anything."""
        if bare is None or self.accuracy - bare <= 1e-9:
            return None
        return (value - bare) / (self.accuracy - bare)


class Oracles:
    """Oracle lookups, each (base model, task) read once per page."""

    def __init__(self, reg: Registry) -> None:
        self.reg = reg
        self.seen: dict[tuple[str, str], Oracle | None] = {}

    def of(self, base_model: str, task: str) -> Oracle | None:
        key = (base_model, task)
        if key not in self.seen:
            rec = self.reg.find_adapter(base_model, ZOO_PREFIX + task)
            value = accuracy(rec) if rec is not None and measured_task(rec) == task else None
            self.seen[key] = Oracle(rec, value) if rec is not None and value is not None else None
        return self.seen[key]

    def beside(self, rec: AdapterRecord) -> Oracle | None:
        """The oracle of the task ``rec`` was measured on, unless ``rec`` is that oracle."""
        task = measured_task(rec)
        found = self.of(rec.base_model, task) if task else None
        return found if found is not None and found.adapter.id != rec.id else None


@dataclass(frozen=True)
class Compared:
    adapter: AdapterRecord
    task: str | None  # where its accuracy was measured
    accuracy: float | None
    bare: float | None
    oracle: Oracle | None
    experts: list[tuple[int, float | None]]  # parents that are experts, with weights


@dataclass(frozen=True)
class CompareView:
    columns: list[Compared]
    tasks: list[str]  # every task one of them was measured on
    task: str | None  # the one charted
    chart: AccuracyChart | None
    unmeasured: list[AdapterRecord]  # not measured on ``task``
    names: dict[int, str]  # id -> name, for the experts


def parse_ids(raw: list[str]) -> list[int]:
    """The ``ids`` of the compare form: 2 to ``MAX_COMPARED`` distinct adapter ids."""
    ids: list[int] = []
    for item in raw:
        for part in item.replace(",", " ").split():
            try:
                value = int(part)
            except ValueError:
                raise InvalidInput(f"adapter ids must be whole numbers, got {part!r}") from None
            if value not in ids:
                ids.append(value)
    if not 2 <= len(ids) <= MAX_COMPARED:
        raise InvalidInput(f"choose 2 to {MAX_COMPARED} adapters to compare, got {len(ids)}")
    return ids


def compare_view(reg: Registry, raw_ids: list[str], task: str = "") -> CompareView:
    """The adapters ``raw_ids`` names, and a chart of their accuracy on ``task`` (by
    default the task most of them were measured on) beside the bare model and the oracle."""
    records = [reg.get_adapter(i) for i in parse_ids(raw_ids)]
    oracles = Oracles(reg)
    columns = [
        Compared(
            r,
            measured_task(r),
            accuracy(r),
            accuracy(r, "base_accuracy"),
            oracles.beside(r),
            [(p.adapter_id, p.weight) for p in r.parents if p.role == "expert"],
        )  # fmt: skip
        for r in records
    ]
    tasks = sorted({c.task for c in columns if c.task}, key=lambda t: (-_count(columns, t), t))
    if task and task not in tasks:
        raise InvalidInput(f"none of these adapters was measured on task {task!r}")
    chosen = task or (tasks[0] if tasks else None)
    names: dict[int, str] = {}
    for c in columns:
        for adapter_id, _ in c.experts:
            if adapter_id not in names:
                found = [r for r in records if r.id == adapter_id]
                names[adapter_id] = found[0].name if found else _name(reg, adapter_id)
    if chosen is None:
        return CompareView(columns, tasks, None, None, records, names)
    on_task = [c for c in columns if c.task == chosen]
    return CompareView(
        columns,
        tasks,
        chosen,
        _chart(chosen, on_task, oracles),
        [c.adapter for c in columns if c.task != chosen],
        names,
    )


def _chart(task: str, on_task: list[Compared], oracles: Oracles) -> AccuracyChart:
    rows: list[Row] = []
    for base_model in dict.fromkeys(c.adapter.base_model for c in on_task):
        mine = [c for c in on_task if c.adapter.base_model == base_model]
        bare = next((c.bare for c in mine if c.bare is not None), None)
        oracle = oracles.of(base_model, task)
        several = len({c.adapter.base_model for c in on_task}) > 1
        suffix = f" ({base_model})" if several else ""
        if bare is not None:
            rows.append(Row(f"bare model{suffix}", bare, "bare"))
        oracle_id = oracle.adapter.id if oracle is not None else None
        for c in sorted(mine, key=lambda c: c.adapter.id == oracle_id):  # the oracle last
            assert c.accuracy is not None  # measured on the task
            is_oracle = c.adapter.id == oracle_id
            share = None if oracle is None or is_oracle else oracle.share_of_gain(c.accuracy, bare)
            note = f"{share:.0%} of the oracle's gain" if share is not None else ""
            kind = "oracle" if is_oracle else "adapter"
            rows.append(Row(c.adapter.name, c.accuracy, kind, note, f"/ui/adapters/{c.adapter.id}"))
        if oracle is not None and oracle.adapter.id not in {c.adapter.id for c in mine}:
            rows.append(Row(f"oracle: {oracle.adapter.name}", oracle.accuracy, "oracle"))
    return accuracy_chart(f"Accuracy on {task}", rows)


def _count(columns: list[Compared], task: str) -> int:
    return sum(c.task == task for c in columns)


def _name(reg: Registry, adapter_id: int) -> str:
    try:
        return reg.get_adapter(adapter_id).name
    except NotFound:
        return f"adapter {adapter_id} (deleted)"
