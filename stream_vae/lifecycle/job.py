"""The retraining job: what runs in a worker process when the service retrains.

:func:`run_job` retrains from the registry's live version (:func:`stream_vae.training.gate.
retrain`), publishes the candidate with its lineage and promotes it if the gate passed;
:func:`job_main` is its entry point in a spawned process, with the job's windows passed as an
``.npz`` file (:func:`save_job`), not through a pipe.
"""

from __future__ import annotations

import logging
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ..config import Settings
from ..storage.registry import Registry
from ..training.gate import retrain
from .policy import Job
from .reservoir import ReservoirSample

__all__ = ["job_main", "run_in_child", "run_job", "save_job"]

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]


def run_job(
    registry: Registry,
    sample: ReservoirSample,
    settings: Settings,
    *,
    trigger: str = "manual",
    live_version: str | None = None,
    job: Job | None = None,
) -> dict[str, Any]:
    """Retrain from the registry's current (or ``live_version``) model; publish the candidate
    with its lineage; promote it if it passed. Returns a ``model-events`` message. ``job``
    brings the windows of alerts people marked: false positives are trained on, confirmed
    ones join the gate's shadow set."""
    live = registry.load(live_version)
    shadow = _load_shadow(settings.retrain.shadow_path)
    confirmed = None if job is None else job.confirmed
    if confirmed is not None:
        shadow = confirmed if shadow is None else np.concatenate([shadow, confirmed])
    result = retrain(
        live,
        sample,
        settings,
        trigger=trigger,
        shadow=shadow,
        false_positives=None if job is None else job.false_positives,
    )
    cand = result.candidate
    gate = {
        "passed": result.gate.passed,
        "reasons": list(result.gate.reasons),
        **result.gate.metrics,
    }
    registry.publish(
        cand,
        trigger=trigger,
        data_from_ts=result.data_from_ts,
        data_to_ts=result.data_to_ts,
        n_windows=result.n_windows,
        gate=gate,
        feedback=None if job is None else job.feedback_counts(),
        feedback_windows=None if job is None else job.feedback_windows(),
    )
    if result.gate.passed:
        registry.promote(cand.version, reason=f"{trigger}: gate passed")
    log.info(
        "retrain (%s) from %s: candidate %s %s %s",
        trigger,
        live.version,
        cand.version,
        "promoted" if result.gate.passed else "rejected",
        "; ".join(result.gate.reasons) or "",
    )
    return {
        "event": "promoted" if result.gate.passed else "rejected",
        "version": cand.version,
        "parent": live.version,
        "trigger": trigger,
        "data_from_ts": result.data_from_ts,
        "data_to_ts": result.data_to_ts,
        "n_windows": result.n_windows,
        "train_seconds": result.train_seconds,
        "threshold": cand.threshold,
        "gate": gate,
        **({} if job is None else {"feedback": job.feedback_counts()}),
    }


def _load_shadow(path: Path | None) -> F32 | None:
    if path is None:
        return None
    with np.load(path) as f:
        return np.asarray(f["windows"], dtype=np.float32)


def job_main(spec: dict[str, Any]) -> dict[str, Any]:
    """Entry point in a worker process: ``spec`` names the registry, the sample file and the
    settings (a JSON-able dict); the sample travels as an ``.npz`` file, not through a pipe."""
    settings = Settings.model_validate(spec["settings"])
    torch.set_num_threads(settings.retrain.torch_threads)
    job = load_job(Path(spec["sample_path"]), spec["trigger"])
    return run_job(
        Registry(spec["registry_root"]),
        job.sample,
        settings,
        trigger=job.trigger,
        live_version=spec.get("live_version"),
        job=job,
    )


def run_in_child(spec: dict[str, Any], answer: Connection) -> None:
    """A spawned worker's entry point: :func:`job_main`, its outcome (or its error) sent back
    as ``(ok, payload)`` on ``answer``."""
    try:
        outcome: tuple[bool, object] = (True, job_main(spec))
    except Exception as exc:  # the parent reports it as a failed job
        log.exception("retraining job failed")
        outcome = (False, f"{type(exc).__name__}: {exc}"[:500])
    answer.send(outcome)
    answer.close()


def save_job(job: Job, path: Path) -> Path:
    """Write a job's windows for :func:`job_main` (uncompressed: it is read once, soon)."""
    s, feedback = job.sample, {}
    for name in ("false_positives", "confirmed"):
        w = getattr(job, name)
        if w is not None:
            feedback[name] = w
            feedback[f"{name}_ids"] = np.array(
                getattr(job, name.removesuffix("s") + "_ids"), dtype=str
            )
    np.savez(
        path,
        windows=s.windows,
        keys=np.array(s.keys),
        ts=s.ts,
        n_alerts=np.array([job.n_false_positive_alerts, job.n_confirmed_alerts]),
        **feedback,
    )
    return path


def load_job(path: Path, trigger: str) -> Job:
    """The job :func:`save_job` wrote (its drift event and start time stay behind)."""
    with np.load(path) as f:
        sample = ReservoirSample(f["windows"], tuple(str(k) for k in f["keys"].tolist()), f["ts"])
        fp = np.asarray(f["false_positives"]) if "false_positives" in f else None
        confirmed = np.asarray(f["confirmed"]) if "confirmed" in f else None
        fp_ids = tuple(f["false_positives_ids"].tolist()) if fp is not None else ()
        confirmed_ids = tuple(f["confirmed_ids"].tolist()) if confirmed is not None else ()
        n_fp, n_confirmed = (int(n) for n in f["n_alerts"])
    return Job(trigger, sample, None, 0.0, fp, confirmed, n_fp, n_confirmed, fp_ids, confirmed_ids)
