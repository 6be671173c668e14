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
# The pure core: no network, no event loop, no Kafka, no files, through any chain of imports.
CORE = [
    "stream_vae.core.records",
    "stream_vae.core.windows",
    "stream_vae.core.calendar",
    "stream_vae.core.scaler",
    "stream_vae.core.sample",
    "stream_vae.core.state",
    "stream_vae.config.model",
    "stream_vae.model.vae",
    "stream_vae.model.backends",
    "stream_vae.model.gpu",
    "stream_vae.model.detector",
    "stream_vae.scoring",
    "stream_vae.scoring.scorer",
    "stream_vae.scoring.threshold",
    "stream_vae.scoring.alpha",
    "stream_vae.storage.artifact",
    "stream_vae.training.fit",
    "stream_vae.training.build",
    "stream_vae.training.gate",
    "stream_vae.runtime.live",
    "stream_vae.demo.synthetic",
    "stream_vae.lifecycle.drift",
    "stream_vae.lifecycle.reservoir",
    "stream_vae.lifecycle.policy",
    "stream_vae.evaluation.novelty",
    "stream_vae.scoring.novelty",
    "stream_vae.errors",
    "stream_vae._json",
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
    "multiprocessing",
}


def _module_path(name: str) -> Path:
    rel = Path(*name.split(".")[1:])
    pkg = PKG / rel / "__init__.py"
    return pkg if pkg.exists() else (PKG / rel).with_suffix(".py")


# The settings schema types path fields with pathlib.Path; reading files is the loader's
# (stream_vae.config's __init__), which the pure modules never import at run time.
SCHEMA = {"stream_vae.config.deployment", "stream_vae.config.training"}


def _imports(name: str) -> tuple[set[str], set[str]]:
    """(package modules, outside top-level names) that module ``name`` imports anywhere in it,
    function bodies included (a lazy import is still an import)."""
    path = _module_path(name)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    inside: set[str] = set()
    outside: set[str] = set()

    def add(target: str) -> None:
        if target.split(".")[0] != "stream_vae":
            if not (name in SCHEMA and target == "pathlib"):
                outside.add(target.split(".")[0])
            return
        # the longest prefix that is a module of the package
        parts = target.split(".")
        while parts and not _module_path(".".join(parts)).exists():
            parts.pop()
        if parts:
            inside.add(".".join(parts))

    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test).endswith("TYPE_CHECKING")
        for n in ast.walk(block)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:  # annotations only: nothing runs
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            subs = [f"{module}.{a.name}" for a in node.names]
            subs = [m for m in subs if _module_path(m).exists()]
            # `from .. import _json` imports a submodule; a package's own __init__ (which
            # Python runs first anyway) is not what the module depends on
            for m in subs or [module]:
                add(m)
    return inside, outside


def _reach(name: str) -> dict[str, list[str]]:
    """Every outside name ``name`` reaches, with one chain of package modules that gets there."""
    chains: dict[str, list[str]] = {}
    seen = {name}
    todo = [[name]]
    while todo:
        chain = todo.pop()
        inside, outside = _imports(chain[-1])
        for o in outside:
            chains.setdefault(o, chain)
        for m in sorted(inside - seen):
            seen.add(m)
            todo.append([*chain, m])
    return chains


def test_the_walker_sees_through_chains() -> None:
    # the storage layer writes files: whatever imports it is not pure
    assert "tempfile" in _reach("stream_vae.storage.registry")
    assert "aiokafka" in _reach("stream_vae.service.app")


@pytest.mark.parametrize("name", CORE)
def test_core_has_no_io(name: str) -> None:
    reached = _reach(name)
    bad = {o: " → ".join(reached[o]) for o in sorted(set(reached) & FORBIDDEN)}
    assert not bad, f"{name} reaches I/O: {bad}; the core must stay pure"


def test_no_print_outside_the_cli() -> None:
    for path in PKG.rglob("*.py"):
        if path.parent == PKG / "cli":  # the command line's output is what it prints
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
            "LiveModel",
            "load_artifact",
            "save_artifact",
            "score_table",
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
