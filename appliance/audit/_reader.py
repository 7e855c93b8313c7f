"""The gateway's read view of the trail (its ``AuditReader`` port): search, export and verify, off the event loop."""

from __future__ import annotations

import asyncio
import heapq
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance.audit._checkpoint import chain_public_keys
from appliance.audit._export import ExportFilter, export, parse_time
from appliance.audit._sinks._base import ChainReader, chain_records
from appliance.audit._verify import verify_store
from appliance.errors import ValidationFailed
from appliance.protocols import KeyService

__all__ = ["StoreReader", "reader_for"]

_FILTERS = frozenset({"actor", "adapter", "outcome", "since", "until", "type"})


def _filter(filters: Mapping[str, Any]) -> ExportFilter:
    unknown = set(filters) - _FILTERS
    if unknown:
        raise ValidationFailed(f"unknown audit filters: {sorted(unknown)}")

    def get(name: str) -> str | None:
        value = filters.get(name)
        return str(value) if value else None

    since, until = get("since"), get("until")
    return ExportFilter(
        since=parse_time(since) if since else None,
        until=parse_time(until) if until else None,
        actor=get("actor"),
        adapter=get("adapter"),
        type=get("type"),
        outcome=get("outcome"),
    )


class StoreReader:
    """Search, export (records file only; the CLI export adds the signed manifest) and verify a store."""

    def __init__(self, store: ChainReader, keys: KeyService, signer: str | None = None) -> None:
        self._store, self._keys = store, keys
        self._signer = signer  # the writer whose key signs an export's manifest (None: the node's one key)

    def search_sync(self, filters: Mapping[str, Any], limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` records matching the filters (checkpoints excluded), newest first."""
        wanted = _filter(filters)
        newest: list[tuple[str, int, str, dict[str, Any]]] = []
        for writer_id in self._store.writers():
            for _, record in chain_records(self._store, writer_id):
                if record.get("type") == "audit.checkpoint" or not wanted.in_range(record):
                    continue
                if wanted.matches(record):
                    item = (str(record.get("time")), int(record.get("seq", 0)), writer_id, record)
                    if len(newest) < limit:
                        heapq.heappush(newest, item)
                    elif item[:3] > newest[0][:3]:
                        heapq.heapreplace(newest, item)
        return [item[3] for item in sorted(newest, key=lambda i: i[:3], reverse=True)]

    def export_sync(self, filters: Mapping[str, Any], fmt: str) -> bytes:
        """The matching records as JSON lines or CSV (the same bytes `appliance audit export` writes)."""
        if fmt not in ("jsonl", "csv"):
            raise ValidationFailed("format must be jsonl or csv")
        with tempfile.TemporaryDirectory(prefix="audit-export-") as tmp:
            out = Path(tmp) / "export"
            export(self._store, self._keys, out, filters=_filter(filters), fmt=fmt, workers=1, signer=self._signer)  # type: ignore[arg-type]
            return (out / f"records.{fmt}").read_bytes()

    def verify_sync(self) -> dict[str, Any]:
        """``{"ok", "records", "first_bad_seq", "problems", "key_fingerprint"}`` for the whole store."""
        report = verify_store(self._store, chain_public_keys(self._keys), workers=1)
        problems = report.all_problems
        seqs = [p.seq for p in problems if p.seq is not None]
        return {
            "ok": report.ok,
            "records": report.records,
            "first_bad_seq": min(seqs) if seqs else None,
            "problems": [str(p) for p in problems[:50]],
            "key_fingerprint": report.key_fingerprint,
        }

    async def search(self, filters: Mapping[str, Any], limit: int) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.search_sync, filters, limit)

    async def export(self, filters: Mapping[str, Any], fmt: str) -> bytes:
        return await asyncio.to_thread(self.export_sync, filters, fmt)

    async def verify(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.verify_sync)


def reader_for(audit: Any) -> StoreReader | None:
    """The reader of the store an open ``AuditWriter`` writes to (None for anything else)."""
    from appliance.audit._writer import AuditWriter

    if not isinstance(audit, AuditWriter):
        return None
    return StoreReader(audit.store(), audit.keys, audit.writer_id)
