"""The audit trail: every access recorded durably before it is answered, tamper-evident, PHI-free, exportable.

See ``README.md`` in this package for the design. Other stages use :func:`open_audit_log` and :func:`digest`.
"""

from __future__ import annotations

from appliance.audit._canonical import GENESIS_HASH, HASH_RULE
from appliance.audit._digest import digest, digests, versioned_digest
from appliance.audit._export import ExportFilter, export, verify_export
from appliance.audit._factory import open_audit_log, open_audit_store
from appliance.audit._identity import IDENTITY_MAX_CHARS, recordable_identity
from appliance.audit._reader import StoreReader, reader_for
from appliance.audit._retention import RetentionPolicy, load_retention_policy
from appliance.audit._verify import VerifyReport, verify_store
from appliance.audit._writer import AuditWriter

__all__ = [
    "GENESIS_HASH",
    "HASH_RULE",
    "IDENTITY_MAX_CHARS",
    "AuditWriter",
    "ExportFilter",
    "RetentionPolicy",
    "StoreReader",
    "VerifyReport",
    "digest",
    "digests",
    "export",
    "load_retention_policy",
    "open_audit_log",
    "open_audit_store",
    "reader_for",
    "recordable_identity",
    "verify_export",
    "verify_store",
    "versioned_digest",
]
