"""Suite v2's task descriptions: seven wordings of each task's request, from templates.

A task's first wording is its ``description``; the first six are the training
paraphrases a generator learns from; the seventh is the evaluation wording, a
template no training paraphrase of any task uses, so a generator is scored on
phrasing it never saw. Every wording names the labels the answer must be.
"""

from __future__ import annotations

from generator.tasks.suite.v2_families import Group, LabelPool
from registry.errors import InvalidInput

N_TRAIN_PARAPHRASES = 6

# {subject}: what one input is; {predicate}: the group's relation filled with the class phrase
YES_NO: tuple[str, ...] = (
    "Is this {subject} {predicate}? Answer yes or no.",
    "Answer yes or no: is the following {subject} {predicate}?",
    "Decide whether the {subject} below is {predicate}. Reply yes if it is and no if it is not.",
    "Here is a {subject}. Is it {predicate}? Say yes or no.",
    "Yes or no: the {subject} that follows is {predicate}.",
    "Read the {subject} and tell me whether it is {predicate} (yes or no).",
    "I need a classifier that says yes when a {subject} is {predicate} and no otherwise.",
)
# {dimension}: what is asked; {options}: "a or b" / "a, b or c"; {listed}: "a, b, c"
CHOICE: tuple[str, ...] = (
    "Which {dimension} fits this {subject}? Answer {options}.",
    "Classify the {subject} by its {dimension}: {options}.",
    "Read the following {subject} and give its {dimension}, one of: {listed}.",
    "What {dimension} does this {subject} belong to? Reply with {options}.",
    "Label each {subject} with the right {dimension} ({options}).",
    "Here is a {subject}. Choose its {dimension} from {listed}.",
    "Sort this {subject} into one {dimension}; the only answers are {options}.",
)


def _options(labels: list[str]) -> str:
    return " or ".join(labels) if len(labels) == 2 else f"{', '.join(labels[:-1])} or {labels[-1]}"


def wordings(group: Group, classes: tuple[LabelPool, ...], *, one_vs_rest: bool) -> list[str]:
    """Seven distinct wordings: six for training, the last for evaluation."""
    if one_vs_rest:
        if len(classes) != 1:
            raise InvalidInput(f"a yes/no task asks about one class, got {len(classes)}")
        predicate = group.relation.format(x=classes[0].phrase)
        texts = [t.format(subject=group.subject, predicate=predicate) for t in YES_NO]
    else:
        labels = [c.label for c in classes]
        texts = [
            t.format(
                subject=group.subject,
                dimension=group.dimension,
                options=_options(labels),
                listed=", ".join(labels),
            )
            for t in CHOICE
        ]
    if len(set(texts)) != len(texts):
        raise InvalidInput(f"group {group.key}: two paraphrase templates gave the same wording")
    return texts
