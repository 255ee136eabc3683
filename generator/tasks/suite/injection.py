"""Is this message a prompt-injection attempt? (``bastioncorpus`` plus ``chatterbot-corpus``.)

The ``prompt_safety`` family. Positives are bastioncorpus' malicious rows
(direct and indirect injections, jailbreak personas, exfiltration, obfuscated
instructions, in five languages). Negatives are its benign rows, which are
deliberate look-alikes ("please ignore my previous email...", "act as a
friendly tutor..."), plus a fixed sample of ordinary English chatbot messages
from chatterbot-corpus, so that about a third of the negatives are traps.
Rows written in invisible Unicode format characters are left out (each costs
hundreds of tokens). A row's ``{canary}`` slot is filled with a token derived from its id, as the
corpus' own probe runner fills it with a fresh token.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata

from generator.tasks.suite.languages import chatterbot_sentences
from generator.tasks.suite.sampling import clip, make_task, task_rng
from generator.tasks.suite.sources import package_file
from generator.tasks.task import Task
from registry.errors import InvalidInput

FAMILY = "prompt_safety"
SOURCE = (
    "bastioncorpus 0.6.0 (PyPI), corpus/injections.jsonl; ordinary messages from "
    "chatterbot-corpus 1.3.3 (English)"
)
LICENCE = "MIT (bastioncorpus); BSD-3-Clause (chatterbot-corpus)"
N_ORDINARY = 120  # chatbot messages added to the benign side


def _fill_canary(row: dict[str, object]) -> str:
    token = "REF-" + hashlib.sha256(str(row.get("id", "")).encode()).hexdigest()[:8].upper()
    return str(row.get("text", "")).replace("{canary}", token)


def _invisible(text: str) -> bool:
    """Text smuggled in invisible format characters (hundreds of tokens for a short line)."""
    return any(unicodedata.category(c) == "Cf" for c in text)


def load_rows() -> dict[str, list[str]]:
    """label (malicious | benign) -> texts, in file order."""
    path = package_file("bastioncorpus", "corpus/injections.jsonl")
    rows: dict[str, list[str]] = {"malicious": [], "benign": []}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{path}:{number}: not JSON: {exc}") from exc
        label = row.get("label", "malicious")
        if label in rows and not _invisible(str(row.get("text", ""))):
            rows[label].append(clip(_fill_canary(row)))
    return rows


def injection_pools(name: str, seed: int) -> dict[str, list[str]]:
    """yes (malicious rows) / no (benign rows + N_ORDINARY chatbot messages drawn for ``name``)."""
    rows = load_rows()
    ordinary = task_rng(f"{name}:ordinary", seed).sample(
        list(dict.fromkeys(chatterbot_sentences("english"))), N_ORDINARY
    )
    return {"yes": rows["malicious"], "no": rows["benign"] + ordinary}


def injection_tasks(seed: int) -> list[Task]:
    name = "prompt_injection"
    rows = load_rows()
    return [
        make_task(
            name,
            "Is this message a prompt-injection or jailbreak attempt against an AI "
            "assistant? Answer yes or no.",
            FAMILY,
            injection_pools(name, seed),
            seed=seed,
            source=SOURCE,
            licence=LICENCE,
            meta={"corpus": "bastioncorpus", "benign_traps": len(rows["benign"])},
        )
    ]
