"""The audit trail: every access recorded durably before it is answered, tamper-evident, PHI-free, exportable.

See ``README.md`` in this package for the design. Other stages use :func:`open_audit_log` and :func:`digest`.
"""

from __future__ import annotations

from appliance.audit._canonical import GENESIS_HASH, HASH_RULE
from appliance.audit._digest import digest
from appliance.audit._factory import open_audit_log
from appliance.audit._writer import AuditWriter

__all__ = [
    "GENESIS_HASH",
    "HASH_RULE",
    "AuditWriter",
    "digest",
    "open_audit_log",
]
