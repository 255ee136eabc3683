"""The REST service, the command line and the worker."""

import registry  # noqa: F401  (sets the OpenMP spin before torch loads)
