"""WordNet 3.0 part of speech: which word class does a definition or a usage belong to?

The ``wordnet_grammar`` family: tell noun from verb definitions, adjective from
adverb definitions, all four apart, and whether a word that can be either a
noun or a verb is used as a noun or as a verb in one of WordNet's own example
sentences (where the word occurs unchanged, so the sentence is the only clue).
"""

from __future__ import annotations

import re
from pathlib import Path

from generator.tasks.suite.sampling import Provenance, clip, make_task
from generator.tasks.suite.wordnet import (
    LICENCE,
    SOURCE,
    WORDNET_DIR,
    definitions_by_class,
    load_synsets,
)
from generator.tasks.task import Task

FAMILY = "wordnet_grammar"

CLASSES: dict[str, tuple[str, ...]] = {
    "noun": ("noun.",),
    "verb": ("verb.",),
    "adjective": ("adj.",),
    "adverb": ("adv.",),
}

_WORD = re.compile(r"[a-z]+")


def pos_definitions(root: Path, label: str) -> list[str]:
    """Clipped definitions of one part of speech (a key of CLASSES), in class order."""
    grouped = definitions_by_class(root)
    prefixes = CLASSES[label]
    return [d for name, defs in grouped.items() if name.startswith(prefixes) for d in defs]


def usage_examples(root: Path = WORDNET_DIR) -> dict[str, list[str]]:
    """'Word: w / Sentence: s' for words that are both nouns and verbs, by the use in s."""
    synsets = load_synsets(root)
    lemmas: dict[str, set[str]] = {"noun": set(), "verb": set()}
    for s in synsets:
        if s.pos in lemmas:
            lemmas[s.pos].update(w.lower() for w in s.words if _WORD.fullmatch(w.lower()))
    ambiguous = lemmas["noun"] & lemmas["verb"]
    pools: dict[str, list[str]] = {"noun": [], "verb": []}
    for s in synsets:
        if s.pos not in pools:
            continue
        for example in s.examples:
            tokens = set(_WORD.findall(example.lower()))
            for word in s.words:
                if word.lower() in ambiguous and word.lower() in tokens:
                    pools[s.pos].append(f"Word: {word.lower()}\nSentence: {clip(example)}")
                    break
    return pools


def grammar_tasks(seed: int, root: Path = WORDNET_DIR) -> list[Task]:
    common: Provenance = {"seed": seed, "source": SOURCE, "licence": LICENCE}
    noun, verb = pos_definitions(root, "noun"), pos_definitions(root, "verb")
    adjective, adverb = pos_definitions(root, "adjective"), pos_definitions(root, "adverb")
    return [
        make_task(
            "wordnet_pos_noun_verb",
            "Is this the dictionary definition of a noun or of a verb? Answer noun or verb.",
            FAMILY,
            {"noun": noun, "verb": verb},
            meta={"corpus": "wordnet", "input": "definition"},
            **common,
        ),
        make_task(
            "wordnet_pos_adj_adv",
            "Is this dictionary definition for an adjective or an adverb? "
            "Answer adjective or adverb.",
            FAMILY,
            {"adjective": adjective, "adverb": adverb},
            meta={"corpus": "wordnet", "input": "definition"},
            **common,
        ),
        make_task(
            "wordnet_pos4",
            "Which part of speech is this dictionary definition for? "
            "Answer noun, verb, adjective or adverb.",
            FAMILY,
            {"noun": noun, "verb": verb, "adjective": adjective, "adverb": adverb},
            meta={"corpus": "wordnet", "input": "definition"},
            **common,
        ),
        make_task(
            "wordnet_usage_noun_verb",
            "Is the given word used as a noun or as a verb in this sentence? Answer noun or verb.",
            FAMILY,
            usage_examples(root),
            meta={"corpus": "wordnet", "input": "word and example sentence"},
            **common,
        ),
    ]
