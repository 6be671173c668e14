"""The notebooks run top to bottom, and are committed with the outputs such a run gives.

Each notebook is executed by a fresh ``python3`` kernel (ipykernel's own spec, which runs this
interpreter: the one with stream_vae installed) in an empty temporary directory, on the CPU;
a cell that raises fails the test, and so does a committed notebook whose outputs are not what
the run gives (a plot missing, or one that is gone). ``python notebooks/execute.py`` refreshes
them. Each takes well under a minute here (2 cores), so they are marked ``slow``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = (
    "01_train_and_inspect.ipynb",
    "02_latent_space.ipynb",
    "03_calibration.ipynb",
    "04_drift_and_retraining.ipynb",
)


def test_every_notebook_is_listed() -> None:
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


def _shape(nb: nbformat.NotebookNode) -> list[tuple[int, frozenset[str]]]:
    """Per code cell, what it shows: stream text, and the mime types of rich outputs (how
    many stream chunks a cell prints depends on timing, so they are not counted)."""
    shape = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            kinds = {
                o["output_type"] for o in cell.get("outputs", []) if o["output_type"] == "stream"
            }
            kinds |= {m for o in cell.get("outputs", []) for m in o.get("data", {})}
            shape.append((i, frozenset(kinds)))
    return shape


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_executed_with_its_plots(name: str) -> None:
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{name} has no code cells"
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), (
        f"{name}: not executed top to bottom in one run: python notebooks/execute.py {name}"
    )
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o["output_type"] == "error"], f"{name}: an error output"
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name}: no plot"
    assert not any("execution" in c.metadata for c in code), f"{name}: cell timings recorded"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name: str, tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    # One more cell, so the test can check which interpreter the kernel ran.
    nb.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.prefix)"))
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    assert nb.cells[-1].outputs[0]["text"].strip() == sys.prefix
    assert not list(tmp_path.iterdir()), "the notebook wrote files in its working directory"
    nb.cells.pop()
    committed = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    assert _shape(nb) == _shape(committed), (
        f"{name}: the committed outputs are not what a run shows: python notebooks/execute.py"
    )
