"""Structure rules from STYLE.md that a reviewer should not have to check by hand."""

from __future__ import annotations

import ast
import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import stream_vae

PKG = Path(stream_vae.__file__).parent
# The pure core: no network, no event loop, no Kafka, no files.
CORE = [
    "records",
    "windows",
    "model",
    "inference",
    "training",
    "scaler",
    "scoring",
    "synthetic",
    "drift",
    "reservoir",
    "policy",
    "errors",
    "_json",
]
FORBIDDEN = {
    "aiokafka",
    "asyncio",
    "socket",
    "kafka",
    "http",
    "urllib",
    "requests",
    "subprocess",
    "os",
    "shutil",
    "pathlib",
    "tempfile",
}


def _modules(name: str) -> list[Path]:
    p = PKG / name
    return sorted(p.rglob("*.py")) if p.is_dir() else [p.with_suffix(".py")]


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("name", CORE)
def test_core_has_no_io(name: str) -> None:
    for path in _modules(name):
        bad = _imports(path) & FORBIDDEN
        assert not bad, f"{path.name} imports {sorted(bad)}: the core must stay pure"


def test_no_print_outside_the_cli() -> None:
    allowed = {"cli.py", "commands.py"}
    for path in PKG.rglob("*.py"):
        if path.name in allowed:
            continue
        calls = [
            n
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print"
        ]
        assert not calls, f"print() in {path.relative_to(PKG)}"


def test_no_environment_reads_outside_config() -> None:
    for path in PKG.rglob("*.py"):
        assert "os.environ" not in path.read_text() and "getenv" not in path.read_text(), path


def test_public_api_is_pinned() -> None:
    assert sorted(stream_vae.__all__) == sorted(
        [
            "COLLAPSE_NATS",
            "Alert",
            "Artifact",
            "CleanReservoir",
            "DriftEvent",
            "DriftMonitor",
            "Fleet",
            "Registry",
            "RegistryError",
            "RetrainPolicy",
            "fit",
            "generate_fleet",
            "retrain",
            "roc_auc",
            "ArtifactError",
            "ConfigError",
            "DataError",
            "Detector",
            "LSTMVAE",
            "Pipeline",
            "ReadyWindows",
            "Record",
            "RecordBatch",
            "RecordError",
            "Scorer",
            "Settings",
            "StreamVAEError",
            "VAEConfig",
            "WindowStore",
            "__version__",
            "decode",
            "encode",
            "load_settings",
            "train_artifact",
        ]
    )
    for name in stream_vae.__all__:
        assert hasattr(stream_vae, name)


def _all_modules() -> list[str]:
    return [
        m.name
        for m in pkgutil.walk_packages([str(PKG)], "stream_vae.")
        if not m.name.endswith("__main__")
    ]


@pytest.mark.parametrize("module", _all_modules())
def test_docstring_examples_run(module: str) -> None:
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
