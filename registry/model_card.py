"""The model card every downloaded adapter carries (``README.md`` beside the PEFT files).

Hugging Face Hub style: YAML front matter a Hub page, ``huggingface_hub``'s
``ModelCard`` and a colleague's script can read (``base_model``,
``library_name: peft``, ``base_model_relation: adapter``, ``tags``, the
licence), then a body that says what the adapter does, how it was made
(trained, generated or transferred, from the registry's own record of it),
what it scored where that was measured, and how to load it. The card is
built from the registry when the adapter is downloaded or exported, never
stored: it always tells the current story (a parent deleted since is named
as such). PEFT ignores the file, so the folder still loads unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import yaml

from registry import base_models
from registry.errors import AdapterNotFound
from registry.records import AdapterRecord, BaseModelRecord

CARD_NAME = "README.md"
# the licence of data we cannot name: the Hub's convention for free-text licences
OTHER_LICENCE = "other"


@dataclass(frozen=True)
class CardFacts:
    """What the registry knows around one adapter, gathered for its card."""

    adapter: AdapterRecord
    base: BaseModelRecord | None
    hub_id: str | None  # the base model's Hugging Face id, when it has one
    parents: Mapping[int, AdapterRecord | None]  # None: the parent was deleted since


def render(facts: CardFacts) -> str:
    """The card's text: YAML front matter, then Markdown."""
    front = _front_matter(facts)
    sections = [
        f"# {facts.adapter.name}\n\n{facts.adapter.description}",
        "## How it was made\n\n" + "\n".join(_provenance_lines(facts)),
    ]
    evaluation = _evaluation_lines(facts.adapter)
    if evaluation:
        sections.append("## Evaluation\n\n" + "\n".join(evaluation))
    licences = licences_of(facts)
    if licences:
        sections.append("## Data licences\n\n" + "\n".join(f"- {text}" for text in licences))
    sections.append(_usage(facts))
    header = str(yaml.safe_dump(front, sort_keys=False, allow_unicode=True))
    return "---\n" + header + "---\n\n" + "\n\n".join(sections) + "\n"


class _Records(Protocol):
    """What ``card_of`` reads from the registry."""

    def get_adapter(self, adapter_id: int) -> AdapterRecord: ...

    def list_base_models(self) -> list[BaseModelRecord]: ...


def card_of(registry: _Records, adapter_id: int) -> str:
    """The card of a registered adapter: its record, its base model, and every adapter it
    names (lineage parents, the experts its generation recorded, a transfer's source),
    read now, so a parent deleted since is named as such."""
    rec = registry.get_adapter(adapter_id)
    base = next((b for b in registry.list_base_models() if b.name == rec.base_model), None)
    named = {p.adapter_id for p in rec.parents}
    source, recorded = rec.meta.get("source_adapter_id"), rec.meta.get("neighbours")
    if isinstance(source, int):
        named.add(source)
    for n in recorded if isinstance(recorded, list) else []:
        if isinstance(n, dict) and isinstance(n.get("adapter_id"), int):
            named.add(n["adapter_id"])
    parents: dict[int, AdapterRecord | None] = {}
    for pid in sorted(named):
        try:
            parents[pid] = registry.get_adapter(pid)
        except AdapterNotFound:
            parents[pid] = None
    hub = base_models.hub_id(base.name, base.source) if base is not None else None
    return render(CardFacts(rec, base, hub, parents))


def licences_of(facts: CardFacts) -> list[str]:
    """The licences of the data behind the adapter: its own task's, else its parents'."""
    own = facts.adapter.meta.get("licence")
    if isinstance(own, str) and own:
        return [own]
    found: list[str] = []
    for parent in facts.parents.values():
        text = parent.meta.get("licence") if parent is not None else None
        if isinstance(text, str) and text and text not in found:
            found.append(text)
    return found


def _front_matter(facts: CardFacts) -> dict[str, Any]:
    rec = facts.adapter
    front: dict[str, Any] = {}
    if facts.hub_id:
        front["base_model"] = facts.hub_id
    front |= {
        "library_name": "peft",
        "base_model_relation": "adapter",
        "pipeline_tag": "text-generation",
        "tags": ["lora", "peft", "loramint", rec.provenance],
        "license": OTHER_LICENCE,
        "loramint": {
            "adapter_id": rec.id,
            "base_model": rec.base_model,
            "provenance": rec.provenance,
            "rank": rec.rank,
            "alpha": rec.alpha,
            "target_modules": list(rec.target_modules),
            "sha256": rec.sha256,
            "created_at": rec.created_at.isoformat(),
        },
    }
    licences = licences_of(facts)
    if licences:
        front["license_name"] = "task data licences"
        front["data_licenses"] = licences
    return front


