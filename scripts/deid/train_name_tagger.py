"""Train the name/place CRF shipped as appliance/intake/data/name_tagger.crfsuite, reproducibly.

Generates labelled synthetic notes (``appliance.intake._tagger._notes``, template family "train", fixed seed),
turns them into token features (``_tagger._features``) and fits a linear-chain CRF with python-crfsuite (L-BFGS,
L1+L2). A share of the notes (``--scrubbed-share``) is also added as the scrubber leaves them: most identifiers
replaced by their placeholders, a few left, so that the residual check's second pass over scrubbed text reads
placeholders as what they stand for and still finds a name left beside one.
Run: ``PYTHONPATH=$PWD .venv/bin/python scripts/deid/train_name_tagger.py [--notes 4000] [--seed 20261206]``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import pycrfsuite

from appliance.intake._case import case_normalised as _case_normalised
from appliance.intake._tagger import MODEL_FILE
from appliance.intake._tagger._features import sequence_features
from appliance.intake._tagger._notes import Note, Phi, generate_notes

OUT = Path(__file__).resolve().parents[2] / "appliance" / "intake" / "data" / MODEL_FILE
_LABEL = {"NAME": "N", "ADDRESS": "L", "ZIP": "L"}


def labels(note: Note, spans: list[tuple[int, int]]) -> list[str]:
    marks = sorted((p.start, p.end, _LABEL.get(p.kind, "O")) for p in note.phi)
    out = []
    for start, end in spans:
        label = "O"
        for s, e, lab in marks:
            if s < end and start < e:
                label = lab
                break
        out.append(label)
    return out


def scrubbed_copy(note: Note, rng: random.Random, replace: float) -> Note:
    """``note`` with each identifier replaced by ``[TYPE]`` with probability ``replace`` (the others keep their
    labels), as a scrubber that missed a few would leave it."""
    parts: list[str] = []
    left: list[Phi] = []
    pos = 0
    size = 0
    replaced = False
    for p in sorted(note.phi, key=lambda p: p.start):
        if p.start < pos:
            continue
        parts.append(note.text[pos : p.start])
        # parts of one name ("Jane" "Smith") share one fate: a scrubber that finds a name replaces it whole, so
        # "Dr. [NAME] saw" must not teach that a word after a placeholder is a name
        joined = bool(parts) and pos > 0 and not note.text[pos : p.start].strip()
        size += p.start - pos
        value = note.text[p.start : p.end]
        replaced = replaced if joined else rng.random() < replace
        if replaced:
            value = f"[{p.kind}]"
        else:
            left.append(Phi(size, size + len(value), p.kind, p.role))
        parts.append(value)
        size += len(value)
        pos = p.end
    parts.append(note.text[pos:])
    return Note("".join(parts), note.kind, left, note.keep)


def main() -> int:
    if os.environ.get("PYTHONHASHSEED") != "0":
        # the note generator and Faker iterate over sets in places: string hashing must be fixed for the same
        # notes (and so the same weights) in every run
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])  # noqa: S606 - this script, same interpreter
    ap = argparse.ArgumentParser()
    ap.add_argument("--notes", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=20261206)
    ap.add_argument("--iterations", type=int, default=120)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--word-dropout", type=float, default=0.3)
    ap.add_argument("--scrubbed-share", type=float, default=0.35, help="notes also added in scrubbed form")
    ap.add_argument("--left", type=float, default=0.15, help="identifiers a scrubbed copy keeps")
    args = ap.parse_args()
    started = time.time()
    rng = random.Random(args.seed)
    trainer = pycrfsuite.Trainer(verbose=False)
    tokens = 0
    notes = generate_notes(args.notes, seed=args.seed, family="train")
    notes += [scrubbed_copy(n, rng, 1.0 - args.left) for n in notes if rng.random() < args.scrubbed_share]
    for note in notes:
        _, mode = _case_normalised(note.text)
        spans, xseq = sequence_features(note.text, mode)
        ys = labels(note, spans)
        for feats, y in zip(xseq, ys, strict=True):
            # word dropout: some ordinary words lose their identity, so an unseen word is not read as a name
            if y == "O" and rng.random() < args.word_dropout:
                feats[:] = [f for f in feats if not f.startswith("w=")]
        trainer.append(xseq, ys)
        tokens += len(spans)
    trainer.set_params(
        {
            "c1": 0.05,
            "c2": 0.01,
            "max_iterations": args.iterations,
            "feature.possible_transitions": True,
            "feature.minfreq": 2,
        }
    )
    tmp = args.out.with_suffix(".tmp")
    trainer.train(str(tmp))
    tmp.replace(args.out)
    print(
        f"{args.out}: {args.notes} notes, {tokens} tokens, {args.out.stat().st_size} bytes, "
        f"{time.time() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
