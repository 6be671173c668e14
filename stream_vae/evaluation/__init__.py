"""Evaluation on labelled data: metrics now; dataset loaders and replay come with the
evaluation issue."""

from __future__ import annotations

from .metrics import average_precision, roc_auc

__all__ = ["average_precision", "roc_auc"]
