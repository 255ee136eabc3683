"""Generators: training, serving, adaptation and the zoo."""

import registry  # noqa: F401  (sets the OpenMP spin before torch loads)
