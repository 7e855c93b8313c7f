"""Synthetic labelled clinical notes for training and measuring the name tagger (build time only: needs Faker).

A note is a discharge summary, nursing note, referral letter, patient message thread or sign-out list, built from
sentence templates whose slots are filled with Faker people, places and numbers from many locales, in every name form
the scrubber must handle (``Last, First``, ``SURNAME, GIVEN``, initials, particles, ``First L. (RN)``, possessives,
lower case, a given name alone after a relation word...). Each PHI value is labelled with its type (and, for names,
the role: patient, relative, clinician); clinical phrases that must survive (drugs, doses, labs, eponyms) are listed
in ``keep``. Templates come in two disjoint families: ``"train"`` (the tagger's training notes) and ``"heldout"``
(measurement and tests), so a score on held-out notes is not a score on the sentences the model saw.
"""

from __future__ import annotations

import random
import re

from appliance.intake._tagger._filler import Filler, faker_for
from appliance.intake._tagger._labels import Note, Phi, Writer
from appliance.intake._tagger._shorthand import shorthand_lines
from appliance.intake._tagger._templates import TEMPLATES
from appliance.intake._tagger._vocab import EPONYMS, LOCALES, translit

__all__ = ["EPONYMS", "Note", "Phi", "generate_notes", "translit"]

_SLOT = re.compile(r"\{(\w+)\}")


def generate_notes(n: int, seed: int, family: str = "heldout") -> list[Note]:
    """``n`` notes of every kind, deterministic for a seed; ``family`` picks the template set (train/heldout)."""
    if family not in LOCALES:
        raise ValueError(f"family must be one of {sorted(LOCALES)}")
    rng = random.Random(seed)
    extra = random.Random(seed + 1)  # the shorthand's own stream: the notes around it stay what they were
    from faker import Faker

    Faker.seed(seed)
    notes = []
    kinds = sorted(TEMPLATES[family])
    for i in range(n):
        kind = kinds[i % len(kinds)]
        filler = Filler(rng, family)
        filler.lower = kind == "message" and rng.random() < 0.5
        upper = kind in ("discharge", "signout", "nursing") and rng.random() < 0.15  # notes typed in capitals
        w = Writer()
        lines = TEMPLATES[family][kind]
        chosen = [lines[0], *rng.sample(lines[1:], k=min(len(lines) - 1, rng.randint(7, 12)))]
        prose = faker_for("en_US")  # ordinary English prose between the lines: words that are not names
        for _ in range(rng.randint(1, 4)):
            chosen.insert(rng.randint(1, len(chosen)), prose.sentence(nb_words=rng.randint(6, 16)))
        if family == "train" and not (filler.lower or upper):  # shorthand in mixed case only (see _shorthand)
            for line in shorthand_lines(extra, extra.randint(2, 6)):
                chosen.insert(extra.randint(1, len(chosen)), line)
        for line in chosen:
            if filler.lower:
                line = line.lower()
                line = _SLOT.sub(lambda m: "{" + m.group(1).upper() + "}", line)
            pos = 0
            for m in _SLOT.finditer(line):
                w.text(line[pos : m.start()])
                filler.fill(w, m.group(1))
                pos = m.end()
            w.text(line[pos:] + "\n")
        text = "".join(w.parts)
        if upper:  # same length: the labels stay where they are
            text = "".join(c.upper() if len(c.upper()) == 1 else c for c in text)
            w.keep = [k.upper() for k in w.keep]
        notes.append(Note(text, kind, w.phi, w.keep))
    return notes
