"""Input checks shared by the adapter and generator halves of the registry."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from registry.errors import InvalidInput

NAME_RE = re.compile(r"^[\w][\w.\-]{0,199}$")


def check_name(what: str, name: object) -> None:
    """Refuse ``name`` (of an adapter, a generator) unless it is a simple name (a string)."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidInput(f"{what} name {name!r} must be 1-200 letters, digits, '_', '-' or '.'")


def slug(text: str, limit: int) -> str:
    """``text`` as a readable name part: lowercase words joined by '-', at most
    ``limit`` characters ('adapter' when nothing is left)."""
    out = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")
    return out or "adapter"


# words that every task description shares ("Does the text mention ...? Answer yes or
# no."): a name made of what is left tells two adapters apart
# fmt: off
FILLER = frozenset((
    "a", "an", "the", "this", "that", "these", "those", "is", "are", "was", "be", "does", "do",
    "did", "it", "its", "of", "to", "in", "on", "at", "by", "for", "with", "from", "about",
    "as", "or", "and", "not", "no", "yes", "answer", "text", "sentence", "passage", "question",
    "whether", "if", "decide", "tell", "say", "mention", "mentions", "describe", "describes",
    "description", "dictionary", "definition", "kind", "sort", "type", "which", "what", "who",
    "classify", "label", "given", "following", "please", "one",
))
# fmt: on


def keyword_slug(text: str, limit: int) -> str:
    """A slug of ``text``'s distinguishing words (``FILLER`` dropped): "Does this
    dictionary definition describe a plant? Answer yes or no." gives "plant"; the plain
    slug when no word is left."""
    words = [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in FILLER]
    return slug(" ".join(words), limit) if words else slug(text, limit)


def check_json(what: str, value: dict[str, Any] | None) -> None:
    """JSON columns must hold what every backend stores alike: no NaN, no objects."""
    if value is None:
        return
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} must be JSON-serialisable with finite numbers: {exc}") from exc


def default_adapter_name(description: str, key: str) -> str:
    """A readable slug of the description plus a digest of description and weights,
    so two adapters differing in either get different names."""
    digest = hashlib.sha256(f"{description}\0{key}".encode()).hexdigest()[:8]
    return f"{keyword_slug(description, 48)}-{digest}"
