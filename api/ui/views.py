"""What each admin UI page shows, read from the registry: plain records, no ORM objects.

One function per page; handlers call one of these (or one write use case) and
render the result. The checks are the REST API's (the same registry calls and
limits), so a bad filter reads the same in both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from api.ui.compare import Oracle, Oracles
from api.ui.weight_chart import NormChart, norm_chart, weight_norms
from generator.zoo.artifacts import SEEDS
from registry.base_models import OFFLINE_MODELS
from registry.errors import InvalidInput, NotFound
from registry.lineage import Child
from registry.model_card import Measured, measurements
from registry.models import JobState, Provenance
from registry.records import AdapterRecord, BaseModelRecord, GeneratorRecord, JobRecord
from registry.service import Registry

PAGE_SIZE = 25
RECENT = 8
NEIGHBOURS = 5
ACTIVE_STATES = (JobState.QUEUED.value, JobState.RUNNING.value)
PROVENANCES = tuple(p.value for p in Provenance)


def base_model_names(reg: Registry) -> list[str]:
    """Base models for the forms, the one a form should offer first first: those with a
    generator, then those with the most adapters (a default that works), then by name."""
    served = {g.base_model for g in reg.list_generators(limit=500)}
    counts = {b.name: reg.count_adapters(base_model=b.name) for b in reg.list_base_models()}
    return sorted(counts, key=lambda name: (name not in served, -counts[name], name))


@dataclass(frozen=True)
class BaseModelRow:
    model: BaseModelRecord
    adapters: int
    generators: list[str]  # methods with a trained generator


@dataclass(frozen=True)
class Dashboard:
    base_models: list[BaseModelRow]
    adapters: int
    generators: int
    active_jobs: int
    recent_adapters: list[AdapterRecord]
    recent_jobs: list[JobRecord]


def dashboard(reg: Registry) -> Dashboard:
    methods: dict[str, list[str]] = {}
    gens = reg.list_generators(limit=10_000)
    for g in gens:
        if g.method not in methods.setdefault(g.base_model, []):
            methods[g.base_model].append(g.method)
    rows = [
        BaseModelRow(b, reg.count_adapters(base_model=b.name), methods.get(b.name, []))
        for b in reg.list_base_models()
    ]
    total = reg.count_adapters()
    recent = reg.list_adapters(limit=RECENT, offset=max(0, total - RECENT))[::-1]
    active = sum(reg.count_jobs(state=s) for s in ACTIVE_STATES)
    return Dashboard(rows, total, len(gens), active, recent, reg.list_jobs(limit=RECENT))


@dataclass(frozen=True)
class AdapterQuery:
    """The adapters page's filters, as typed into its form (strings until checked)."""

    q: str = ""
    base_model: str = ""
    provenance: str = ""
    k: str = "10"
    offset: str = "0"
    sort: str = "id"
    order: str = "asc"

    def sorted_by(self, column: str) -> str:
        """The list's address sorted by ``column``: a second click reverses the order."""
        flip = "desc" if self.sort == column and self.order == "asc" else "asc"
        return "/ui/adapters?" + urlencode(
            {"base_model": self.base_model, "provenance": self.provenance,
             "sort": column, "order": flip}
        )  # fmt: skip

    def aria_sort(self, column: str) -> str:
        if self.sort != column:
            return "none"
        return "descending" if self.order == "desc" else "ascending"


@dataclass(frozen=True)
class AdapterList:
    items: list[tuple[AdapterRecord, float | None]]  # score: only for a semantic search
    total: int | None
    offset: int
    next_offset: int | None
    prev_offset: int | None
    base_models: list[str]
    provenances: tuple[str, ...] = PROVENANCES
    oracles: dict[int, Oracle] = field(default_factory=dict)  # adapter id -> its task's oracle


def adapter_list(reg: Registry, query: AdapterQuery, *, max_k: int) -> AdapterList:
    """Adapters by filter (paged) or, with ``q``, by meaning; the API's checks."""
    names = [b.name for b in reg.list_base_models()]
    base_model = query.base_model or None
    provenance = query.provenance or None
    if provenance is not None and provenance not in PROVENANCES:
        raise InvalidInput(f"provenance must be one of {', '.join(PROVENANCES)}")
    if query.q.strip():
        k = parse_int("number of results", query.k, 1, max_k)
        hits = reg.search(query.q, k=k, base_model=base_model)
        items: list[tuple[AdapterRecord, float | None]] = [
            (h.adapter, h.score)
            for h in hits
            if provenance is None or h.adapter.provenance == provenance
        ]
        shown = [a for a, _ in items]
        return AdapterList(items, None, 0, None, None, names, oracles=_oracles(reg, shown))
    offset = parse_int("offset", query.offset, 0, 2**31)
    if query.order not in ("asc", "desc"):
        raise InvalidInput(f"order must be asc or desc, got {query.order!r}")
    records = reg.list_adapters(
        base_model=base_model, provenance=provenance, limit=PAGE_SIZE + 1, offset=offset,
        sort=query.sort, descending=query.order == "desc",
    )  # fmt: skip
    total = reg.count_adapters(base_model=base_model, provenance=provenance)
    more = len(records) > PAGE_SIZE
    shown = records[:PAGE_SIZE]
    return AdapterList(
        [(r, None) for r in shown],
        total,
        offset,
        offset + PAGE_SIZE if more else None,
        max(0, offset - PAGE_SIZE) if offset > 0 else None,
        names,
        oracles=_oracles(reg, shown),
    )


def _oracles(reg: Registry, records: list[AdapterRecord]) -> dict[int, Oracle]:
    lookups = Oracles(reg)
    found = {r.id: lookups.beside(r) for r in records}
    return {i: o for i, o in found.items() if o is not None}


