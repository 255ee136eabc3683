"""Fortune-cookie quotes by topic (Debian ``fortunes`` / ``fortunes-min``) and programmer jokes.

The ``fortune_topic`` family: is this quote about computers, politics, love...?
Each fortune file under /usr/share/games/fortunes is one topic. Only a fixed
list of topical, non-offensive files is read (the offensive collection is a
separate Debian package that is never installed or read; ``ethnic``,
``men-women``, ``drugs``, ``law`` and ``medicine`` are skipped too, and so
are the few quotes that joke about sexual violence). Attribution lines ("-- Author")
are removed so that the quote itself is the only clue. The negatives of a
topic are the other files of the list. ``joke_programming`` asks whether a
joke is about programming: positives are pyjokes' English jokes, negatives are
fortunes outside the computing topics.
"""

from __future__ import annotations

import re
from pathlib import Path

from generator.tasks.suite.sampling import CLIP_CHARS, make_task, squash
from generator.tasks.suite.sources import debian_file, package_dir
from generator.tasks.task import Task
from registry.errors import NotFound

FAMILY = "fortune_topic"
FORTUNE_DIR = Path("/usr/share/games/fortunes")
SOURCE = "Debian packages fortunes and fortunes-min 1:1.99.1 (/usr/share/games/fortunes/{files})"
LICENCE = "BSD (fortune-mod; collected quotations, see /usr/share/doc/fortunes/copyright)"
PYJOKES_SOURCE = "pyjokes 0.8.3 (PyPI), English jokes"
PYJOKES_LICENCE = "BSD-3-Clause (pyjokes; some jokes from Stack Overflow, CC BY-SA 3.0)"

# The topical files used; each task's negatives are the others.
POOL: tuple[str, ...] = (
    "art", "computers", "education", "food", "kids", "literature", "love", "pets",
    "politics", "science", "sports", "work",
)  # fmt: skip
# literature comes from fortunes-min, every other file from fortunes
PACKAGE_OF = {"literature": "fortunes-min"}

ONE_VS_REST: tuple[tuple[str, str, str], ...] = (
    ("fortune_computers", "computers",
     "Is this fortune-cookie quote about computers? Answer yes or no."),
    ("fortune_politics", "politics",
     "Is this fortune-cookie quote about politics or government? Answer yes or no."),
    ("fortune_science", "science",
     "Is this fortune-cookie quote about science or scientists? Answer yes or no."),
    ("fortune_work", "work",
     "Is this fortune-cookie quote about work or jobs? Answer yes or no."),
    ("fortune_food", "food",
     "Is this fortune-cookie quote about food or eating? Answer yes or no."),
    ("fortune_love", "love",
     "Is this fortune-cookie quote about love or romance? Answer yes or no."),
    ("fortune_kids", "kids",
     "Is this fortune-cookie quote about children or parenting? Answer yes or no."),
)  # fmt: skip

_SEPARATOR = re.compile(r"^%$", re.MULTILINE)
_ATTRIBUTION = re.compile(r"^\s*--\s*\S")
# jokes about sexual violence turn up in a few otherwise harmless files; leave them out
_UNWANTED = re.compile(r"\brap(e|ed|es|ing|ist|ists)\b", re.IGNORECASE)


def _quote(entry: str) -> str:
    lines: list[str] = []
    for line in entry.splitlines():
        if lines and _ATTRIBUTION.match(line):
            break
        lines.append(line)
    return squash(" ".join(lines))


def read_fortunes(topic: str, root: Path = FORTUNE_DIR) -> list[str]:
    """The quotes of one fortune file that fit an input (up to CLIP_CHARS), in file order."""
    path = debian_file(root / topic, PACKAGE_OF.get(topic, "fortunes"))
    text = path.read_bytes().decode("utf-8", errors="replace")
    quotes = (_quote(entry) for entry in _SEPARATOR.split(text))
    return [q for q in quotes if 20 <= len(q) <= CLIP_CHARS and not _UNWANTED.search(q)]


def programmer_jokes() -> list[str]:
    """pyjokes' English jokes (its 'neutral' and 'chuck' lists, all about programming)."""
    folder = package_dir("pyjokes")
    try:
        from pyjokes.jokes_en import jokes_en
    except ImportError as exc:
        raise NotFound(f"cannot import pyjokes from {folder}: {exc}") from exc
    jokes = [squash(j) for key in ("neutral", "chuck") for j in jokes_en[key]]
    return [j for j in jokes if len(j) <= CLIP_CHARS]


def fortune_tasks(seed: int, root: Path = FORTUNE_DIR) -> list[Task]:
    quotes = {topic: read_fortunes(topic, root) for topic in POOL}
    tasks = [
        make_task(
            name,
            description,
            FAMILY,
            {
                "yes": quotes[topic],
                "no": [q for other in POOL if other != topic for q in quotes[other]],
            },
            seed=seed,
            source=SOURCE.format(files=f"{topic} vs the rest of: {', '.join(POOL)}"),
            licence=LICENCE,
            meta={"corpus": "fortunes", "positive_class": topic},
        )
        for name, topic, description in ONE_VS_REST
    ]
    tasks.append(
        make_task(
            "joke_programming",
            "Is this joke about programming or programmers? Answer yes or no.",
            FAMILY,
            {
                "yes": programmer_jokes(),
                "no": [q for other in POOL if other != "computers" for q in quotes[other]],
            },
            seed=seed,
            source=f"{PYJOKES_SOURCE} vs {SOURCE.format(files='non-computing topics')}",
            licence=f"{PYJOKES_LICENCE}; {LICENCE}",
            meta={"corpus": "pyjokes+fortunes"},
        )
    )
    return tasks
