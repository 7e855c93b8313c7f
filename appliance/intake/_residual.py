"""The residual check of `data prepare`: a second pass over already-scrubbed text, counting suspected identifiers.

The scrubber runs again on its own output; whatever it would still replace, other than its own placeholders, is a
suspected identifier the first pass left (a name revealed once its neighbour was replaced, a value split across a
placeholder). The learned name model (``_suspects.suspect_name_spans(text, threshold)``) is asked too, at a lower
threshold than the scrubber uses, and the names it suspects outside placeholders count.
Counts only: no value leaves this module.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from typing import Any

from appliance.intake._scrubber import Scrubber

__all__ = ["RESIDUAL_NAME_THRESHOLD", "residual_counts", "residual_rate"]

RESIDUAL_NAME_THRESHOLD = 0.3  # the name model's score from which a token is a suspect here (lower than scrubbing)
_PLACEHOLDER = re.compile(r"\[(?P<kind>[A-Z]{2,10})\](?:#\d+)?")
_ONLY_PLACEHOLDERS = re.compile(r"(?:\s|[^\w\s]|\[[A-Z]{2,10}\](?:#\d+)?)*")  # placeholders, spaces, punctuation

SuspectNames = Callable[[str, float], Iterable[Any]]


@cache
def _scrubber() -> Scrubber:
    return Scrubber()


def _suspect_names() -> SuspectNames | None:
    """The name model's ``suspect_name_spans`` (looked up at call time, so a test can replace it; None when a
    build ships without it)."""
    from appliance.intake import _suspects

    hook = getattr(_suspects, "suspect_name_spans", None)
    return hook if callable(hook) else None


def _replacements(before: str, after: str) -> Iterator[tuple[str, int, int]]:
    """(type, start, end) in ``before`` of each placeholder the second pass put into ``after``.

    ``after`` is read as literal runs between placeholders; each run is located in ``before`` after the previous
    one, and a placeholder stands for the text between its neighbouring runs.
    """
    pos = 0
    pending: list[str] = []
    last = 0
    for m in _PLACEHOLDER.finditer(after):
        literal = after[last : m.start()]
        if literal:
            at = before.find(literal, pos)
            if at < 0:
                return
            if pending:
                yield from ((kind, pos, at) for kind in pending)
                pending = []
            pos = at + len(literal)
        pending.append(m.group("kind"))
        last = m.end()
    tail = after[last:]
    end = before.find(tail, pos) if tail else len(before)
    if pending and end >= 0:
        yield from ((kind, pos, end) for kind in pending)


def residual_counts(scrubbed_text: str, *, threshold: float = RESIDUAL_NAME_THRESHOLD) -> Counter[str]:
    """Suspected identifiers still in ``scrubbed_text``, by placeholder type (its own placeholders ignored)."""
    again, _ = _scrubber().scrub_text(scrubbed_text)
    counts: Counter[str] = Counter()
    found: list[tuple[int, int]] = []
    if again != scrubbed_text:
        regions: dict[tuple[int, int], Counter[str]] = {}
        for kind, start, end in _replacements(scrubbed_text, again):
            regions.setdefault((start, end), Counter())[kind] += 1
        for (start, end), kinds in regions.items():
            region = scrubbed_text[start:end]
            if _ONLY_PLACEHOLDERS.fullmatch(region):
                continue
            kinds.subtract(Counter(m.group("kind") for m in _PLACEHOLDER.finditer(region)))  # the ones it kept
            new = +kinds
            if new:
                counts.update(new)
                found.append((start, end))
    hook = _suspect_names()
    if hook is not None:
        held = [(m.start(), m.end()) for m in _PLACEHOLDER.finditer(scrubbed_text)] + found
        for span in hook(scrubbed_text, threshold):
            start, end = int(span[0]), int(span[1])
            if not any(s < end and start < e for s, e in held):
                counts["NAME"] += 1
                held.append((start, end))
    return counts


def residual_rate(total: int, records: int) -> float:
    """Suspected identifiers per 1000 records (0 for no records)."""
    return 1000.0 * total / records if records else 0.0