def _provenance_lines(facts: CardFacts) -> list[str]:
    rec, meta = facts.adapter, facts.adapter.meta
    base = f"`{rec.base_model}`" + (f" ({facts.hub_id})" if facts.hub_id else "")
    modules = ", ".join(f"`{m}`" for m in rec.target_modules)
    lines = [f"- Base model: {base}; LoRA rank {rec.rank}, alpha {rec.alpha:g}, on {modules}."]
    if rec.provenance == "trained":
        family = f" (family `{meta['family']}`)" if meta.get("family") else ""
        lines.append(
            f"- Trained by loramint's zoo trainer on the task `{meta.get('task')}`{family}."
        )
        if meta.get("source"):
            lines.append(f"- Data source: {meta['source']}.")
        config = meta.get("train_config")
        if isinstance(config, dict):
            shown = [f"{k} {config[k]}" for k in ("steps", "batch_size", "lr") if k in config]
            lines.append("- Training: " + ", ".join(shown) + ".")
    elif rec.provenance == "generated":
        examples = meta.get("examples")
        with_examples = f", with {examples} labelled examples" if examples else ""
        lines.append(
            f"- Generated by loramint's {meta.get('method')} generator {meta.get('generator_id')} "
            f"from the description, seed {meta.get('seed')}{with_examples}."
        )
        # the generation's own record of its experts outlives a deleted expert's lineage row
        recorded = meta.get("neighbours")
        experts = (
            [(n.get("adapter_id"), n.get("weight")) for n in recorded if isinstance(n, dict)]
            if isinstance(recorded, list)
            else [(p.adapter_id, p.weight) for p in rec.parents if p.role == "expert"]
        )
        if experts:
            lines.append("- Experts it was built from (weight in the mixture):")
            lines += [f"  - {_parent_name(facts, i)}: {_weight(w)}" for i, w in experts]
        fewshot = meta.get("fewshot")
        if isinstance(fewshot, dict) and fewshot.get("chosen"):
            lines.append(f"- The labelled examples chose the candidate `{fewshot['chosen']}`.")
    elif rec.provenance == "transferred":
        kept = rec.metrics.get("synthetic_kept")
        source = _parent_name(facts, meta.get("source_adapter_id"))
        lines.append(
            f"- Transferred with Trans-LoRA from {source} on `{meta.get('source_base_model')}`: "
            "distilled from the source model and adapter on synthetic inputs"
            + (f" ({kept} kept by the discriminator)" if kept is not None else "")
            + "."
        )
    else:
        lines.append("- Uploaded to the registry (imported); loramint did not train it.")
    return lines


@dataclass(frozen=True)
class Measured:
    """One measurement of an adapter's quality, beside the bare model's on the same data."""

    where: str
    adapter: float
    bare: float | None


def measurements(rec: AdapterRecord) -> list[Measured]:
    """What was measured of ``rec`` (the card and the admin UI's quality panel show it):
    its test-split accuracy, and a few-shot adaptation's cross-validated estimate."""
    metrics, out = rec.metrics, []
    accuracy, bare = metrics.get("accuracy"), metrics.get("base_accuracy")
    if isinstance(accuracy, int | float):
        n = metrics.get("eval_n")
        where = "the task's test split" + (f" ({n} examples)" if n else "")
        out.append(Measured(where, float(accuracy), _number(bare)))
    fewshot = rec.meta.get("fewshot")
    estimate = fewshot.get("estimate") if isinstance(fewshot, dict) else None
    adapter = estimate.get("adapter") if isinstance(estimate, dict) else None
    if (
        isinstance(fewshot, dict)
        and isinstance(estimate, dict)
        and isinstance(adapter, int | float)
    ):
        where = f"held-back examples ({fewshot.get('metric', 'accuracy')}, cross-validated)"
        out.append(Measured(where, float(adapter), _number(estimate.get("bare"))))
    return out


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _evaluation_lines(rec: AdapterRecord) -> list[str]:
    metrics = rec.metrics
    rows = [f"| {m.where} | {m.adapter:.3f} | {_score(m.bare)} |" for m in measurements(rec)]
    lines = []
    if rows:
        lines += ["| measured on | this adapter | bare model |", "|---|---:|---:|", *rows]
    other = {
        k: v
        for k, v in metrics.items()
        if k not in ("accuracy", "base_accuracy", "eval_n") and _plain(v)
    }
    if other:
        figures = ", ".join(f"{k} {json.dumps(v)}" for k, v in other.items())
        lines += ["", f"Other figures: {figures}."]
    return lines


def _score(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else ""


def _usage(facts: CardFacts) -> str:
    rec = facts.adapter
    model = facts.hub_id or rec.base_model
    return (
        "## Usage\n\n"
        "```python\n"
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM\n\n"
        f"base = AutoModelForCausalLM.from_pretrained({model!r})\n"
        f"model = PeftModel.from_pretrained(base, {rec.name!r})  # this folder\n"
        "```\n\n"
        "From a loramint server:\n\n"
        "```bash\n"
        f'curl -H "Authorization: Bearer $KEY" -o {rec.name}.zip \\\n'
        f"  http://127.0.0.1:8000/v1/adapters/{rec.id}/download\n"
        "```"
    )


def _parent_name(facts: CardFacts, adapter_id: Any) -> str:
    if not isinstance(adapter_id, int):
        return "an adapter"
    parent = facts.parents.get(adapter_id)
    if parent is None:
        return f"adapter {adapter_id} (deleted since)"
    return f"`{parent.name}` (adapter {adapter_id}: {parent.description})"


def _weight(weight: Any) -> str:
    return f"{weight:.3f}" if isinstance(weight, int | float) else "n/a"


def _plain(value: Any) -> bool:
    return isinstance(value, int | float | str | bool) or (
        isinstance(value, Sequence) and not isinstance(value, str) and len(value) <= 8
    )
