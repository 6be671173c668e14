"""The model registry: publish with lineage, atomic promote, rollback as a stack, the CLI."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from stream_vae.cli.main import main
from stream_vae.errors import RegistryError, StreamVAEError
from stream_vae.runtime.live import DetectorOptions, build_detector
from stream_vae.storage import registry as registry_module
from stream_vae.storage.artifact import Artifact
from stream_vae.storage.files import save_artifact
from stream_vae.storage.registry import Lineage, Registry

from .conftest import TinyModel

CPU = DetectorOptions(device="cpu")


def _variant(art: Artifact, i: int) -> Artifact:
    """A different model (other weights, so another content version) derived from ``art``."""
    if i == 0:
        return art
    g = torch.Generator().manual_seed(i)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in art.state_dict.items()}
    return replace(
        art, state_dict=state, parent=art.version, created_at=art.created_at + i, version=""
    )


@pytest.fixture(scope="module")
def arts(tiny: TinyModel) -> list[Artifact]:
    out = [_variant(tiny.artifact, i) for i in range(3)]
    assert len({a.version for a in out}) == 3
    return out


@pytest.fixture(scope="module")
def windows(tiny: TinyModel) -> np.ndarray:
    return np.random.default_rng(3).normal(size=(40, *tiny.window_shape)).astype(np.float32)


def _names(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _no_temporaries(root: Path) -> None:
    left = [n for n in _names(root) if n.endswith(".tmp") or Path(n).name.startswith(".")]
    assert not left, left


def test_public_names() -> None:
    assert registry_module.__all__ == ["Lineage", "Registry", "Trigger", "VersionInfo"]


def test_publish_load_round_trip_with_lineage(tmp_path: Path, arts: list[Artifact]) -> None:
    reg = Registry(tmp_path / "reg")
    assert not (tmp_path / "reg").exists()  # no I/O in __init__
    gate = {"passed": True, "val_recon": 0.0123, "old_val_recon": 0.02}
    v = reg.publish(
        arts[1], trigger="drift", data_from_ts=1.0e9, data_to_ts=1.1e9, n_windows=777, gate=gate
    )
    assert v == arts[1].version
    assert reg.current() is None  # publish does not promote
    assert reg.lineage(v) == Lineage(
        v, arts[0].version, "drift", 1.0e9, 1.1e9, 777, gate, arts[1].created_at
    )
    assert sorted(p.name for p in reg.path(v).iterdir()) == [
        "lineage.json",
        "manifest.json",
        "weights.pt",
    ]
    back = reg.load(v)
    assert back.version == v and back.parent == arts[0].version
    for k, t in arts[1].state_dict.items():
        assert torch.equal(back.state_dict[k], t)
    with pytest.raises(RegistryError, match="no version has been promoted"):
        reg.load()
    _no_temporaries(tmp_path / "reg")


def test_publish_is_idempotent(tmp_path: Path, arts: list[Artifact]) -> None:
    reg = Registry(tmp_path)
    reg.publish(arts[0], trigger="initial", n_windows=1)
    before = (reg.path(arts[0].version) / "lineage.json").read_bytes()
    assert reg.publish(arts[0], trigger="manual", n_windows=2) == arts[0].version
    assert (reg.path(arts[0].version) / "lineage.json").read_bytes() == before  # kept as is
    assert [i.version for i in reg.versions()] == [arts[0].version]
    _no_temporaries(tmp_path)


def test_concurrent_publishers_of_one_version(tmp_path: Path, arts: list[Artifact]) -> None:
    reg = Registry(tmp_path)
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            Registry(tmp_path).publish(arts[2])
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=publish) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert [i.version for i in reg.versions()] == [arts[2].version]
    assert reg.load(arts[2].version).version == arts[2].version
    _no_temporaries(tmp_path)


def test_promote_rollback_is_a_stack(
    tmp_path: Path, arts: list[Artifact], windows: np.ndarray
) -> None:
    reg = Registry(tmp_path)
    a, b, c = (reg.publish(x) for x in arts)
    reference = build_detector(arts[0], CPU).infer(windows)
    reg.promote(a, reason="first")
    reg.promote(b)
    reg.promote(b)  # already current: no history line
    reg.promote(c)
    assert reg.current() == c
    assert [i.version for i in reg.versions() if i.is_current] == [c]
    assert reg.rollback(reason="bad alerts") == b and reg.current() == b
    assert reg.rollback() == a and reg.current() == a  # a second rollback goes one further
    restored = build_detector(reg.load(), CPU).infer(windows)
    np.testing.assert_array_equal(restored.recon_features, reference.recon_features)
    np.testing.assert_array_equal(restored.latent, reference.latent)
    with pytest.raises(RegistryError, match=f"nothing to roll back to .*{a} is the first"):
        reg.rollback()
    assert reg.current() == a
    reg.promote(c)
    assert reg.rollback() == a  # popped promotions are gone from the stack
    assert [(h["action"], h["version"], h["from"]) for h in reg.history()] == [
        ("promote", a, None),
        ("promote", b, a),
        ("promote", c, b),
        ("rollback", b, c),
        ("rollback", a, b),
        ("promote", c, a),
        ("rollback", a, c),
    ]
    assert reg.history()[0]["reason"] == "first" and reg.history()[0]["actor"]
    _no_temporaries(tmp_path)


def test_promote_unknown_or_broken_version_leaves_current(
    tmp_path: Path, arts: list[Artifact]
) -> None:
    reg = Registry(tmp_path)
    a, b = reg.publish(arts[0]), reg.publish(arts[1])
    reg.promote(a)
    pointer = (tmp_path / "CURRENT").read_bytes()
    with pytest.raises(RegistryError, match="unknown version 'v-000000000000'"):
        reg.promote("v-000000000000")
    with pytest.raises(RegistryError, match="not a version id"):
        reg.promote("../etc")
    (reg.path(b) / "weights.pt").write_bytes(b"garbage")
    with pytest.raises(RegistryError, match=f"version {b} does not load"):
        reg.promote(b)
    assert (tmp_path / "CURRENT").read_bytes() == pointer and reg.current() == a
    assert len(reg.history()) == 1


def test_rollback_on_an_empty_registry(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no version was promoted"):
        Registry(tmp_path / "nowhere").rollback()
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(RegistryError, match="no version was promoted"):
        Registry(tmp_path).rollback()


def test_torn_history_line_is_dropped(tmp_path: Path, arts: list[Artifact]) -> None:
    reg = Registry(tmp_path)
    a, b = reg.publish(arts[0]), reg.publish(arts[1])
    reg.promote(a)
    with (tmp_path / "history.jsonl").open("ab") as fh:
        fh.write(b'{"action": "promote", "vers')  # a crash in the middle of an append
    assert [h["version"] for h in reg.history()] == [a]
    reg.promote(b)
    assert [h["version"] for h in reg.history()] == [a, b]
    assert reg.rollback() == a


class _CrashError(Exception):
    """The process dying at that point."""


def _crash(*args: object) -> None:
    raise _CrashError


@pytest.mark.parametrize("crashing", ["promote", "rollback"])
def test_a_crash_before_the_switch_does_not_make_the_next_rollback_a_no_op(
    tmp_path: Path, arts: list[Artifact], monkeypatch: pytest.MonkeyPatch, crashing: str
) -> None:
    """Issue "Reliability": after a crash between the history line and the CURRENT switch, the
    next rollback replayed the unswitched line and left the served version as it was."""
    reg = Registry(tmp_path)
    a, b, c = (reg.publish(x) for x in arts)
    reg.promote(a)
    reg.promote(b)
    if crashing == "rollback":
        reg.promote(c)
    served, back_to = (b, a) if crashing == "promote" else (c, b)
    n_before = len(reg.history())
    with monkeypatch.context() as m:
        m.setattr(Registry, "_write_current", _crash)  # dies right after the history line
        with pytest.raises(_CrashError):
            reg.promote(c) if crashing == "promote" else reg.rollback()
    assert reg.current() == served
    assert reg.rollback(reason="after the crash") == back_to and reg.current() == back_to
    later = reg.history()[n_before + 1 :]  # the recovery, then the rollback asked for
    assert [(h["action"], h["version"], h["from"]) for h in later][-1] == (
        "rollback",
        back_to,
        served,
    )
    assert [h["reason"].startswith("recovered:") for h in later] == [True, False]
    assert _stack_of(reg) == ([a, b] if crashing == "rollback" else [a])


def _stack_of(reg: Registry) -> list[str]:
    return registry_module._stack(reg.history())


def test_a_pointer_set_outside_the_registry_is_recorded_before_a_rollback(
    tmp_path: Path, arts: list[Artifact]
) -> None:
    reg = Registry(tmp_path)
    a, b, c = (reg.publish(x) for x in arts)
    reg.promote(a)
    reg.promote(b)
    (tmp_path / "CURRENT").write_text(c + "\n")  # by hand
    assert reg.rollback() == b and reg.current() == b
    assert [(h["action"], h["version"]) for h in reg.history()][-2:] == [
        ("promote", c),
        ("rollback", b),
    ]


@pytest.mark.parametrize(
    ("name", "content", "action", "fragment"),
    [
        ("lineage", b"[1, 2]", "list", "a JSON object expected, got list"),
        ("lineage", b'"v-1"', "list", "a JSON object expected, got str"),
        ("lineage", b'{"version": 5}', "list", "version is 5"),
        ("lineage", b'{"version": "{v}", "gate": [1]}', "list", "gate is [1]"),
        ("lineage", b'{"version": "{v}", "created_at": "soon"}', "list", "created_at is 'soon'"),
        ("lineage", b'{"version": "{v}", "n_windows": 1.5}', "list", "n_windows is 1.5"),
        ("lineage", b'{"version": "v-000000000000"}', "list", "names version 'v-000000000000'"),
        ("lineage", b"{not json", "list", "unexpected character"),
        ("history", b"[1]\n", "rollback", "line 1 of {f}: a JSON object expected, got list"),
        ("history", b'{"action": "promote"}\n', "rollback", "line 1 of {f}: version None is"),
        ("history", b'{"action": "promote", "version": 7}\n', "promote", "version 7 is not"),
        ("history", b'{"action": "demote", "version": "{v}"}\n', "rollback", "action 'demote'"),
        ("history", b"\xff\xfe\n", "promote", "line 1 of {f}: "),
        ("current", b"\xff\n", "list", "corrupt {f}: not a version id"),
        ("current", b"../../etc\n", "rollback", "corrupt {f}: '../../etc' is not a version id"),
    ],
)
def test_a_tampered_registry_file_is_one_error_line(
    name: str,
    content: bytes,
    action: str,
    fragment: str,
    tmp_path: Path,
    arts: list[Artifact],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue "Reliability": tampered lineage.json or history.jsonl gave Python tracebacks."""
    reg = Registry(tmp_path)
    v = reg.publish(arts[0])
    reg.promote(v)
    path = {
        "lineage": reg.path(v) / "lineage.json",
        "history": tmp_path / "history.jsonl",
        "current": tmp_path / "CURRENT",
    }[name]
    path.write_bytes(content.replace(b"{v}", v.encode()))
    argv = {"list": ["list"], "rollback": ["rollback"], "promote": ["promote", v]}[action]
    assert main(["registry", *argv, "--registry", str(tmp_path)]) == 66
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("error: ")
    assert str(path) in err and fragment.format(f=path) in err, err


