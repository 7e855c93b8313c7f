"""A CRF tagger of person names and place words, trained offline on the project's own synthetic notes.

``scripts/deid/train_name_tagger.py`` builds ``appliance/intake/data/name_tagger.crfsuite`` reproducibly (fixed seed,
``_notes.generate_notes(family="train")``); this module loads it lazily once and returns per-token probabilities.
Labels: ``N`` (part of a person's name), ``L`` (part of an address, city or postcode), ``O`` (anything else).
"""

from __future__ import annotations

import threading
from functools import lru_cache
from importlib import resources

import pycrfsuite

from appliance.intake._tagger._features import sequence_features

__all__ = ["MODEL_FILE", "tag_probabilities"]

MODEL_FILE = "name_tagger.crfsuite"
_LOCK = threading.Lock()  # a crfsuite Tagger holds per-call state: one caller at a time


@lru_cache(maxsize=1)
def _tagger() -> pycrfsuite.Tagger:
    tagger = pycrfsuite.Tagger()
    with resources.as_file(resources.files("appliance.intake") / "data" / MODEL_FILE) as path:
        tagger.open(str(path))
    return tagger


def tag_probabilities(text: str, mode: str = "") -> list[tuple[int, int, float, float]]:
    """(start, end, P(name), P(place)) of every word token of ``text``; ``mode`` is its letter case."""
    spans, xseq = sequence_features(text, mode)
    if not spans:
        return []
    tagger = _tagger()
    out: list[tuple[int, int, float, float]] = []
    cased = mode == ""  # in mixed case, a lower-case word is read only when the best path says it is not O
    with _LOCK:
        tagger.set(xseq)
        best = tagger.tag()
        for i, (start, end) in enumerate(spans):
            first = text[start]
            if first.isalnum() and (first.isupper() or first.isdigit() or not cased or best[i] != "O"):
                out.append((start, end, tagger.marginal("N", i), tagger.marginal("L", i)))
    return out
