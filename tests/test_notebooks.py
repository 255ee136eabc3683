"""The notebooks under notebooks/ run top to bottom in a real Jupyter kernel
(nbclient) on the tiny sandbox world (``LORAMINT_NOTEBOOK_SMALL=1``), show what
they promise, leave ``$LORAMINT_HOME`` alone, and are committed without outputs."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbclient  # dev dependencies: a missing one fails the run, never skips it
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "loramint-test"
CELL_TIMEOUT_S = 300


def test_committed_notebooks_have_no_outputs() -> None:
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert {p.name for p in paths} >= {"quickstart.ipynb", "adapter_space.ipynb"}
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                assert cell.outputs == [], f"{path.name} cell {i} has outputs: strip them"
                assert cell.execution_count is None, f"{path.name} cell {i} was executed"
        assert nb.cells[0].cell_type == "markdown", f"{path.name} opens without an introduction"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment for the kernels: small mode, one sandbox world shared by both
    notebooks, and a kernelspec that runs this interpreter (not whatever 'python3'
    another Jupyter install on the machine points at)."""
    root = tmp_path_factory.mktemp("notebooks")
    spec = root / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "loramint tests",
                "language": "python",
            }
        )
    )
    env = {
        "JUPYTER_PATH": str(root / "jupyter"),
        "LORAMINT_NOTEBOOK_SMALL": "1",
        "LORAMINT_NOTEBOOK_WORLD": str(root / "world"),
        # small mode must never read or write the real registry: point it at a folder
        # that has to stay empty
        "LORAMINT_HOME": str(root / "untouched-home"),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    patch = pytest.MonkeyPatch()
    for key, value in env.items():
        patch.setenv(key, value)
    for key in ("LORAMINT_DATABASE_URL", "LORAMINT_MODEL_CACHE"):
        patch.delenv(key, raising=False)
    yield env
    patch.undo()


def run_notebook(name: str, cwd: Path) -> Any:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL,
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute()  # raises CellExecutionError (with the traceback) when a cell fails
    return nb


def outputs(nb: Any, kind: str) -> list[str]:
    """Every output of the executed notebook of one kind: 'stdout', 'text/markdown',
    'image/png' (base64), ..."""
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream" and out.name == kind:
                found.append(out.text)
            elif kind in out.get("data", {}):
                found.append(out.data[kind])
    return found


def test_quickstart_generates_downloads_loads_and_compares(
    kernel_env: dict[str, str], tmp_path: Path
) -> None:
    nb = run_notebook("quickstart.ipynb", tmp_path)
    text = "".join(outputs(nb, "stdout"))
    assert "mode: small sandbox" in text
    assert "201 adapter" in text and "/download" in text
    assert "same adapter as the Python API made: True" in text
    assert "['README.md', 'adapter_config.json', 'adapter_model.safetensors']" in text
    assert "PeftModelForCausalLM with" in text
    assert "accuracy on 12 test examples of moon: bare" in text
    [table] = outputs(nb, "text/markdown")
    assert table.startswith("| input | expected | bare | adapted |")
    assert len(table.splitlines()) == 2 + 6  # header, separator, six examples
    assert not Path(kernel_env["LORAMINT_HOME"]).exists()


def test_adapter_space_maps_neighbours_and_quality(
    kernel_env: dict[str, str], tmp_path: Path
) -> None:
    nb = run_notebook("adapter_space.ipynb", tmp_path)
    figures = outputs(nb, "image/png")
    assert len(figures) == 2  # the two maps, the quality plot
    assert all(base64.b64decode(f)[:8] == b"\x89PNG\r\n\x1a\n" for f in figures)
    neighbours, quality = outputs(nb, "text/markdown")
    assert "| by description (SG-LoRA's experts) |" in neighbours
    assert "| by weights (cosine of dW) |" in neighbours
    assert quality.startswith("| task | base | nearest |") and "| moon |" in quality
    assert "oracle" in quality and "| mean / oracle |" in quality
    results = Path(kernel_env["LORAMINT_NOTEBOOK_WORLD"]) / "home" / "results"
    [report] = results.glob("quality-*.json")
    assert json.loads(report.read_text())["tasks"][0]["task"] == "moon"
    assert not Path(kernel_env["LORAMINT_HOME"]).exists()
