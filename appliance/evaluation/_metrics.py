"""Task metrics and their uncertainty: answer normalisation, exact match, seeded bootstrap intervals.

Every interval is a percentile bootstrap of the mean over records (2.5th and 97.5th percentiles of the means of
``resamples`` resamples drawn with replacement). A difference between two models is bootstrapped *paired*: the
same resampled records for both, so the interval is of the per-record differences, not of two independent means.
The generator is seeded, so the same numbers give the same interval.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Estimate", "bootstrap", "exact_match", "normalise_answer"]

_SPACE = re.compile(r"\s+")
RESAMPLES = 1000
SEED = 0


def normalise_answer(text: str) -> str:
    """Lower case, whitespace runs collapsed to one space, ends trimmed, one final full stop dropped."""
    text = _SPACE.sub(" ", text).strip().lower()
    if text.endswith("."):
        text = text[:-1].rstrip()
    return text


def exact_match(prediction: str, reference: str) -> bool:
    """Whether the two answers are equal after :func:`normalise_answer`."""
    return normalise_answer(prediction) == normalise_answer(reference)


@dataclass(frozen=True)
class Estimate:
    """A mean over records with its bootstrap 95% interval."""

    mean: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high}


def bootstrap(values: Sequence[float], *, resamples: int = RESAMPLES, seed: int = SEED) -> Estimate:
    """The mean of ``values`` and its percentile-bootstrap 95% interval (seeded: deterministic)."""
    import numpy as np

    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("bootstrap needs at least one value")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Estimate(float(data.mean()), float(low), float(high))
