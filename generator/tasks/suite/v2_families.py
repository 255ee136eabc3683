"""Suite v2's families: the default suite's corpora regrouped into labelled classes.

A family is one or more groups of classes; a group is what its tasks choose
among (one-vs-rest of one class, two classes, three or more). Every class has
a label (the answer word), a phrase for the yes/no question about it, and its
texts, read by the default suite's own corpus readers. The groups' wording
(what an input is, what is asked of it) feeds the paraphrase templates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from generator.tasks.suite import bbc, drugs, fortunes, injection, languages, sitcoms, wordnet
from generator.tasks.suite.wordnet_grammar import pos_definitions

MIN_YES_NO = 90  # a class needs this many texts to be the "yes" side (MIN_TRAIN + MIN_TEST) / 2


@dataclass(frozen=True)
class LabelPool:
    label: str  # the answer, e.g. "animal"
    phrase: str  # what the yes/no question is about, e.g. "an animal"
    texts: tuple[str, ...]


@dataclass(frozen=True)
class Group:
    key: str  # prefix of its tasks' names
    subject: str  # what one input is: "dictionary definition"
    dimension: str  # what the multi-way question names: "topic", "speaker"
    relation: str  # the yes/no predicate with {x} for a class phrase: "about {x}"
    classes: tuple[LabelPool, ...]
    source: str
    licence: str


@dataclass(frozen=True)
class Family:
    name: str
    groups: Callable[[int], tuple[Group, ...]]  # seed -> groups (read lazily)


def _pools(
    texts: dict[str, list[str]] | dict[str, tuple[str, ...]], phrases: dict[str, tuple[str, str]]
) -> tuple[LabelPool, ...]:
    """Classes in ``phrases`` order: key of ``texts`` -> (label, phrase)."""
    return tuple(
        LabelPool(label, phrase, tuple(texts[key])) for key, (label, phrase) in phrases.items()
    )


NOUN_CLASSES: dict[str, tuple[str, str]] = {
    "noun.act": ("act", "an act or action"),
    "noun.animal": ("animal", "an animal"),
    "noun.artifact": ("artifact", "a man-made object"),
    "noun.attribute": ("attribute", "a quality or attribute"),
    "noun.body": ("body", "a part of the body"),
    "noun.cognition": ("cognition", "thinking or knowledge"),
    "noun.communication": ("communication", "communication"),
    "noun.event": ("event", "an event"),
    "noun.feeling": ("feeling", "a feeling or emotion"),
    "noun.food": ("food", "food or drink"),
    "noun.group": ("group", "a group or collection"),
    "noun.location": ("location", "a place"),
    "noun.object": ("natural object", "a natural object"),
    "noun.person": ("person", "a kind of person"),
    "noun.phenomenon": ("phenomenon", "a natural phenomenon"),
    "noun.plant": ("plant", "a plant"),
    "noun.possession": ("possession", "money or possessions"),
    "noun.process": ("process", "a natural process"),
    "noun.quantity": ("quantity", "a quantity or unit"),
    "noun.relation": ("relation", "a relation between things"),
    "noun.shape": ("shape", "a shape"),
    "noun.state": ("state", "a state or condition"),
    "noun.substance": ("substance", "a substance or material"),
    "noun.time": ("time", "time or a period of time"),
}
VERB_CLASSES: dict[str, tuple[str, str]] = {
    "verb.body": ("body", "the body or grooming"),
    "verb.change": ("change", "changing something"),
    "verb.cognition": ("thinking", "thinking or reasoning"),
    "verb.communication": ("communication", "communicating"),
    "verb.competition": ("competition", "competing or fighting"),
    "verb.consumption": ("consumption", "eating, drinking or using up"),
    "verb.contact": ("contact", "touching or hitting"),
    "verb.creation": ("creation", "making something"),
    "verb.emotion": ("emotion", "feeling an emotion"),
    "verb.motion": ("motion", "moving"),
    "verb.perception": ("perception", "seeing, hearing or sensing"),
    "verb.possession": ("possession", "owning or transferring things"),
    "verb.social": ("social", "social life or institutions"),
    "verb.stative": ("state", "being or staying in a state"),
}


def _wordnet(seed: int) -> tuple[Group, ...]:
    grouped = wordnet.definitions_by_class()
    source, licence = wordnet.SOURCE, wordnet.LICENCE
    nouns, verbs = _pools(grouped, NOUN_CLASSES), _pools(grouped, VERB_CLASSES)
    return (
        Group("wn_noun", "noun definition", "semantic class", "about {x}", nouns, source, licence),
        Group("wn_verb", "verb definition", "semantic class", "about {x}", verbs, source, licence),
    )


def _grammar(seed: int) -> tuple[Group, ...]:
    root = wordnet.WORDNET_DIR
    texts = {pos: pos_definitions(root, pos) for pos in ("noun", "verb", "adjective", "adverb")}
    phrases = {pos: (pos, f"a{'n' if pos[0] in 'aeiou' else ''} {pos}") for pos in texts}
    return (
        Group(
            "wn_pos", "dictionary definition", "part of speech", "the definition of {x}",
            _pools(texts, phrases), wordnet.SOURCE, wordnet.LICENCE,
        ),
    )  # fmt: skip


def _news(seed: int) -> tuple[Group, ...]:
    phrases = {
        "business": ("business", "business or the economy"),
        "entertainment": ("entertainment", "entertainment, such as film, music or TV"),
        "politics": ("politics", "politics"),
        "sport": ("sport", "sport"),
        "tech": ("tech", "technology"),
    }
    return (
        Group(
            "bbc", "news story", "topic", "about {x}", _pools(bbc.load_articles(), phrases),
            bbc.SOURCE, bbc.LICENCE,
        ),
    )  # fmt: skip


FORTUNE_CLASSES: dict[str, tuple[str, str]] = {
    "art": ("art", "art or artists"),
    "computers": ("computers", "computers"),
    "education": ("education", "school or education"),
    "food": ("food", "food or eating"),
    "kids": ("kids", "children or parenting"),
    "literature": ("literature", "books or writers"),
    "love": ("love", "love or romance"),
    "politics": ("politics", "politics or government"),
    "science": ("science", "science or scientists"),
    "sports": ("sports", "sports"),
    "work": ("work", "work or jobs"),
    "songs-poems": ("poetry", "songs or poems"),
    "startrek": ("Star Trek", "Star Trek"),
    "wisdom": ("wisdom", "wisdom or how to live"),
    "linux": ("Linux", "Linux or free software"),
}


def _fortunes(seed: int) -> tuple[Group, ...]:
    texts = {topic: fortunes.read_fortunes(topic) for topic in FORTUNE_CLASSES}
    source = fortunes.SOURCE.format(files=", ".join(FORTUNE_CLASSES))
    return (
        Group(
            "fortune", "fortune-cookie quote", "topic", "about {x}",
            _pools(texts, FORTUNE_CLASSES), source, fortunes.LICENCE,
        ),
    )  # fmt: skip


def _drugs(seed: int) -> tuple[Group, ...]:
    phrases = {
        "birth control": ("birth control", "birth control"),
        "mood": ("mood", "depression, anxiety or another mood disorder"),
        "pain": ("pain", "pain, such as migraine or arthritis"),
    }
    groups = drugs.condition_groups(drugs.load_reviews())
    return (
        Group(
            "drug", "medication review", "condition", "about treating {x}",
            _pools(groups, phrases), drugs.SOURCE, drugs.LICENCE,
        ),
    )  # fmt: skip


def _speakers(names: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    return {name: (name, name) for name in names}


def _simpsons(seed: int) -> tuple[Group, ...]:
    names = (
        "Homer",
        "Marge",
        "Bart",
        "Lisa",
        "Burns",
        "Skinner",
        "Moe",
        "Ned",
        "Wiggum",
        "Milhouse",
    )
    return (
        Group(
            "simpsons", "line from The Simpsons", "speaker", "spoken by {x}",
            _pools(sitcoms.simpsons_lines(), _speakers(names)),
            sitcoms.SIMPSONS_SOURCE, sitcoms.SIMPSONS_LICENCE,
        ),
    )  # fmt: skip


def _seinfeld(seed: int) -> tuple[Group, ...]:
    names = (
        "Jerry", "George", "Elaine", "Kramer", "Newman", "Frank", "Estelle", "Susan",
        "Peterman", "Morty",
    )  # fmt: skip
    return (
        Group(
            "seinfeld", "line from Seinfeld", "speaker", "spoken by {x}",
            _pools(sitcoms.seinfeld_lines()[0], _speakers(names)),
            sitcoms.SEINFELD_SOURCE, sitcoms.SEINFELD_LICENCE,
        ),
    )  # fmt: skip


LANGUAGES: tuple[str, ...] = (
    "Bengali", "Chinese", "Dutch", "English", "French", "German", "Indonesian", "Italian",
    "Japanese", "Korean", "Persian", "Portuguese", "Spanish", "Swedish", "Turkish", "Ukrainian",
)  # fmt: skip


def _languages(seed: int) -> tuple[Group, ...]:
    texts = {lang: languages.chatterbot_sentences(lang.lower()) for lang in LANGUAGES}
    return (
        Group(
            "lang", "sentence", "language", "written in {x}",
            _pools(texts, {lang: (lang, lang) for lang in LANGUAGES}),
            languages.SOURCE, languages.LICENCE,
        ),
    )  # fmt: skip


CHAT_TOPICS: dict[str, tuple[str, str]] = {
    "ai": ("AI", "artificial intelligence"),
    "coding": ("coding", "programming"),
    "conversations": ("small talk", "small talk"),
    "emotion": ("emotion", "emotions"),
    "psychology": ("psychology", "psychology"),
    "tech_support": ("tech support", "technical support"),
    "trivia": ("trivia", "trivia questions"),
}


def _chat(seed: int) -> tuple[Group, ...]:
    return (
        Group(
            "chat", "chatbot message", "topic", "about {x}",
            _pools(languages.chatterbot_topics("english"), CHAT_TOPICS),
            f"{languages.SOURCE} (English topic files)", languages.LICENCE,
        ),
    )  # fmt: skip


def _injection(seed: int) -> tuple[Group, ...]:
    pools = injection.injection_pools("v2_prompt_safety", seed)
    phrases = {
        "yes": ("injection", "a prompt-injection or jailbreak attempt"),
        "no": ("benign", "a harmless request"),
    }
    return (
        Group(
            "injection", "message to an AI assistant", "kind of message", "{x}",
            _pools(pools, phrases), injection.SOURCE, injection.LICENCE,
        ),
    )  # fmt: skip


JOKE_LANGUAGES: dict[str, tuple[str, str]] = {
    "en": ("English", "English"),
    "de": ("German", "German"),
    "it": ("Italian", "Italian"),
    "pl": ("Polish", "Polish"),
}


def _jokes(seed: int) -> tuple[Group, ...]:
    by_language = {code: languages.pyjokes_sentences(code) for code in JOKE_LANGUAGES}
    by_kind = {kind: languages.pyjokes_by_kind("en", kind) for kind in ("chuck", "neutral")}
    kinds = {"chuck": ("Chuck Norris", "Chuck Norris"), "neutral": ("programming", "programming")}
    source, licence = "pyjokes 0.8.3 (PyPI), jokes in several languages", "BSD-3-Clause (pyjokes)"
    in_language, of_kind = _pools(by_language, JOKE_LANGUAGES), _pools(by_kind, kinds)
    return (
        Group("joke_lang", "joke", "language", "written in {x}", in_language, source, licence),
        Group("joke_kind", "joke", "subject", "about {x}", of_kind, source, licence),
    )


NEW_FAMILY = "joke"  # the held-out family: no training task at all

FAMILIES: tuple[Family, ...] = (
    Family("wordnet_class", _wordnet),
    Family("wordnet_grammar", _grammar),
    Family("news_topic", _news),
    Family("fortune_topic", _fortunes),
    Family("drug_condition", _drugs),
    Family("simpsons_speaker", _simpsons),
    Family("seinfeld_speaker", _seinfeld),
    Family("language_id", _languages),
    Family("chat_topic", _chat),
    Family("prompt_safety", _injection),
    Family(NEW_FAMILY, _jokes),
)
