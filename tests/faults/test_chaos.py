"""The fault suite: ``bench/chaos.py`` in its short form (under a minute of stream), with every
fault kind forced at least once, checked against an uninterrupted run of the same stream.

``bench/`` holds scripts, not a package: the module is loaded from its path (and registered in
``sys.modules``, which its dataclasses need), so that the suite and the long form share one
implementation and the benchmark stays runnable as ``python bench/chaos.py``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from ..conftest import TinyModel

CHAOS = Path(__file__).resolve().parents[2] / "bench" / "chaos.py"
# Faults 3-5 s apart: a join (the joiner leaves 5-7 s later), a poison burst while three
# replicas share the partitions, a SIGKILL, a broker restart (~8 s down: a 5 s SIGTERM grace
# with clients connected, then 1-3 s), then the cycle again until the 36 s stream ends.
KINDS = ("join", "poison", "kill", "broker")


@pytest.fixture(scope="module")
def chaos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_chaos", CHAOS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_fault_kind_loses_no_alert_and_accounts_every_offset(
    chaos: ModuleType, tiny: TinyModel, tmp_path: Path
) -> None:
    assert set(KINDS) == set(chaos.FAULTS)
    report = chaos.run(
        0.6,
        0,
        tmp_path,
        50.0,
        kinds=KINDS,
        gap_s=(3.0, 5.0),
        stay_s=(5.0, 7.0),
        chunk_s=0.5,
        model=(tiny.model_dir, tiny.test_csv),
    )
    summary = chaos.summary(report)
    assert report["ok"] and report["failures"] == [], summary
    # every kind happened, and did something
    assert all(report["faults"].get(kind, 0) >= 1 for kind in KINDS), summary
    assert report["processes"]["sigkill"] >= 1, summary
    assert report["processes"]["sigterm"] >= 3, summary  # a joiner left; the two at the end
    # (1) alerts: the stream raised some, and every one arrived
    alerts = report["alerts"]
    assert alerts["expected"] > 0 and alerts["lost"] == 0 and alerts["invented"] == 0, summary
    assert alerts["received"] >= alerts["expected"]
    # (2) accounting: the group read to each log end, which holds every record sent
    records = report["records"]
    assert records["committed"] == records["log_end"], summary
    assert records["input_log"]["missing"] == records["input_log"]["changed"] == 0, summary
    assert sum(records["log_end"].values()) >= records["fleet"] + records["poison"] > 1000
    assert report["accounting"]["unaccounted"] == 0
    n_bursts = report["faults"]["poison"]
    assert records["poison"] == n_bursts * len(chaos.POISON)
    reasons = {r for r in chaos.POISON.values() if r is not None}
    assert set(report["dead_letters"]["by_reason"]) == reasons, summary
    assert all(n >= n_bursts for n in report["dead_letters"]["by_reason"].values())
    assert report["dead_letters"]["unexpected"] == 0
    # (3) memory, per process: the short form kills one replica once, so of the two that start
    # with the stream, one lives through it and is sampled in both thirds (the check itself is
    # in report["failures"]; a slot's restarted process starts afresh and is not compared)
    spanned = {p for p, v in report["rss_mib"].items() if "last_third_max" in v}
    assert spanned & {"replica0-0", "replica1-0"}, summary
