"""Versioned model registry: publish versions with their lineage, promote one, roll back.

Layout under ``root``::

    versions/<version>/  an artifact directory (weights.pt, manifest.json) plus lineage.json and,
                         when people's verdicts taught it, feedback.npz (their windows)
    CURRENT              the promoted version's id, one line
    history.jsonl        append-only log of promotions and rollbacks
    LOCK                 held (flock) by whoever writes CURRENT or history.jsonl

Publishing never changes what is served; promoting does. Every change a reader can observe is a
rename: a version is built under a dot-prefixed temporary name inside ``versions/`` and renamed
into place with all its files, and ``CURRENT`` is replaced (``os.replace``) by a sibling written
and fsynced in full. A poller of :meth:`Registry.current` (the service, every ``registry.poll_s``)
therefore sees the old id or the new one, never a torn one, and the directory it names is whole.

Rollback is defined by the history, replayed as a stack: a promotion pushes, a rollback pops, the
top is the current version; a second rollback goes one further back. ``CURRENT`` is what is
served, so it is the commit point: the history line is made durable first, then the pointer is
switched. After a crash between the two the log holds a step that never took effect; the next
promote or rollback first undoes it in the log (an entry whose reason starts ``recovered:``), so
it starts from the version that was actually served and a rollback really goes back.

Concurrency: any number of processes may publish; two publishers of the same (content-derived)
version race on the rename and the loser keeps the winner's copy. Promotions and rollbacks take an
exclusive ``flock`` on ``LOCK``, so the log and the pointer always agree: of two concurrent
promoters the last to take the lock wins, and ``history`` shows the order. Readers take no lock.

Storage: a local or mounted directory (a shared PVC; NFS only with working locks). fsspec URLs
such as ``s3://`` are not supported: object stores have neither an atomic directory rename nor
``flock``, so publishing and promoting would need another commit protocol (pointer object written
last, a lease instead of the lock), and :class:`~stream_vae.storage.artifact.Artifact` reads
local paths.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .. import _json
from ..errors import ArtifactError, RegistryError
from .artifact import Artifact
from .files import load_artifact, save_artifact

__all__ = ["Lineage", "Registry", "Trigger", "VersionInfo"]

log = logging.getLogger(__name__)

Trigger = Literal["initial", "drift", "schedule", "feedback", "manual"]
_VERSIONS, _CURRENT, _HISTORY, _LOCK = "versions", "CURRENT", "history.jsonl", "LOCK"
_LINEAGE = "lineage.json"
_FEEDBACK = "feedback.npz"  # windows of alerts marked as false positives or confirmed
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a plain directory name: no traversal


@dataclass(frozen=True, slots=True)
class Lineage:
    """Where a version came from and why it was let through.

    Examples
    --------
    >>> lin = Lineage("v-1a2b3c4d5e6f", parent="v-0f0e0d0c0b0a", trigger="drift",
    ...               data_from_ts=1.7e9, data_to_ts=1.7e9 + 86400, n_windows=5000,
    ...               gate={"passed": True, "val_recon": 0.01234}, created_at=1.7e9 + 90000)
    >>> Lineage.from_dict(lin.to_dict()) == lin
    True
    """

    version: str
    parent: str | None = None  # the version this one was warm-started from
    trigger: Trigger | str = "manual"  # what asked for it: initial, drift, schedule, manual
    data_from_ts: float | None = None  # training data range, epoch seconds
    data_to_ts: float | None = None
    n_windows: int | None = None  # training windows
    gate: dict[str, Any] = field(default_factory=dict)  # validation gate metrics and outcome
    created_at: float = 0.0  # epoch seconds
    # what people's verdicts on alerts gave it: false_positive_{alerts,windows} trained on,
    # confirmed_{alerts,windows} gated on (stream_vae.lifecycle.feedback); empty: none
    feedback: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    @classmethod
    def from_dict(cls, d: Any) -> Lineage:
        """Raises :class:`RegistryError` saying what is wrong (read from a file that may have
        been edited by hand)."""
        if not isinstance(d, Mapping):
            raise RegistryError(f"invalid lineage: a JSON object expected, got {type(d).__name__}")
        for key, kind in (
            ("version", str),
            ("parent", str | None),
            ("gate", Mapping | None),
            ("feedback", Mapping | None),
        ):
            if not isinstance(d.get(key), kind):
                raise RegistryError(f"invalid lineage: {key} is {d.get(key)!r}")

        def ts(key: str, default: float | None = None) -> float | None:
            v = d.get(key, default)
            if v is None:
                return None
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise RegistryError(f"invalid lineage: {key} is {v!r}, not epoch seconds")
            return float(v)

        def count(name: str, v: Any) -> int | None:
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise RegistryError(f"invalid lineage: {name} is {v!r}")
            return v

        n = count("n_windows", d.get("n_windows"))
        feedback = {
            str(k): count(f"feedback.{k}", v) or 0 for k, v in (d.get("feedback") or {}).items()
        }
        return cls(
            version=d["version"],
            parent=d.get("parent"),
            trigger=str(d.get("trigger", "manual")),
            data_from_ts=ts("data_from_ts"),
            data_to_ts=ts("data_to_ts"),
            n_windows=n,
            gate=dict(d.get("gate") or {}),
            created_at=ts("created_at", 0.0) or 0.0,
            feedback=feedback,
        )


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One published version, as listed.

    Examples
    --------
    >>> lin = Lineage("v-1a2b3c4d5e6f", parent="v-0f0e0d0c0b0a", trigger="drift",
    ...               data_from_ts=1.7e9, data_to_ts=1.7e9 + 86400, n_windows=5000,
    ...               gate={"passed": True, "val_recon": 0.01234}, created_at=1.7e9 + 90000)
    >>> print(VersionInfo(lin.version, lin, is_current=True).summary())
    * v-1a2b3c4d5e6f  created 2023-11-15 23:13Z  parent v-0f0e0d0c0b0a  trigger drift
      data 2023-11-14 22:13Z..2023-11-15 22:13Z  5000 windows  gate passed=True val_recon=0.01234
    """

    version: str
    lineage: Lineage
    is_current: bool

    def summary(self) -> str:
        """One line: version, created, parent, trigger, data range, key gate metrics."""
        lin = self.lineage
        data = (
            f"{_when(lin.data_from_ts)}..{_when(lin.data_to_ts)}"
            if lin.data_from_ts is not None or lin.data_to_ts is not None
            else "-"
        )
        gate = [
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in lin.gate.items()
            if isinstance(v, bool | int | float) or (isinstance(v, str) and len(v) <= 24)
        ][:5]  # scalars only: nested metrics belong in `lineage.json`, not one line
        mark, n, fb = ("*" if self.is_current else " "), lin.n_windows, lin.feedback
        feedback = (
            f"  feedback fp {fb.get('false_positive_alerts', 0)} alerts "
            f"({fb.get('false_positive_windows', 0)} windows) trained on, confirmed "
            f"{fb.get('confirmed_alerts', 0)} ({fb.get('confirmed_windows', 0)}) gated on"
            if any(fb.values())
            else ""
        )
        return (
            f"{mark} {self.version}  created {_when(lin.created_at)}  parent {lin.parent or '-'}  "
            f"trigger {lin.trigger}  data {data}  {'-' if n is None else n} windows  "
            f"gate {' '.join(gate) or '-'}{feedback}"
        )


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%MZ")
    except (OverflowError, OSError, ValueError):  # beyond the calendar: the number itself
        return f"{ts:g}"


