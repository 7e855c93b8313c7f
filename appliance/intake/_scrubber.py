"""The scrubbing engine: runs the rule table (``_scrub``), the name finders and the metadata rules over a text.

Detectors run in the table's priority order; a span never overlaps one already kept. Name tokens found anywhere in a
record are replaced everywhere in it, and so are the identifier values its metadata declares (``_metadata``).
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from appliance.intake._case import case_normalised as _case_normalised
from appliance.intake._metadata import (
    LONG_NUMBER,
    Declared,
    declared_patterns,
    is_placeholder,
    key_type,
    labelled_names,
    strings,
)
from appliance.intake._names import find_names, propagate_spans
from appliance.intake._scrub import PLACEHOLDER_TYPES, PROBE_KINDS, SEPARATORS, compiled_rules
from appliance.intake._suspects import drop_protected, tagged_spans

__all__ = ["ScrubReport", "Scrubber"]

Span = tuple[int, int, str]  # start, end, placeholder type
# name spans, name tokens and place spans found in one text
_NameHits = tuple[list[tuple[int, int]], set[str], list[tuple[int, int]]]


@dataclass
class ScrubReport:
    """Replacement counts per placeholder type (never values) and how many records/fields changed."""

    counts: Counter[str] = field(default_factory=Counter)
    records: int = 0
    records_changed: int = 0

    def add(self, other: Counter[str]) -> None:
        self.counts.update(other)

    def as_dict(self) -> dict[str, int]:
        """Counts for every placeholder type (zeros included), in a stable order."""
        return {kind: int(self.counts.get(kind, 0)) for kind in PLACEHOLDER_TYPES}

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _iter_spans(text: str, probe: str | None = None) -> Iterator[Span]:
    """Spans of every rule, in priority order; ``probe`` (a word-cased copy of an ALL-CAPS text, same length)
    is searched too by the rules that depend on letter case."""
    for rule in compiled_rules():
        targets = [text] if probe is None or rule.kind not in PROBE_KINDS else [text, probe]
        for target in targets:
            for m in rule.pattern.finditer(target):
                if rule.check is not None and not rule.check(m):
                    continue
                kind = rule.kind_of(target, m) if rule.kind_of is not None else rule.kind
                start, end = m.span("v")
                if end > start:
                    yield start, end, kind


def _select(spans: Iterable[Span]) -> list[Span]:
    """Keep spans in priority order (the order they arrive), dropping any that overlap one already kept."""
    kept: list[Span] = []  # sorted by start, non-overlapping: only the neighbours can overlap a new span
    for span in spans:
        i = bisect.bisect_left(kept, span)
        if i > 0 and kept[i - 1][1] > span[0]:
            continue
        if i < len(kept) and kept[i][0] < span[1]:
            continue
        kept.insert(i, span)
    return kept


def _cover(kept: list[Span], span: Span) -> list[Span]:
    """``kept`` with the declared ``span`` replaced too, merged with the spans it overlaps into one of its type (a
    value a rule matched only in part loses its rest as well); unchanged when one kept span strictly contains it."""
    start, end, kind = span
    over = [k for k in kept if k[0] < end and start < k[1]]
    if len(over) == 1 and over[0][0] <= start and end <= over[0][1] and (over[0][0], over[0][1]) != (start, end):
        return kept
    merged = (min([start] + [k[0] for k in over]), max([end] + [k[1] for k in over]), kind)
    rest = [k for k in kept if k not in over]
    bisect.insort(rest, merged)
    return rest


def _fill(kept: list[Span], text: str, start: int, end: int) -> list[Span]:
    """``kept`` plus an [ADDRESS] span for each stretch of ``text[start:end]`` that no kept span covers and that holds
    a letter or digit."""
    pos = start
    gaps: list[Span] = []
    for k in kept[max(0, bisect.bisect_left(kept, (start, -1, "")) - 1) :]:
        if k[0] >= end:
            break
        if k[1] <= pos:
            continue
        if k[0] > pos:
            gaps.append((pos, k[0], "ADDRESS"))
        pos = max(pos, k[1])
    if pos < end:
        gaps.append((pos, end, "ADDRESS"))
    for g_start, g_end, kind in gaps:
        piece = text[g_start:g_end]
        stripped = piece.strip(" \t\n,.;:-/()")
        if any(c.isalnum() for c in stripped):
            lead = g_start + piece.index(stripped)
            bisect.insort(kept, (lead, lead + len(stripped), kind))
    return kept


def _merge_names(text: str, spans: list[Span]) -> list[Span]:
    """Adjacent name tokens become one span ("Jane Q. Smith" -> one [NAME])."""
    merged: list[Span] = []
    for span in spans:
        if merged and span[2] == "NAME" and merged[-1][2] == "NAME":
            between = text[merged[-1][1] : span[0]]
            if re.fullmatch(r"\s+|\s*[A-Z]\.\s*|\s+[A-Z]\.?\s+|-", between):
                merged[-1] = (merged[-1][0], span[1], "NAME")
                continue
        merged.append(span)
    return merged


def _apply(text: str, spans: list[Span]) -> tuple[str, Counter[str]]:
    counts: Counter[str] = Counter()
    out: list[str] = []
    pos = 0
    for start, end, kind in _merge_names(text, spans):
        out.append(text[pos:start])
        out.append(f"[{kind}]")
        counts[kind] += 1
        pos = end
    out.append(text[pos:])
    return "".join(out), counts


class Scrubber:
    """Replaces PHI in text with typed placeholders; one instance can be reused across records (stateless)."""

    def scrub_text(self, text: str, known_names: Iterable[str] = ()) -> tuple[str, Counter[str]]:
        """``text`` with PHI replaced, and the replacement counts per type."""
        text, counts, _ = self._scrub(text, known_names)
        return text, counts

    def _scrub(
        self,
        text: str,
        known_names: Iterable[str],
        found: _NameHits | None = None,
        declared: Declared = (),
    ) -> tuple[str, Counter[str], set[str]]:
        view = text.translate(SEPARATORS)  # same length as text, as is probe: spans found in them apply to text
        probe, mode = _case_normalised(view)
        spans = list(_iter_spans(view, probe if mode else None))
        if found is None:
            found = _find_names(view, probe, mode)
        own_spans, tokens, places = found
        name_spans = drop_protected(view, own_spans + propagate_spans(view, set(known_names) - tokens))
        spans.extend((s, e, "NAME") for s, e in sorted(name_spans, key=lambda se: (se[0], -se[1])))
        kept = _select(spans)
        for s, e in places:  # the tagger's place words fill what no rule took ("12 [NAME] Bridge" -> all replaced)
            kept = _fill(kept, view, s, e)
        for pattern, kind in declared:
            for m in pattern.finditer(view):
                kept = _cover(kept, (m.start(), m.end(), kind))
        new, counts = _apply(text, kept)
        return new, counts, tokens

    def scrub_fields(
        self, fields: dict[str, Any], context: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], Counter[str]]:
        """Scrub every string in a record's fields (nested metadata included); names found anywhere are
        replaced everywhere in the record, and so are the identifier values its metadata declares
        ({"mrn": "7654321"}). ``context`` (the metadata, when it is not itself output) declares them too, but is
        neither scrubbed nor counted."""
        declared = declared_patterns([fields, context])
        tokens: set[str] = set()
        hits: dict[str, _NameHits] = {}
        for text in strings(fields):
            if text not in hits:
                view = text.translate(SEPARATORS)
                hits[text] = _find_names(view, *_case_normalised(view))
                tokens |= hits[text][1]
        tokens |= labelled_names([fields, context])  # a metadata name field names the patient everywhere
        counts: Counter[str] = Counter()

        def walk(value: Any, key: str | None = None, inherited: str | None = None) -> Any:
            kind = key_type(key) or inherited  # {"mrn": {"value": ...}}: the object's scalars are the MRN
            scalar = isinstance(value, str | int | float) and not isinstance(value, bool)
            if kind is not None and scalar and not (isinstance(value, str) and is_placeholder(value)):
                counts[kind] += 1
                return f"[{kind}]"
            if isinstance(value, str):
                new, c, _ = self._scrub(value, tokens, hits.get(value), declared)
                counts.update(c)
                return new
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= LONG_NUMBER and key:
                counts["ID"] += 1
                return "[ID]"
            if isinstance(value, dict):
                out: dict[str, Any] = {}
                for k, v in value.items():
                    out[self._scrub_key(k, tokens, counts, out, declared)] = walk(v, k, kind)
                return out
            if isinstance(value, list):
                return [walk(v, key, inherited) for v in value]
            return value

        out = {k: walk(v, None if k in ("instruction", "response") else k) for k, v in fields.items()}
        return out, counts

    def _scrub_key(
        self, key: str, tokens: set[str], counts: Counter[str], taken: dict[str, Any], declared: Declared
    ) -> str:
        """A metadata key can itself be PHI ({"John Smith": ...}): scrub it; keep keys unique ("[NAME]#2")."""
        new, c, _ = self._scrub(key, tokens, None, declared)
        counts.update(c)
        unique, n = new, 1
        while unique in taken:
            n += 1
            unique = f"{new}#{n}"
        return unique


def _find_names(text: str, probe: str, mode: str) -> _NameHits:
    """Names in a text of any case: ALL-CAPS and lower-case texts are searched in their word-cased copy with the
    lexicon-only rules; lower-case text also gets the lower-case rules on the original. The CRF tagger adds the
    tokens it reads as names (and place words), in any case."""
    if not mode:
        spans, tokens = find_names(text, lower_pairs=False)
    else:
        spans, tokens = find_names(probe, lexicon_only=True)
        if mode == "lower":
            more, lower_tokens = find_names(text)
            spans, tokens = spans + more, tokens | lower_tokens
    tagged, tagged_tokens, places = tagged_spans(text, mode)
    tokens |= tagged_tokens
    return spans + tagged + propagate_spans(text, tagged_tokens), tokens, places


# A metadata value under an identifier key ({"mrn": "7654321"}) is replaced wherever it stands in the record's text.
