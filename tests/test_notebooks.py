"""The notebooks run top to bottom and are committed without outputs.

Each notebook is executed by a fresh ``python3`` kernel (ipykernel's own spec, which runs this
interpreter: the one with stream_vae installed) in an empty temporary directory, on the CPU;
a cell that raises fails the test. Each takes well under a minute here (2 cores), so they are
marked ``slow``.
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


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stripped(name: str) -> None:
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{name} has no code cells"
    dirty = [i for i, c in enumerate(nb.cells) if c.get("outputs") or c.get("execution_count")]
    assert not dirty, f"{name}: cells {dirty} have outputs or execution counts; strip them"


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