class Registry:
    """Model versions in a directory; see the module docstring for layout and guarantees.

    Examples
    --------
    >>> reg = Registry("/nonexistent/registry")  # no I/O until asked
    >>> reg.current(), reg.versions(), reg.history()
    (None, [], [])
    >>> reg.rollback()
    Traceback (most recent call last):
    ...
    stream_vae.errors.RegistryError: nothing to roll back to in ...: no version was promoted
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # -- queries ---------------------------------------------------------------------------
    def path(self, version: str) -> Path:
        """The directory of ``version`` (which may not exist)."""
        if not _NAME.fullmatch(version):
            raise RegistryError(f"not a version id: {version!r}")
        return self.root / _VERSIONS / version

    def current(self) -> str | None:
        """The promoted version, or None; cheap enough to poll."""
        path = self.root / _CURRENT
        try:
            v = path.read_bytes().decode("ascii").strip()
        except FileNotFoundError:
            return None
        except UnicodeDecodeError:
            raise RegistryError(f"corrupt {path}: not a version id") from None
        if v and not _NAME.fullmatch(v):
            raise RegistryError(f"corrupt {path}: {v[:80]!r} is not a version id")
        return v or None

    def load(self, version: str | None = None) -> Artifact:
        """Load ``version`` (default: the current one)."""
        v = self.current() if version is None else version
        if v is None:
            raise RegistryError(f"no version has been promoted in {self.root}")
        return self._checked(v)

    def lineage(self, version: str) -> Lineage:
        path = self._existing(version) / _LINEAGE
        try:
            lineage = Lineage.from_dict(_json.loads(path.read_bytes()))
        except FileNotFoundError:
            raise RegistryError(f"version {version} has no {_LINEAGE}: {path.parent}") from None
        except (_json.JSONDecodeError, RegistryError) as exc:
            raise RegistryError(f"corrupt {path}: {exc}") from None
        if lineage.version != version:
            raise RegistryError(f"corrupt {path}: it names version {lineage.version!r}")
        return lineage

    def feedback_windows(self, version: str) -> dict[str, list[tuple[str, np.ndarray]]]:
        """Per verdict, the (alert id, windows (m, W, d)) a version learned from, in the order
        they were given; empty for a version without any."""
        path = self._existing(version) / _FEEDBACK
        if not path.is_file():
            return {}
        out: dict[str, list[tuple[str, np.ndarray]]] = {}
        try:
            with np.load(path, allow_pickle=False) as f:
                for name in f.files:
                    if not name.endswith(".alerts"):
                        continue
                    verdict = name.removesuffix(".alerts")
                    ids, windows = f[name].tolist(), f[f"{verdict}.windows"]
                    groups: dict[str, list[int]] = {}
                    for i, alert in enumerate(ids):
                        groups.setdefault(alert, []).append(i)
                    out[verdict] = [(a, windows[rows]) for a, rows in groups.items()]
        except (OSError, ValueError, KeyError) as exc:
            raise RegistryError(f"corrupt {path}: {exc}") from None
        return out

    def versions(self) -> list[VersionInfo]:
        """Published versions, oldest first; temporaries (dot names) are never listed."""
        base = self.root / _VERSIONS
        if not base.is_dir():
            return []
        cur = self.current()
        infos = [
            VersionInfo(p.name, self.lineage(p.name), p.name == cur)
            for p in base.iterdir()
            if p.is_dir() and not p.name.startswith(".")
        ]
        return sorted(infos, key=lambda i: (i.lineage.created_at, i.version))

    def history(self) -> list[dict[str, Any]]:
        """Promotions and rollbacks, oldest first (``ts``, ``action``, ``version``, ``from``...)."""
        try:
            data = (self.root / _HISTORY).read_bytes()
        except FileNotFoundError:
            return []
        # A last line without its newline is a torn append: its pointer switch never happened.
        out = []
        for i, line in enumerate(data.split(b"\n")[:-1], 1):
            if line.strip():
                try:
                    out.append(_entry(_json.loads(line)))
                except (_json.JSONDecodeError, ValueError) as exc:
                    raise RegistryError(
                        f"corrupt line {i} of {self.root / _HISTORY}: {exc}"
                    ) from None
        return out

    # -- changes ---------------------------------------------------------------------------
    def publish(
        self,
        artifact: Artifact,
        *,
        trigger: Trigger | str = "manual",
        data_from_ts: float | None = None,
        data_to_ts: float | None = None,
        n_windows: int | None = None,
        gate: Mapping[str, Any] | None = None,
        feedback: Mapping[str, int] | None = None,
        feedback_windows: Mapping[str, tuple[Sequence[str], np.ndarray]] | None = None,
    ) -> str:
        """Store ``artifact`` with its lineage (not promoted); a version already there is kept.
        ``feedback_windows``: per verdict, the alert id of each window and the windows (m, W, d)
        it learned from, kept with it so that a restarted service's later retrains still do
        (:meth:`feedback_windows`)."""
        dest = self.path(artifact.version)
        if dest.is_dir():
            return artifact.version
        g, created = dict(gate or {}), artifact.created_at or time.time()
        lineage = Lineage(
            artifact.version,
            artifact.parent,
            trigger,
            data_from_ts,
            data_to_ts,
            n_windows,
            g,
            created,
            dict(feedback or {}),
        )
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
        try:
            save_artifact(artifact, tmp)  # creates versions/
            (tmp / _LINEAGE).write_bytes(_json.dumps(lineage.to_dict(), indent=True))
            if feedback_windows:
                arrays: dict[str, Any] = {}
                for verdict, (ids, windows) in feedback_windows.items():
                    arrays[f"{verdict}.alerts"] = np.asarray(ids, dtype=str)
                    arrays[f"{verdict}.windows"] = np.asarray(windows, dtype=np.float32)
                np.savez(tmp / _FEEDBACK, **arrays)
            for f in tmp.iterdir():
                _fsync(f)
            _fsync(tmp)
            try:
                tmp.rename(dest)
            except OSError:
                if not dest.is_dir():
                    raise
                log.info("version %s was published concurrently; keeping that copy", dest.name)
            _fsync(dest.parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("published %s (trigger %s) in %s", artifact.version, trigger, self.root)
        return artifact.version

    def promote(self, version: str, reason: str = "", actor: str = "") -> None:
        """Make ``version`` current; it must be published and load (no-op if it is current)."""
        self._checked(version)
        with self._locked():
            stack = self._settled(actor)
            if stack and stack[-1] == version:
                return
            self._append("promote", version, stack[-1] if stack else None, reason, actor)
            self._write_current(version)
        log.info("promoted %s in %s (%s)", version, self.root, reason or "no reason given")

    def rollback(self, reason: str = "", actor: str = "") -> str:
        """Undo the last promotion still in effect; return the version now current."""
        if not self.root.is_dir():
            raise _cannot_roll_back(self.root, [])
        with self._locked():
            stack = self._settled(actor)
            if len(stack) < 2:
                raise _cannot_roll_back(self.root, stack)
            target = stack[-2]
            self._checked(target)
            self._append("rollback", target, stack[-1], reason, actor)
            self._write_current(target)
        log.info("rolled back %s -> %s in %s", stack[-1], target, self.root)
        return target

    # -- internals -------------------------------------------------------------------------
    def _settled(self, actor: str) -> list[str]:
        """The history's stack once it agrees with ``CURRENT`` (call under the lock).

        A last line whose pointer switch never happened (a crash between the two) is undone by
        its inverse; a pointer set by other means is recorded as a promotion."""
        history, cur = self.history(), self.current()
        stack = _stack(history)
        if stack[-1:] == [cur] or (cur is None and not stack):
            return stack
        before = _stack(history[:-1])
        last = history[-1] if history else None
        if last is not None and (before[-1] if before else None) == cur:
            why = f"recovered: the {last['action']} to {last['version']} never took effect"
            if last["action"] == "promote":
                self._append("rollback", cur, stack[-1], why, actor)
            else:
                self._append("promote", cur, stack[-1] if stack else None, why, actor)
            log.warning("%s in %s: %s", _HISTORY, self.root, why)
            return before
        if cur is None:
            return stack  # the pointer was removed by hand: nothing to record it as
        why = f"recovered: {_CURRENT} named {cur} without a history line"
        self._append("promote", cur, stack[-1] if stack else None, why, actor)
        log.warning("%s in %s: %s", _HISTORY, self.root, why)
        return [*stack, cur]

    def _existing(self, version: str) -> Path:
        d = self.path(version)
        if not d.is_dir():
            raise RegistryError(
                f"unknown version {version!r} in {self.root} (see `stream-vae registry list`)"
            )
        return d

    def _checked(self, version: str) -> Artifact:
        d = self._existing(version)
        try:
            art = load_artifact(d)
        except ArtifactError as exc:
            raise RegistryError(f"version {version} does not load: {exc}") from None
        if art.version != version:
            raise RegistryError(f"{d} holds model {art.version}, not {version}")
        return art

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / _LOCK, "ab") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # released when the file closes
            yield

    def _append(
        self, action: str, version: str | None, prev: str | None, reason: str, actor: str
    ) -> None:
        entry = {
            "ts": time.time(),
            "action": action,
            "version": version,
            "from": prev,
            "reason": reason,
            "actor": actor or f"{socket.gethostname()}:{os.getpid()}",
        }
        fd = os.open(self.root / _HISTORY, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":  # drop a torn last line
                os.ftruncate(fd, os.pread(fd, size, 0).rfind(b"\n") + 1)
            os.write(fd, _json.dumps(entry) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_current(self, version: str) -> None:
        tmp = self.root / f"{_CURRENT}.{secrets.token_hex(4)}.tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(version.encode() + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.root / _CURRENT)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync(self.root)


def _cannot_roll_back(root: Path, stack: list[str]) -> RegistryError:
    why = f"{stack[0]} is the first promotion" if stack else "no version was promoted"
    return RegistryError(f"nothing to roll back to in {root}: {why}")


def _entry(e: Any) -> dict[str, Any]:
    """A history line checked for what replaying it needs (raises ValueError saying what)."""
    if not isinstance(e, dict):
        raise ValueError(f"a JSON object expected, got {type(e).__name__}")
    action, version = e.get("action"), e.get("version")
    if action not in ("promote", "rollback"):
        raise ValueError(f"action {action!r} is neither 'promote' nor 'rollback'")
    back_to_none = action == "rollback" and version is None  # undoing a first promotion
    if not back_to_none and not (isinstance(version, str) and _NAME.fullmatch(version)):
        raise ValueError(f"version {version!r} is not a version id")
    return e


def _stack(history: list[dict[str, Any]]) -> list[str]:
    """Replay the history: a promotion pushes, a rollback pops; the top is current."""
    stack: list[str] = []
    for e in history:
        if e.get("action") == "promote":
            stack.append(e["version"])
        elif e.get("action") == "rollback" and stack:
            stack.pop()
    return stack


def _fsync(path: Path) -> None:
    """Flush a file or a directory (the entries of a rename) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
