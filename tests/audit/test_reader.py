"""The gateway's read view (``reader_for(audit)``): search, export and verify over the real store."""

from __future__ import annotations

import json

import pytest

from appliance.audit import AuditWriter, reader_for
from appliance.config import Settings
from appliance.errors import ValidationFailed
from tests.audit.conftest import make_event


async def test_search_export_verify(audit_log: AuditWriter) -> None:
    """Search returns the newest matching events first; export gives verbatim lines; verify says intact."""
    for i in range(6):
        await audit_log.record(
            make_event(request_id=f"r-{i}", outcome={"status": "denied" if i % 3 == 0 else "success"})
        )
    reader = reader_for(audit_log)
    assert reader is not None
    denied = await reader.search({"outcome": "denied"}, 10)
    assert [e["request_id"] for e in denied] == ["r-3", "r-0"]
    assert len(await reader.search({"actor": "alice"}, 4)) == 4
    assert await reader.search({"since": "2999-01-01"}, 10) == []
    lines = (await reader.export({"outcome": "denied"}, "jsonl")).splitlines()
    assert [json.loads(x)["type"] for x in lines].count("gateway.request") == 2
    assert (await reader.export({}, "csv")).startswith(b"writer_id,seq,time")
    result = await reader.verify()
    assert result["ok"] and result["records"] >= 8 and result["first_bad_seq"] is None


async def test_unknown_filter_is_refused(audit_log: AuditWriter) -> None:
    """A filter the reader does not know is a validation error, not silently ignored."""
    reader = reader_for(audit_log)
    assert reader is not None
    with pytest.raises(ValidationFailed):
        await reader.search({"prompt": "x"}, 5)
    assert reader_for(object()) is None


async def test_search_passes_over_lines_that_are_not_records(audit_log: AuditWriter, settings: Settings) -> None:
    """A JSON line that is no object (a number, a list) or a torn line in a segment is passed over by search (as
    export does); the records around it are still found."""
    await audit_log.record(make_event(request_id="before"))
    segment = max(settings.audit_dir.rglob("segment-*.jsonl"))
    with segment.open("ab") as handle:
        handle.write(b'5\n["a"]\n{"torn":\n')
    reader = reader_for(audit_log)
    assert reader is not None
    found = await reader.search({}, 50)
    assert "before" in [e.get("request_id") for e in found]
    assert all(isinstance(e, dict) for e in found)
