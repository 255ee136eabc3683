"""Which language is this sentence in? (chatterbot-corpus dialogues, plus pyjokes' German jokes.)

The ``language_id`` family: pairs of languages written in the Latin alphabet,
some close (Spanish, Italian and Portuguese; Dutch and German), some not.
Inputs are the chatbot's and the user's utterances of at least 20 characters;
German, which has few of them, also gets pyjokes' German jokes.
"""

from __future__ import annotations

from functools import lru_cache

import yaml

from generator.tasks.suite.sampling import clip, make_task, squash
from generator.tasks.suite.sources import package_dir, package_file
from generator.tasks.task import Task
from registry.errors import InvalidInput, NotFound

FAMILY = "language_id"
SOURCE = "chatterbot-corpus 1.3.3 (PyPI), multilingual dialogue YAML files"
LICENCE = "BSD-3-Clause (chatterbot-corpus)"
PYJOKES_NOTE = "German jokes from pyjokes 0.8.3 (BSD-3-Clause)"
MIN_CHARS = 20

FOLDERS: dict[str, str] = {
    "Spanish": "spanish",
    "Portuguese": "portuguese",
    "Italian": "italian",
    "Dutch": "dutch",
    "German": "german",
    "English": "english",
    "Indonesian": "indonesian",
    "Turkish": "turkish",
}
PYJOKES_CODES: dict[str, str] = {"German": "de"}

PAIRS: tuple[tuple[str, str, str], ...] = (
    ("lang_spanish_portuguese", "Spanish", "Portuguese"),
    ("lang_italian_spanish", "Italian", "Spanish"),
    ("lang_italian_portuguese", "Italian", "Portuguese"),
    ("lang_dutch_german", "Dutch", "German"),
    ("lang_dutch_english", "Dutch", "English"),
    ("lang_indonesian_turkish", "Indonesian", "Turkish"),
)

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _utterances(conversations: object) -> list[str]:
    if not isinstance(conversations, list):
        return []
    out: list[str] = []
    for conversation in conversations:
        items = conversation if isinstance(conversation, list) else [conversation]
        out += [squash(str(item)) for item in items if item is not None]
    return out


@lru_cache(maxsize=64)
def chatterbot_topics(folder: str) -> dict[str, tuple[str, ...]]:
    """Topic (file stem) -> utterances of one language folder, MIN_CHARS or longer.

    Files come in name order; each topic's utterances in file order.
    """
    root = package_file("chatterbot_corpus", f"data/{folder}")
    topics: dict[str, tuple[str, ...]] = {}
    for path in sorted(root.glob("*.yml")):
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
        except yaml.YAMLError as exc:
            raise InvalidInput(f"{path} is not valid YAML: {exc}") from exc
        found = _utterances(data.get("conversations")) if isinstance(data, dict) else []
        topics[path.stem] = tuple(clip(s) for s in found if len(s) >= MIN_CHARS)
    return topics


@lru_cache(maxsize=16)
def chatterbot_sentences(folder: str) -> tuple[str, ...]:
    """All utterances of one language folder (files in name order), MIN_CHARS or longer."""
    return tuple(s for texts in chatterbot_topics(folder).values() for s in texts)


def pyjokes_by_kind(code: str, kind: str) -> list[str]:
    """pyjokes' jokes of one language (``de``, ``en``...) and kind (``neutral`` or ``chuck``)."""
    folder = package_dir("pyjokes")
    try:
        from pyjokes.pyjokes import all_jokes
    except ImportError as exc:
        raise NotFound(f"cannot import pyjokes from {folder}: {exc}") from exc
    return [clip(j) for j in all_jokes.get(code, {}).get(kind, [])]


def pyjokes_sentences(code: str) -> list[str]:
    return [j for kind in ("neutral", "chuck") for j in pyjokes_by_kind(code, kind)]


def language_tasks(seed: int) -> list[Task]:
    def sentences(language: str) -> list[str]:
        found = list(chatterbot_sentences(FOLDERS[language]))
        if language in PYJOKES_CODES:
            found += pyjokes_sentences(PYJOKES_CODES[language])
        return found

    tasks: list[Task] = []
    for name, a, b in PAIRS:
        extra = [PYJOKES_NOTE for lang in (a, b) if lang in PYJOKES_CODES]
        tasks.append(
            make_task(
                name,
                f"Is this sentence written in {a} or in {b}? Answer {a} or {b}.",
                FAMILY,
                {a: sentences(a), b: sentences(b)},
                seed=seed,
                source="; ".join([SOURCE, *extra]),
                licence=LICENCE,
                meta={"corpus": "chatterbot", "languages": [a, b]},
            )
        )
    return tasks
