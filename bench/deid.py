"""De-identification side by side: our scrubber vs philter-lite on the project's labelled synthetic notes.

Both run on the same N notes from ``appliance.intake.generate_labelled_notes`` (five note types, names from many
locales, every Safe Harbor type, clinical phrases to keep) and are scored by the same rule as `appliance data
evaluate-scrub` (``appliance/intake/_evaluate.py``: a value is caught when no 4 characters of one of its pieces
survive in place). Printed: recall per type, names by role, structured identifiers, clinical phrases kept and
records per CPU-second (the scrubbing loop only, in each tool's own process).

philter-lite (the maintained fork of UCSF's Philter) runs from its own venv, bench/.venv-philter, created on first
use with ``philter-lite==0.6.0``; it is called as its CLI does: ``load_filters(configs/philter_delta.toml)``,
``detect_phi`` then ``transform_text_asterisk``. It needs NLTK's ``averaged_perceptron_tagger_eng``, which neither
PyPI nor Debian carries: the bench reads it from ``$NLTK_DATA``, else ``../shared/data/nltk_data`` (relative to
the repository root), and skips the peer, saying why, when it is absent.

    .venv/bin/python bench/deid.py [--records 600] [--seed 13] [--skip-philter] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from appliance.intake._evaluate import Evaluation, LabelledRecord, evaluate_scrubber, read_labelled, score  # noqa: E402
from appliance.intake._labelled import write_labelled_notes  # noqa: E402

PHILTER_VENV = ROOT / "bench" / ".venv-philter"
PHILTER_VERSION = "0.6.0"
TAGGER = Path("taggers") / "averaged_perceptron_tagger_eng"
console = Console()

# runs inside the philter venv: texts in on stdin (JSON list), asterisked texts and CPU seconds out on stdout
_WORKER = r"""
import json, sys, time
from importlib import resources
import philter_lite
texts = json.load(sys.stdin)
config = resources.files("philter_lite") / "configs" / "philter_delta.toml"
filters = philter_lite.load_filters(str(config))
philter_lite.detect_phi("Warm-up note for Dr. Smith on 1/2/2020.", patterns=filters)
cpu, wall = time.process_time(), time.perf_counter()
out = []
for text in texts:
    include_map, _, _ = philter_lite.detect_phi(text, patterns=filters)
    out.append(philter_lite.transform_text_asterisk(text, include_map))
cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
json.dump({"outputs": out, "cpu_seconds": cpu, "wall_seconds": wall}, sys.stdout)
"""


def nltk_data() -> Path:
    """Where the NLTK tagger is looked for: $NLTK_DATA, else ../shared/data/nltk_data beside the repository."""
    env = os.environ.get("NLTK_DATA")
    return Path(env) if env else (ROOT.parent / "shared" / "data" / "nltk_data").resolve()


def ensure_philter() -> Path | str:
    """The philter venv's python (created when missing); a reason string when it cannot be used."""
    python = PHILTER_VENV / "bin" / "python"
    if not (nltk_data() / TAGGER).is_dir():
        return (
            f"NLTK's averaged_perceptron_tagger_eng is not under {nltk_data()} (set NLTK_DATA to a directory "
            "holding taggers/averaged_perceptron_tagger_eng in NLTK 3.10's JSON form)"
        )
    if python.exists():
        return python
    try:
        subprocess.run([sys.executable, "-m", "venv", str(PHILTER_VENV)], check=True)
        subprocess.run(
            [str(PHILTER_VENV / "bin" / "pip"), "install", "-q", f"philter-lite=={PHILTER_VERSION}"],
            check=True,
            capture_output=True,
            timeout=900,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return f"philter-lite=={PHILTER_VERSION} could not be installed: {exc}"
    return python


def run_philter(python: Path, records: list[LabelledRecord]) -> Evaluation:
    """Scrub every record's text with philter-lite in its venv and score the asterisked output."""
    env = {**os.environ, "NLTK_DATA": str(nltk_data())}
    texts = [rec.text for rec in records]
    proc = subprocess.run(
        [str(python), "-c", _WORKER],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=3600,
    )
    result = json.loads(proc.stdout)
    # a run of asterisks is what philter removed: read it as a placeholder, as our own output is read
    outputs = [re.sub(r"\*+", "[PHI]", out) for out in result["outputs"]]
    ev = score(records, outputs)
    ev.cpu_seconds, ev.wall_seconds = result["cpu_seconds"], result["wall_seconds"]
    return ev


def _fmt(tally: dict[str, Any], key: str = "recall") -> str:
    value = tally.get(key)
    return "-" if value is None else f"{value:.3f}"


def table(ours: dict[str, Any], peer: dict[str, Any] | None, title: str) -> Table:
    out = Table(title=title)
    out.add_column("figure")
    out.add_column("values", justify="right")
    out.add_column("ours", justify="right")
    out.add_column(f"philter-lite {PHILTER_VERSION}", justify="right")

    def row(label: str, ours_t: dict[str, Any], peer_t: dict[str, Any] | None, key: str = "recall", **kw: Any) -> None:
        out.add_row(label, str(ours_t["total"]), _fmt(ours_t, key), _fmt(peer_t, key) if peer_t else "skipped", **kw)

    for kind, tally in ours["recall_by_type"].items():
        row(kind, tally, peer["recall_by_type"].get(kind) if peer else None)
    for role, tally in ours["names_by_role"].items():
        row(f"NAME ({role})", tally, peer["names_by_role"].get(role) if peer else None)
    row("person names, all roles", ours["names"], peer["names"] if peer else None, style="bold")
    row("structured identifiers", ours["structured"], peer["structured"] if peer else None, style="bold")
    row("clinical phrases kept", ours["kept"], peer["kept"] if peer else None, key="rate", style="bold")
    out.add_row(
        "records per CPU-second",
        str(ours["records"]),
        str(ours["records_per_cpu_second"]),
        str(peer["records_per_cpu_second"]) if peer else "skipped",
        style="bold",
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=600, help="labelled notes to generate (default 600)")
    parser.add_argument("--seed", type=int, default=13, help="generator seed (default 13)")
    parser.add_argument("--skip-philter", action="store_true", help="measure only our scrubber")
    parser.add_argument("--json", type=Path, default=None, help="also write both reports (counts only) here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="deid-bench-") as tmp:
        path = Path(tmp) / "labelled.jsonl"
        write_labelled_notes(path, args.records, args.seed)
        records = read_labelled(path)
    ours = evaluate_scrubber(records).as_dict()
    peer: dict[str, Any] | None = None
    if not args.skip_philter:
        python = ensure_philter()
        if isinstance(python, str):
            console.print(f"[yellow]philter-lite skipped:[/] {python}")
        else:
            with console.status(f"philter-lite on {len(records)} notes ..."):
                peer = run_philter(python, records).as_dict()
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    console.print(table(ours, peer, f"de-identification on {len(records)} labelled notes (seed {args.seed})"))
    console.print(f"machine: {machine}")
    if args.json is not None:
        body = {"records": len(records), "seed": args.seed, "machine": machine, "ours": ours, "philter_lite": peer}
        args.json.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
