"""The NAB evaluation's per-row stage: the product's novelty of the smoothed score
(:class:`~stream_vae.scoring.novelty.SeriesNovelty`), as the evaluation settings configure it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..scoring.novelty import SeriesNovelty

if TYPE_CHECKING:  # annotations only
    from ..config import EvaluationSettings

__all__ = ["SeriesNovelty", "carry_novelty", "novelty_stage"]


def novelty_stage(settings: EvaluationSettings) -> SeriesNovelty:
    """The per-row stage NAB scores, as the evaluation settings configure it."""
    return SeriesNovelty(
        settings.novelty_window,
        settings.novelty_peak_decay,
        settings.novelty_censor,
        settings.novelty_censor_runs,
    )


def carry_novelty(novelty: SeriesNovelty, ratio: float) -> SeriesNovelty:
    """The history across a model swap, in the new model's units: scores rescaled by ``ratio``
    (new threshold / old; see :meth:`SeriesNovelty.carry`)."""
    carried = SeriesNovelty(novelty.window, novelty.peak_decay, novelty.censor, novelty.censor_runs)
    carried.carry(novelty, ratio)
    return carried
