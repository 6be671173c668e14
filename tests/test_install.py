"""The CPU-first install (Makefile → deploy/install-torch.sh): PyTorch's CPU wheel index by
default, overridable, and a clean fallback to pip's own index where that one cannot serve.

pip is replaced by a stand-in that records its arguments, so both paths run in milliseconds
and without a network; the Makefile is checked with `make -n` (what it would run)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "install-torch.sh"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _fake_python(
    tmp_path: Path, *, reachable: bool = True, serves: bool = True
) -> tuple[Path, Path]:
    """A `python` whose `-m pip install …` appends its arguments to a log and fails when given
    an --index-url unless the index ``serves``; its `-c` reachability probe of the index
    succeeds if ``reachable``."""
    log = tmp_path / "pip.log"
    py = tmp_path / "python"
    fail = 'echo "ERROR: No matching distribution" >&2; exit 1'
    py.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "-c" ]; then {"exit 0" if reachable else "exit 1"}; fi\n'
        f'echo "$*" >> "{log}"\n'
        f'case "$*" in *--index-url*) {"exit 0" if serves else fail};; esac\n'
        "exit 0\n"
    )
    py.chmod(0o755)
    return py, log


def _install(py: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TORCH_")}
    return subprocess.run(
        ["sh", str(SCRIPT), str(py)],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_cpu_index_is_the_default(tmp_path: Path) -> None:
    py, log = _fake_python(tmp_path)
    done = _install(py)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert len(calls) == 1
    assert f"--index-url {CPU_INDEX} torch==2.13.0" in calls[0] and "-m pip install" in calls[0]
    assert done.stdout.strip() == f"install-torch: torch==2.13.0 from {CPU_INDEX}"


def test_an_index_that_cannot_serve_falls_back_to_pips_own(tmp_path: Path) -> None:
    py, log = _fake_python(tmp_path, serves=False)
    done = _install(py, TORCH_SPEC="torch==2.5.1", TORCH_INDEX="https://mirror.example/cu126")
    assert done.returncode == 0, done.stderr
    first, second = log.read_text().splitlines()
    assert "--index-url https://mirror.example/cu126 torch==2.5.1" in first
    assert "--index-url" not in second and second.endswith("install -q torch==2.5.1")
    assert "could not serve torch==2.5.1; using pip's configured index" in done.stderr


def test_an_unreachable_index_is_not_tried(tmp_path: Path) -> None:
    """pip retries an unreachable index for minutes: the probe sends it to its own at once."""
    py, log = _fake_python(tmp_path, reachable=False)
    done = _install(py)
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines() == ["-m pip install -q torch==2.13.0"]
    assert f"{CPU_INDEX} is not reachable; using pip's configured index" in done.stderr


def test_an_empty_index_uses_pips_own_and_a_failure_is_a_failure(tmp_path: Path) -> None:
    py, log = _fake_python(tmp_path)
    done = _install(py, TORCH_INDEX="")
    assert done.returncode == 0 and log.read_text().splitlines() == [
        "-m pip install -q torch==2.13.0"
    ]
    broken = tmp_path / "broken"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    assert _install(broken).returncode != 0  # neither index: make stops there


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize(
    ("args", "spec", "index"),
    [
        ([], "torch==2.13.0", CPU_INDEX),
        (["TORCH_INDEX=", "TORCH_SPEC=torch>=2.4"], "torch>=2.4", ""),
    ],
)
def test_the_makefile_hands_its_settings_to_the_script(
    tmp_path: Path, args: list[str], spec: str, index: str
) -> None:
    done = subprocess.run(
        [
            "make",
            "-n",
            "-C",
            str(ROOT),
            f"VENV={tmp_path / 'venv'}",
            *args,
            f"{tmp_path}/venv/.installed",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if "install-torch.sh" in x)
    assert f"TORCH_SPEC='{spec}' TORCH_INDEX='{index}' sh deploy/install-torch.sh" in line
    lines = done.stdout.splitlines()
    # torch before the package: the package's `torch>=2.4` is then already met
    assert lines.index(line) < next(i for i, x in enumerate(lines) if '-e ".[dev]"' in x)
