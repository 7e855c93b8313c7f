"""Measure the scrubber on held-out generated notes: recall per identifier type and name role, kept clinical
phrases, records per CPU-second. A value counts as caught when no piece of 4+ characters of it survives.

    PYTHONPATH=$PWD .venv/bin/python scripts/deid/measure_scrub.py --notes 300 --seed 777
    ... --write notes.jsonl  (only write the labelled notes, to score another checkout with --read notes.jsonl)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import regex


def caught(value: str, out: str) -> bool:
    low = out.lower()
    for piece in regex.findall(r"[\p{L}\p{M}\d]+", value):
        if len(piece) >= 4 and regex.search(rf"(?<![\p{{L}}\d]){regex.escape(piece.lower())}(?![\p{{L}}\d])", low):
            return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--notes", type=int, default=300)
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--family", default="heldout")
    ap.add_argument("--write", type=Path)
    ap.add_argument("--read", type=Path)
    ap.add_argument("--misses", type=int, default=0, help="print this many missed values per type (synthetic only)")
    args = ap.parse_args()
    if args.read:
        rows = [json.loads(line) for line in args.read.read_text(encoding="utf-8").splitlines()]
    else:
        from appliance.intake._tagger._notes import generate_notes

        rows = [
            {
                "text": n.text,
                "kind": n.kind,
                "keep": n.keep,
                "phi": [{"type": p.kind, "role": p.role, "value": n.value(p)} for p in n.phi],
            }
            for n in generate_notes(args.notes, seed=args.seed, family=args.family)
        ]
    if args.write:
        args.write.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return 0
    from appliance.intake import Scrubber

    scrubber = Scrubber()
    scrubber.scrub_text("warm up: Dr. Smith")
    hits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    missed: dict[str, list[str]] = {}
    cpu = 0.0
    size = 0
    for row in rows:
        t0 = time.process_time()
        out, _ = scrubber.scrub_text(row["text"])
        cpu += time.process_time() - t0
        size += len(row["text"].encode())
        for phi in row["phi"]:
            if sum(len(p) >= 4 for p in regex.findall(r"[\p{L}\p{M}\d]+", phi["value"])) == 0:
                continue  # nothing of 4+ characters to leak (initials, "Li")
            keys = [phi["type"]] + ([f"NAME/{phi['role']}"] if phi["role"] else [])
            if phi["type"] != "NAME":
                keys.append("STRUCTURED")
            ok = caught(phi["value"], out)
            for k in keys:
                totals[k] += 1
                hits[k] += ok
            if not ok:
                missed.setdefault(phi["type"], []).append(phi["value"])
        for phrase in row["keep"]:
            totals["KEPT"] += 1
            hits["KEPT"] += phrase in out
            if phrase not in out:
                missed.setdefault("KEPT", []).append(phrase)
    for k in sorted(totals):
        print(f"{k:18} {hits[k] / totals[k]:.3f}  ({hits[k]}/{totals[k]})")
    print(f"records/CPU-s      {len(rows) / cpu:.0f}  (mean {size / len(rows):.0f} bytes/record)")
    for k, values in sorted(missed.items()):
        if args.misses:
            print(k, values[: args.misses])
    return 0


if __name__ == "__main__":
    sys.exit(main())
