"""Execute the notebooks in place, so that they are committed with their outputs (a code host
then shows the plots): ``python notebooks/execute.py [NAME.ipynb ...]``.

Each runs in a fresh ``python3`` kernel, in an empty temporary directory, on the CPU, as
``tests/test_notebooks.py`` runs them; that test checks the committed outputs have the shape a
fresh run gives.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def execute(path: Path) -> nbformat.NotebookNode:
    """The notebook at ``path``, executed top to bottom (raises on a failing cell)."""
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as cwd:
        client = NotebookClient(
            nb,
            timeout=300,
            kernel_name="python3",
            record_timing=False,  # no timestamps in the cells: a rerun changes only outputs
            resources={"metadata": {"path": cwd}},
        )
        client.execute()
    return nb


def main(names: list[str]) -> int:
    for path in [HERE / n for n in names] or sorted(HERE.glob("*.ipynb")):
        nb = execute(path)
        nbformat.write(nb, path)
        print(f"executed {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
