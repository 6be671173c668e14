"""Evaluation on labelled data: loaders (:mod:`.datasets`, :mod:`.nab`), the detectors compared
(:mod:`.detectors`), metrics (:mod:`.metrics`, :mod:`.vus`, :mod:`.events`), the protocols and
reports (:mod:`.runner`, :mod:`.report`); the CLI is ``stream-vae evaluate``."""

from __future__ import annotations

from .metrics import average_precision, roc_auc

__all__ = ["average_precision", "roc_auc"]
