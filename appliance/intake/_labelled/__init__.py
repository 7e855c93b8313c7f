"""Labelled evaluation notes: realistic synthetic clinical notes whose every identifier is labelled.

Each record carries the intake fields (``instruction``, ``response``, ``subject_id``) plus ``phi`` (every
identifier as it is written, with its placeholder type and, for names, the person's role) and ``keep`` (clinical
phrases a scrubber must leave intact). ``appliance data evaluate-scrub`` and ``bench/deid.py`` read them.

The notes are built from parts, so a label is always text that is present: a part is either plain text, a
labelled identifier or a phrase to keep. Names come from many Faker locales (accents, particles, romanised
Japanese and Chinese names); numbers are random digits; domains are ``example.*``. The templates here are written
for evaluation only and share nothing with the scrubber's own rules or training data. Output is a pure function
of ``(n, seed)`` for the pinned Faker version.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.intake._labelled._maker import Maker, Note
from appliance.intake._labelled._templates import BUILDERS
from appliance.intake._labelled._vocab import ABROAD, NAME_LOCALES

if TYPE_CHECKING:
    from faker import Faker

__all__ = ["NOTE_TYPES", "generate_labelled_notes", "write_labelled_notes"]

NOTE_TYPES = ("discharge", "nursing", "referral", "messages", "signout")


def _fakers(seed: int) -> dict[str, Faker]:
    from faker import Faker

    out: dict[str, Faker] = {}
    for i, locale in enumerate(sorted(set(NAME_LOCALES) | {loc for loc, _, _ in ABROAD} | {"es_ES"})):
        fk = Faker(locale)
        fk.seed_instance(seed * 1000 + i)
        out[locale] = fk
    return out


def generate_labelled_notes(n: int, seed: int = 13) -> list[dict[str, Any]]:
    """``n`` labelled notes cycling through the note types: intake fields plus ``phi`` and ``keep``.

    ``phi`` lists ``{"type", "value", "role"?}`` once per distinct value; each value and each ``keep`` phrase occurs
    verbatim in ``instruction`` (where the note is).
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = random.Random(seed)
    maker = Maker(rng, _fakers(seed))
    records: list[dict[str, Any]] = []
    for i in range(n):
        kind = NOTE_TYPES[i % len(NOTE_TYPES)]
        note = Note()
        task = BUILDERS[kind](maker, note)
        records.append(
            {
                "instruction": f"{task}\n\n{note.render()}",
                "response": "See the note above; no identifiers are repeated here.",
                "subject_id": f"E{seed:04d}-{i:06d}",
                "metadata": {"note_type": kind},
                "phi": note.phi,
                "keep": note.keep,
            }
        )
    return records


def write_labelled_notes(path: Path, n: int, seed: int = 13) -> int:
    """Write ``generate_labelled_notes(n, seed)`` as JSONL to ``path``; returns the number of records."""
    records = generate_labelled_notes(n, seed)
    path.write_text("".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records), encoding="utf-8")
    return len(records)
