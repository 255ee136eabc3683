"""WordNet 3.0 (Debian ``wordnet-base``): is this definition about an animal, a plant, ...?

Every synset in ``/usr/share/wordnet/data.{noun,verb,adj,adv}`` carries its
lexicographer file (one of 45 coarse semantic classes such as ``noun.animal``
or ``verb.motion``), its words, and a gloss: a definition followed by quoted
example sentences. The ``wordnet_topic`` family asks one-vs-rest questions
about the class of a definition; negatives are drawn from all other classes of
the same part of speech (``noun.Tops``, the handful of root concepts, is left
out of both sides).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from generator.tasks.suite.sampling import clip, make_task
from generator.tasks.suite.sources import debian_file
from generator.tasks.task import Task

WORDNET_DIR = Path("/usr/share/wordnet")
SOURCE = "WordNet 3.0, Princeton University (Debian package wordnet-base, /usr/share/wordnet)"
LICENCE = (
    "WordNet 3.0 licence (Princeton; permissive, BSD-style; /usr/share/doc/wordnet-base/copyright)"
)
FAMILY = "wordnet_topic"

# lexnames(5WN): the lexicographer file number in each data line indexes this list.
LEXNAMES: tuple[str, ...] = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal",
    "noun.artifact", "noun.attribute", "noun.body", "noun.cognition",
    "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon",
    "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body",
    "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
    "adj.ppl",
)  # fmt: skip

POS_FILES: dict[str, str] = {
    "noun": "data.noun",
    "verb": "data.verb",
    "adj": "data.adj",
    "adv": "data.adv",
}

_QUOTED = re.compile(r'"([^"]*)"')
_MARKER = re.compile(r"\([a-z]+\)$")  # adjective position markers such as "(a)", "(ip)"


@dataclass(frozen=True)
class Synset:
    pos: str  # noun | verb | adj | adv
    lexname: str  # e.g. noun.animal
    words: tuple[str, ...]  # lemmas, underscores turned into spaces
    definition: str
    examples: tuple[str, ...]


def _parse_line(line: str, pos: str) -> Synset | None:
    if line.startswith("  ") or " | " not in line:
        return None  # licence header, or a synset without gloss
    head, gloss = line.split(" | ", 1)
    _offset, lex_file, _type, count, rest = head.split(" ", 4)
    n_words = int(count, 16)
    fields = rest.split(" ", 2 * n_words)  # word, lex_id pairs; pointers stay unsplit
    words = tuple(_MARKER.sub("", w).replace("_", " ") for w in fields[0 : 2 * n_words : 2])
    lexname = LEXNAMES[int(lex_file)]
    examples = tuple(e.strip() for e in _QUOTED.findall(gloss) if e.strip())
    definition = _QUOTED.sub("", gloss)
    definition = "; ".join(p.strip() for p in definition.split(";") if p.strip())
    return Synset(pos, lexname, words, definition.strip(" ;"), examples)


@lru_cache(maxsize=4)
def load_synsets(root: Path = WORDNET_DIR) -> tuple[Synset, ...]:
    """All synsets of the four data files, in file order."""
    synsets: list[Synset] = []
    for pos, filename in POS_FILES.items():
        path = debian_file(root / filename, "wordnet-base")
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                synset = _parse_line(line.rstrip("\n"), pos)
                if synset is not None and synset.definition:
                    synsets.append(synset)
    return tuple(synsets)


@lru_cache(maxsize=4)
def definitions_by_class(root: Path = WORDNET_DIR) -> dict[str, list[str]]:
    """Clipped definitions grouped by lexicographer class."""
    grouped: dict[str, list[str]] = {name: [] for name in LEXNAMES}
    for synset in load_synsets(root):
        grouped[synset.lexname].append(clip(synset.definition))
    return grouped


def definitions(root: Path, lexnames: set[str]) -> list[str]:
    grouped = definitions_by_class(root)
    return [d for name in sorted(lexnames) for d in grouped[name]]


# name, lexicographer class, description (the user's request, naming the labels)
TOPICS: tuple[tuple[str, str, str], ...] = (
    ("wordnet_animal", "noun.animal",
     "Does this dictionary definition describe an animal? Answer yes or no."),
    ("wordnet_plant", "noun.plant",
     "Does this dictionary definition describe a plant? Answer yes or no."),
    ("wordnet_food", "noun.food",
     "Does this dictionary definition describe a food or a drink? Answer yes or no."),
    ("wordnet_artifact", "noun.artifact",
     "Is this dictionary definition about a man-made object, such as a tool, building "
     "or vehicle? Answer yes or no."),
    ("wordnet_person", "noun.person",
     "Does this dictionary definition describe a kind of person? Answer yes or no."),
    ("wordnet_body", "noun.body",
     "Does this dictionary definition describe a part of the body? Answer yes or no."),
    ("wordnet_location", "noun.location",
     "Is this dictionary definition about a place or a location? Answer yes or no."),
    ("wordnet_feeling", "noun.feeling",
     "Does this dictionary definition describe a feeling or an emotion? Answer yes or no."),
    ("wordnet_communication", "noun.communication",
     "Is this dictionary definition about communication, such as speech, writing or "
     "signs? Answer yes or no."),
    ("wordnet_verb_motion", "verb.motion",
     "Does this verb definition describe moving or travelling? Answer yes or no."),
    ("wordnet_verb_consumption", "verb.consumption",
     "Does this verb definition describe eating, drinking or using something up? "
     "Answer yes or no."),
    ("wordnet_verb_emotion", "verb.emotion",
     "Does this verb definition describe feeling or causing an emotion? Answer yes or no."),
)  # fmt: skip


def topic_tasks(seed: int, root: Path = WORDNET_DIR) -> list[Task]:
    """One-vs-rest semantic class of a noun or verb definition (yes/no)."""
    tasks: list[Task] = []
    for name, lexname, description in TOPICS:
        pos = lexname.split(".")[0]
        others = {
            n for n in LEXNAMES if n.startswith(pos + ".") and n not in (lexname, "noun.Tops")
        }
        tasks.append(
            make_task(
                name,
                description,
                FAMILY,
                {
                    "yes": definitions(root, {lexname}),
                    "no": definitions(root, others),
                },
                seed=seed,
                source=SOURCE,
                licence=LICENCE,
                meta={"corpus": "wordnet", "positive_class": lexname},
            )
        )
    return tasks
