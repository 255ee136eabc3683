"""Hypothesis strategies the property-based tests share: any JSON value, with the
strings a test cares about mixed into the leaves, and seeded settings (a failure
reproduces on every machine)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st


def json_values(interesting: Sequence[str], *, leaves: int = 12) -> st.SearchStrategy[Any]:
    """Nested JSON: null, booleans, huge integers, finite floats, short text and the
    ``interesting`` strings, in lists and objects up to ``leaves`` leaves."""
    scalars = (
        st.none() | st.booleans() | st.integers(-(2**70), 2**70)
        | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
        | st.sampled_from(list(interesting))
    )  # fmt: skip
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=leaves,
    )


def seeded(examples: int) -> settings:
    """Derandomised, no example database, no deadline: the same cases on every run."""
    return settings(
        derandomize=True, max_examples=examples, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )  # fmt: skip
