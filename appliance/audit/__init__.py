"""The audit trail: every access recorded durably before it is answered, tamper-evident, PHI-free, exportable.

See ``README.md`` in this package for the design. Other stages use :func:`open_audit_log`, :func:`digest`
and build their records with :func:`audit_event` and its actors (:func:`actor_fields`, :func:`cli_actor`, ...).
"""

from __future__ import annotations

from appliance.audit._canonical import GENESIS_HASH, HASH_RULE
from appliance.audit._digest import digest, digests, versioned_digest
from appliance.audit._event import (
    ActorFields,
    AdapterFields,
    AuditEventFields,
    AuthMethod,
    OutcomeStatus,
    SourceFields,
    actor_fields,
    adapter_fields,
    anonymous_actor,
    audit_event,
    cli_actor,
    invoking_user,
    system_actor,
)
from appliance.audit._export import ExportFilter, export
from appliance.audit._export_verify import verify_export
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
    "ActorFields",
    "AdapterFields",
    "AuditEventFields",
    "AuditWriter",
    "AuthMethod",
    "ExportFilter",
    "OutcomeStatus",
    "RetentionPolicy",
    "SourceFields",
    "StoreReader",
    "VerifyReport",
    "actor_fields",
    "adapter_fields",
    "anonymous_actor",
    "audit_event",
    "cli_actor",
    "digest",
    "digests",
    "export",
    "invoking_user",
    "load_retention_policy",
    "open_audit_log",
    "open_audit_store",
    "reader_for",
    "recordable_identity",
    "system_actor",
    "verify_export",
    "verify_store",
    "versioned_digest",
]