def test_a_poller_never_sees_half_written_state(tmp_path: Path, arts: list[Artifact]) -> None:
    """While versions are published and flipped, a reader sees only whole versions and ids."""
    reg = Registry(tmp_path)
    versions = [reg.publish(x) for x in arts[:2]]
    reg.promote(versions[0])
    seen: set[str | None] = set()
    problems: list[str] = []
    stop = threading.Event()
    files = ["lineage.json", "manifest.json", "weights.pt"]

    def poll() -> None:
        reader = Registry(tmp_path)
        while not stop.is_set():
            seen.add(v := reader.current())
            if v not in versions:
                problems.append(f"current() = {v!r}")
            for d in (tmp_path / "versions").iterdir():
                listed = not d.name.startswith(".")
                if listed and sorted(f.name for f in d.iterdir()) != files:
                    problems.append(f"{d.name} listed without all its files")

    t = threading.Thread(target=poll)
    t.start()
    try:
        reg.publish(arts[2])
        for i in range(30):
            reg.promote(versions[(i + 1) % 2])
    finally:
        stop.set()
        t.join(timeout=10)
    assert not problems, problems[:5]
    assert seen <= set(versions) and seen
    _no_temporaries(tmp_path)


def test_cli(
    tmp_path: Path, tiny: TinyModel, arts: list[Artifact], capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "reg"
    other = tmp_path / "other"
    save_artifact(arts[1], other)

    def run(*argv: str) -> tuple[int, str, str]:
        rc = main(["registry", *argv])
        out, err = capsys.readouterr()
        return rc, out, err

    assert run("list", "--registry", str(root)) == (0, f"no versions in {root}\n", "")
    rc, out, _ = run("--registry", str(root), "add", str(tiny.model_dir), "--promote")
    assert rc == 0 and f"published {arts[0].version}" in out and "promoted" in out
    assert run("add", str(other), "--registry", str(root))[0] == 0
    rc, out, _ = run("list", "--registry", str(root))
    lines = out.splitlines()
    assert rc == 0 and len(lines) == 2
    assert lines[0].startswith(f"* {arts[0].version}") and "trigger initial" in lines[0]
    assert lines[1].startswith(f"  {arts[1].version}") and f"parent {arts[0].version}" in out
    rc, out, _ = run("promote", arts[1].version, "--reason", "test", "--registry", str(root))
    assert rc == 0 and out == f"promoted {arts[1].version} (was {arts[0].version})\n"
    rc, out, _ = run("rollback", "--registry", str(root))
    assert rc == 0 and out == f"rolled back {arts[1].version} -> {arts[0].version}\n"
    rc, out, err = run("rollback", "--registry", str(root))
    assert rc == 66 and out == "" and err.startswith("error: nothing to roll back to")
    rc, _, err = run("promote", "v-000000000000", "--registry", str(root))
    assert rc == 66 and "unknown version" in err and len(err.splitlines()) == 1
    assert Registry(root).current() == arts[0].version


def test_cli_needs_a_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("STREAM_VAE_REGISTRY__ROOT", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray settings file is picked up
    assert main(["registry", "list"]) == 78
    assert "error: no registry: pass --registry DIR" in capsys.readouterr().err
    monkeypatch.setenv("STREAM_VAE_REGISTRY__ROOT", str(tmp_path / "reg"))
    assert main(["registry", "list"]) == 0
    assert capsys.readouterr().out == f"no versions in {tmp_path / 'reg'}\n"


def test_errors_share_the_base() -> None:
    assert issubclass(RegistryError, StreamVAEError)
