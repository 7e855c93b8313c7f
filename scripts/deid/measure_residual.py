"""Measure the residual check of `data prepare` (``residual_counts``) on scrubbed text and on text whose names were
left in: suspected identifiers per 1000 records by type, and on labelled notes how many suspects are false (no
labelled value of the record holds the suspected word).

    PYTHONPATH=$PWD .venv/bin/python scripts/deid/measure_residual.py --records 300 --seed 13 [--threshold 0.3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from appliance.intake import Scrubber, generate_labelled_notes, generate_records, residual_counts
from appliance.intake._residual import RESIDUAL_NAME_THRESHOLD
from appliance.intake._suspects import suspect_name_spans

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "synthetic_clinical.jsonl"


def _scrubbed(records: list[dict[str, Any]]) -> list[tuple[str, str, list[str]]]:
    scrubber = Scrubber()
    out = []
    for rec in records:
        fields: dict[str, Any] = {k: rec[k] for k in ("instruction", "response", "metadata") if k in rec}
        done, _ = scrubber.scrub_fields(fields, context=rec.get("metadata"))
        values = [p["value"] for p in rec.get("phi", [])]
        out.append((done["instruction"], done["response"], values))
    return out


def _names_left(records: list[dict[str, Any]]) -> list[tuple[str, str, list[str]]]:
    """Labelled notes with every identifier but the names replaced by its placeholder: names not scrubbed."""
    out = []
    for rec in records:
        text = rec["instruction"]
        others = sorted((p for p in rec["phi"] if p["type"] != "NAME"), key=lambda p: -len(p["value"]))
        for p in others:
            text = text.replace(p["value"], f"[{p['type']}]")
        out.append((text, rec["response"], [p["value"] for p in rec["phi"]]))
    return out


def _measure(name: str, rows: list[tuple[str, str, list[str]]], threshold: float, show: int) -> None:
    counts: Counter[str] = Counter()
    false = 0
    shown = 0
    started = time.process_time()
    for instruction, response, values in rows:
        for text in (instruction, response):
            counts.update(residual_counts(text, threshold=threshold))
            if values:
                low = " ".join(values).lower()
                for s, e in suspect_name_spans(text, threshold):
                    if text[s:e].lower() not in low:
                        false += 1
                        if shown < show:
                            shown += 1
                            print("   false:", repr(text[max(0, s - 40) : e + 30]), file=sys.stderr)
    cpu = time.process_time() - started
    total = sum(counts.values())
    print(
        f"{name:28s} records={len(rows):4d} suspects={total:5d} per1000={1000 * total / len(rows):8.1f} "
        f"false_name_suspects={false if rows and rows[0][2] else '-'} {dict(counts.most_common(6))} cpu={cpu:.1f}s"
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=300)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--threshold", type=float, default=RESIDUAL_NAME_THRESHOLD)
    ap.add_argument("--show", type=int, default=0, help="print this many false suspects (stderr, synthetic only)")
    ap.add_argument("--sets", default="example,synth,labelled,names-left")
    args = ap.parse_args()
    sets = args.sets.split(",")
    if "example" in sets and EXAMPLE.is_file():
        example = [json.loads(line) for line in EXAMPLE.read_text(encoding="utf-8").splitlines()]
        _measure("example (scrubbed)", _scrubbed(example), args.threshold, args.show)
    if "synth" in sets:
        _measure("synth (scrubbed)", _scrubbed(generate_records(args.records, args.seed)), args.threshold, args.show)
    labelled = generate_labelled_notes(args.records, args.seed) if {"labelled", "names-left"} & set(sets) else []
    if "labelled" in sets:
        _measure("labelled (scrubbed)", _scrubbed(labelled), args.threshold, args.show)
    if "names-left" in sets:
        _measure("labelled, names left in", _names_left(labelled), args.threshold, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
