"""The export's contract, shared by the exporter and the offline verifier: the format name, the CSV columns and
how a record fills them, the message the manifest signature covers, and seqs as compact runs."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Literal

from appliance.audit._canonical import canonical_json

__all__ = ["CSV_COLUMNS", "FORMAT", "MAX_MANIFEST_BYTES", "Format", "csv_row", "manifest_message", "seq_runs"]

FORMAT = "appliance-audit-export-v1"
MAX_MANIFEST_BYTES = 64 << 20  # a manifest is read whole; a larger one is refused unread
Format = Literal["jsonl", "csv"]

CSV_COLUMNS = [
    "writer_id",
    "seq",
    "time",
    "type",
    "action",
    "actor_subject",
    "actor_auth_method",
    "actor_client_id",
    "actor_session_id",
    "actor_roles",
    "source_ip",
    "source_user_agent",
    "route",
    "adapter_name",
    "adapter_version",
    "adapter_fingerprint",
    "outcome_status",
    "outcome_http_status",
    "outcome_error_class",
    "tokens_prompt",
    "tokens_generated",
    "latency_ms",
    "request_id",
    "digest_prompt",
    "digest_output",
    "details",
    "event_id",
    "prev_hash",
    "hash",
    "record",
]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, list | dict):
        text = canonical_json(value).decode()
    else:
        text = str(value)
    # Spreadsheet formula injection: a cell must never start with a formula character.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_row(record: Mapping[str, Any], line: bytes) -> list[str]:
    """The readable CSV columns of a record, then the verbatim line."""
    actor = record.get("actor") or {}
    source = record.get("source") or {}
    adapter = record.get("adapter") or {}
    outcome = record.get("outcome") or {}
    tokens = record.get("tokens") or {}
    digests = record.get("digests") or {}
    values = [
        record.get("writer_id"),
        record.get("seq"),
        record.get("time"),
        record.get("type"),
        record.get("action"),
        actor.get("subject"),
        actor.get("auth_method"),
        actor.get("client_id"),
        actor.get("session_id"),
        actor.get("roles"),
        source.get("ip"),
        source.get("user_agent"),
        record.get("route"),
        adapter.get("name"),
        adapter.get("version"),
        adapter.get("fingerprint"),
        outcome.get("status"),
        outcome.get("http_status"),
        outcome.get("error_class"),
        tokens.get("prompt"),
        tokens.get("generated"),
        record.get("latency_ms"),
        record.get("request_id"),
        digests.get("prompt"),
        digests.get("output"),
        record.get("details") or None,
        record.get("event_id"),
        record.get("prev_hash"),
        record.get("hash"),
    ]
    return [*(_cell(v) for v in values), line.decode("utf-8")]


def manifest_message(manifest: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return b"appliance-audit-export:v1:" + hashlib.sha256(canonical_json(body)).hexdigest().encode()


def seq_runs(seqs: list[int]) -> list[list[int]]:
    """Sorted seqs as [first, last] runs (compact in the manifest)."""
    runs: list[list[int]] = []
    for seq in seqs:
        if runs and seq == runs[-1][1] + 1:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq])
    return runs