@dataclass(frozen=True)
class Lineage:
    adapter_id: int
    name: str | None  # None: the parent was deleted
    role: str
    weight: float | None
    deleted: bool = False  # the parent was deleted; ``name`` is what it was called


@dataclass(frozen=True)
class AdapterPage:
    adapter: AdapterRecord
    chart: NormChart
    neighbours: list[tuple[AdapterRecord, float]]
    parents: list[Lineage]
    generator: GeneratorRecord | None
    artifacts: list[str]
    config_json: str
    quality: list[Measured]  # what was measured of it, beside the bare model
    children: list[Child]  # the adapters built from this one
    derived_generators: list[GeneratorRecord]  # generators trained with it as an expert
    transfer_targets: list[str]  # base models to suggest for a transfer (it has seeds)
    oracle: Oracle | None  # the oracle of the task its accuracy was measured on


def adapter_page(reg: Registry, adapter_id: int) -> AdapterPage:
    rec = reg.get_adapter(adapter_id)
    hits = reg.search(rec.description, k=NEIGHBOURS + 1, base_model=rec.base_model)
    neighbours = [(h.adapter, h.score) for h in hits if h.adapter.id != rec.id][:NEIGHBOURS]
    parents = []
    for p in rec.parents:
        try:
            name: str | None = reg.get_adapter(p.adapter_id).name
        except NotFound:
            name = None
        parents.append(Lineage(p.adapter_id, name, p.role, p.weight))
    for gone in rec.meta.get("deleted_parents", []):
        parents.append(
            Lineage(gone["adapter_id"], gone["name"], gone["role"], gone["weight"], deleted=True)
        )
    generator = None
    gen_id = rec.meta.get("generator_id")
    if isinstance(gen_id, int):
        try:
            generator = reg.get_generator(gen_id)
        except NotFound:
            generator = None
    return AdapterPage(
        adapter=rec,
        chart=norm_chart(weight_norms(reg, adapter_id)),
        neighbours=neighbours,
        parents=parents,
        generator=generator,
        artifacts=reg.artifact_names(adapter_id),
        config_json=json.dumps(rec.config, indent=2, sort_keys=True),
        quality=measurements(rec),
        children=reg.children(adapter_id),
        derived_generators=reg.derived_generators(adapter_id),
        transfer_targets=transfer_targets(reg, rec),
        oracle=Oracles(reg).beside(rec),
    )


def transfer_targets(reg: Registry, rec: AdapterRecord) -> list[str]:
    """Base models an adapter could move to: none without seed examples, else every
    offline and registered one but its own."""
    if SEEDS not in reg.artifact_names(rec.id):
        return []
    names = set(OFFLINE_MODELS) | {b.name for b in reg.list_base_models()}
    return sorted(names - {rec.base_model})


@dataclass(frozen=True)
class JobList:
    jobs: list[JobRecord]
    state: str
    kind: str
    states: tuple[str, ...] = tuple(s.value for s in JobState)


def job_list(reg: Registry, state: str, kind: str) -> JobList:
    jobs = reg.list_jobs(state=state or None, kind=kind or None, limit=100)
    return JobList(jobs, state, kind)


def parse_int(what: str, raw: str, low: int, high: int) -> int:
    """A form field as an integer in [low, high], or InvalidInput naming the field."""
    try:
        value = int(raw.strip())
    except ValueError:
        raise InvalidInput(f"{what} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise InvalidInput(f"{what} must be between {low} and {high}, got {value}")
    return value


@dataclass(frozen=True)
class FormField:
    """One input of a form built from a config declaration."""

    name: str
    label: str
    help: str
    default: str  # as the input shows it; "" for an optional value
    choices: tuple[str, ...]  # a select when not empty
    inputmode: str  # "numeric", "decimal" or "" (text)
    advanced: bool


def generator_form() -> list[FormField]:
    """The generator-training form: one input per ``GeneratorConfig`` option."""
    from generator.fit.config import options

    out = []
    for f, opt in options():
        kind = str(f.type).replace(" | None", "")
        out.append(
            FormField(
                name=f.name,
                label=opt.label,
                help=opt.help,
                default="" if f.default is None else str(f.default),
                choices=opt.choices,
                inputmode={"int": "numeric", "float": "decimal"}.get(kind, ""),
                advanced=opt.advanced,
            )
        )
    return out


def generator_config_values(values: dict[str, str]) -> dict[str, Any]:
    """The typed config values of the submitted form (a blank field: its default);
    ``InvalidInput`` naming a field that does not parse. Bounds are the config's to check."""
    from generator.fit.config import options

    out: dict[str, Any] = {}
    for f, _ in options():
        raw = values.get(f.name, "").strip()
        if not raw:
            continue
        kind = str(f.type).replace(" | None", "")
        if kind == "int":
            try:
                out[f.name] = int(raw)
            except ValueError:
                raise InvalidInput(f"{f.name} must be a whole number, got {raw!r}") from None
        elif kind == "float":
            try:
                out[f.name] = float(raw)
            except ValueError:
                raise InvalidInput(f"{f.name} must be a number, got {raw!r}") from None
        else:
            out[f.name] = raw
    return out


def generator_roles(reg: Registry, gens: list[GeneratorRecord]) -> dict[int, str]:
    """Generator id -> "pinned" or "newest" for the generators that serve their
    (base model, method) now; the others are absent."""
    roles: dict[int, str] = {}
    for base_model, method in {(g.base_model, g.method) for g in gens}:
        pinned = reg.pinned_generator(base_model, method)
        serving = pinned or reg.latest_generator(base_model, method)
        if serving is not None:
            roles[serving.id] = "pinned" if pinned else "newest"
    return roles
