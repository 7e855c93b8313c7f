"""`data scrub`: the same records with PHI replaced, written atomically, and a report of counts per type.

``subject_id`` is kept verbatim: it is the linkage key that ``data prepare`` turns into a salted digest (the
scrubbed file is an intermediate for review, not a release). ``instruction``, ``response`` and every string in
``metadata`` are scrubbed, and so are metadata keys (a key can itself be PHI); metadata keys that name an
identifier (``mrn``, ``dob``, ``phone``...) have their whole value replaced.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from appliance._fs import atomic_write
from appliance.errors import Conflict, StorageUnavailable
from appliance.intake._schema import DEFAULT_MAX_RECORD_BYTES, read_records
from appliance.intake._scrubber import Scrubber, ScrubReport

__all__ = ["scrub_file"]

log = structlog.get_logger("appliance.intake")


def scrub_file(
    source: Path,
    out: Path,
    *,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    on_record: Callable[[int, int], None] | None = None,
) -> ScrubReport:
    """Validate ``source``, write its scrubbed records to ``out`` (temp file + rename) and return the report."""
    if out.exists() and not overwrite:
        raise Conflict(f"output {out} already exists; choose another path or pass --force")
    if out.resolve() == source.resolve():
        raise Conflict("the output must not be the input file")
    records, _ = read_records(source, max_record_bytes=max_record_bytes, progress=progress)
    scrubber = Scrubber()
    report = ScrubReport(records=len(records))
    lines: list[str] = []
    for done, rec in enumerate(records, start=1):
        if on_record is not None and (done % 100 == 0 or done == len(records)):
            on_record(done, len(records))
        fields: dict[str, Any] = {"instruction": rec.instruction, "response": rec.response}
        if rec.metadata is not None:
            fields["metadata"] = rec.metadata
        clean, counts = scrubber.scrub_fields(fields)
        report.add(counts)
        if counts:
            report.records_changed += 1
        row: dict[str, Any] = {"instruction": clean["instruction"], "response": clean["response"]}
        if rec.subject_id is not None:
            row["subject_id"] = rec.subject_id
        if "metadata" in clean:
            row["metadata"] = clean["metadata"]
        lines.append(json.dumps(row, ensure_ascii=False))
    try:  # owner only: residual PHI is possible
        atomic_write(out, "".join(line + "\n" for line in lines).encode("utf-8"), mode=0o600)
    except OSError as exc:
        raise StorageUnavailable(f"cannot write {out}: {exc.strerror}") from exc
    log.info("intake.scrubbed", records=report.records, records_changed=report.records_changed, **report.as_dict())
    return report
