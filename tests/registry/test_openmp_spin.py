"""The OpenMP spin ``registry`` sets: before torch loads, whichever package comes first,
and never over an operator's own value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import registry

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import os, sys; import {package}; "
    "print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)"
)


def _run(code: str, **extra: str) -> list[str]:
    """What ``code`` prints in a fresh interpreter without our GOMP_SPINCOUNT (plus
    ``extra``), word by word."""
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"} | extra
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    return out.split()


def _probe(package: str, **extra: str) -> list[str]:
    return _run(PROBE.format(package=package), **extra)


@pytest.mark.parametrize("package", ["registry", "generator", "api"])
def test_each_package_sets_the_spin_before_torch_loads(package: str) -> None:
    assert _probe(package) == [registry.SPIN, "False"]


# the spin as it was when torch was first looked for, whoever imported it
WATCH = (
    "import os, sys\n"
    "class Watch:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' and not hasattr(self, 'seen'):\n"
    "            self.seen = os.environ.get('GOMP_SPINCOUNT')\n"
    "watch = Watch()\n"
    "sys.meta_path.insert(0, watch)\n"
    "import {package}\n"
    "print(watch.seen)"
)


@pytest.mark.parametrize("module", ["generator.serve.generator", "api.app"])
def test_torch_loads_with_the_spin_already_set(module: str) -> None:
    """Modules that import torch at their top: their package imported ``registry``
    before them."""
    assert _run(WATCH.format(package=module)) == [registry.SPIN]


def test_an_operators_own_spin_is_kept() -> None:
    assert _probe("api", GOMP_SPINCOUNT="300000") == ["300000", "False"]
