"""A CRF tagger of person names and place words, trained offline on the project's own synthetic notes.

``scripts/deid/train_name_tagger.py`` builds ``appliance/intake/data/name_tagger.crfsuite`` reproducibly (fixed seed,
``_notes.generate_notes(family="train")``); this module loads it lazily once and returns per-token probabilities.
Labels: ``N`` (part of a person's name), ``L`` (part of an address, city or postcode), ``O`` (anything else).
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from importlib import resources

import pycrfsuite

from appliance.intake._tagger._features import sequence_features

__all__ = ["MODEL_FILE", "tag_probabilities"]

MODEL_FILE = "name_tagger.crfsuite"
_CHUNK = 4000  # characters of whole lines tagged as one sequence
_WORDS = re.compile(r"[^\W\d_]{3,}")
_LOCK = threading.Lock()  # a crfsuite Tagger holds per-call state: one caller at a time


@lru_cache(maxsize=1)
def _tagger() -> pycrfsuite.Tagger:
    tagger = pycrfsuite.Tagger()
    with resources.as_file(resources.files("appliance.intake") / "data" / MODEL_FILE) as path:
        tagger.open(str(path))
    return tagger


def tag_probabilities(text: str, mode: str = "", floor: float = 0.0) -> list[tuple[int, int, float, float]]:
    """(start, end, P(name), P(place)) of the word tokens of ``text``; ``mode`` is its letter case. Text is read in
    chunks of whole lines (at most ``_CHUNK`` characters, longer lines alone); a chunk with almost no words
    ("1.1.1...", "a.a.a...": not prose) is skipped, so cost stays linear and small on such input. With ``floor`` at
    0.5 or more only tokens on the best path's N/L labels are returned (a marginal of 0.5 or more is, in practice,
    on the best path), which saves most of the per-token work."""
    out: list[tuple[int, int, float, float]] = []
    for start, end in _chunks(text):
        chunk = text[start:end]
        if len(chunk) > _CHUNK and len(_WORDS.findall(chunk)) < len(chunk) / 20:
            continue
        out.extend((s + start, e + start, pn, pl) for s, e, pn, pl in _tag(chunk, mode, floor >= 0.5))
    return out


def _chunks(text: str) -> list[tuple[int, int]]:
    chunks: list[tuple[int, int]] = []
    start = pos = 0
    while pos < len(text):
        nl = text.find("\n", pos)
        line_end = len(text) if nl < 0 else nl + 1
        if line_end - start > _CHUNK and pos > start:
            chunks.append((start, pos))
            start = pos
        pos = line_end
    if start < len(text):
        chunks.append((start, len(text)))
    return chunks


def _tag(text: str, mode: str, best_only: bool) -> list[tuple[int, int, float, float]]:
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
            if best[i] == "O" and (best_only or not (first.isupper() or first.isdigit() or not cased)):
                continue
            if first.isalnum():
                out.append((start, end, tagger.marginal("N", i), tagger.marginal("L", i)))
    return out
