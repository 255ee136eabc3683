"""The loramint error hierarchy.

Every failure a user can cause or fix is one of these; foreign exceptions
(safetensors, torch, SQLAlchemy, FAISS, zipfile) are translated at the boundary
where they occur with ``raise ... from exc``.

    LoramintError
    ├── InvalidInput            bad user input: nothing was changed       (HTTP 400/422)
    │   ├── InvalidAdapter      a PEFT adapter that fails validation
    │   ├── InvalidDescription  empty or oversized task description
    │   └── TooLarge            an upload over the configured size limit (HTTP 413)
    ├── NotFound                                                          (HTTP 404)
    │   ├── UnknownBaseModel    a base-model name that resolves to nothing
    │   ├── AdapterNotFound
    │   ├── GeneratorNotFound
    │   ├── JobNotFound
    │   └── KeyNotFound
    ├── Conflict                exists already, or changed under the caller (HTTP 409)
    ├── CorruptBlob             stored bytes no longer match their sha256 (HTTP 500: our fault)
    └── RegistryNotReady        database missing or behind its migrations (HTTP 503)
"""

from __future__ import annotations


class LoramintError(Exception):
    """Base class of every error loramint raises on purpose."""


class InvalidInput(LoramintError):
    """The caller's input is wrong; the message says what and how to fix it."""


class InvalidAdapter(InvalidInput):
    """A PEFT adapter that cannot be accepted (format, config, shapes, values)."""


class InvalidDescription(InvalidInput):
    """A task description that is empty or too long."""


class TooLarge(InvalidInput):
    """An upload or file over the configured size limit."""


class NotFound(LoramintError):
    """A named thing does not exist."""


class UnknownBaseModel(NotFound):
    """A base-model name that is neither a known offline model, a local folder,
    nor a Hugging Face id available in the local cache."""


class AdapterNotFound(NotFound):
    """No adapter with that id."""


class GeneratorNotFound(NotFound):
    """No generator checkpoint with that id."""


class JobNotFound(NotFound):
    """No job with that id."""


class KeyNotFound(NotFound):
    """No API key with that id."""


class Conflict(LoramintError):
    """The thing being created already exists, or the state changed under the caller
    (a job cancelled or re-claimed while a worker still thought it held it)."""


class CorruptBlob(LoramintError):
    """Stored bytes no longer match the sha256 they were stored under."""


class RegistryNotReady(LoramintError):
    """The database is missing tables or is behind the code's migrations."""
