"""Contracts shared by several stages: plain data shapes and their conversions (the ground floor).

Nothing here imports a stage (``appliance.serving``, ``appliance.gateway``...); stages import these names from
this package. A plain re-export list: each module owns one contract.
"""

from appliance.contracts.approval import ApprovalLimits
from appliance.contracts.generation import (
    API_LIMITS,
    ApiLimits,
    GenerateParameters,
    GenerationParams,
    SamplingParams,
)
from appliance.contracts.ledger import LedgerEntry, ledger_entry, read_ledger_entry
from appliance.contracts.run_metadata import (
    METADATA_FORMAT_VERSION,
    BaseModelRef,
    CanaryReport,
    DatasetRef,
    DPParameters,
    PrivacyAuditReport,
    QuantizationInfo,
    RunMetadata,
    run_metadata_json,
)
from appliance.contracts.subjects import subject_digest
from appliance.contracts.versions import package_version

__all__ = [
    "API_LIMITS",
    "METADATA_FORMAT_VERSION",
    "ApiLimits",
    "ApprovalLimits",
    "BaseModelRef",
    "CanaryReport",
    "DPParameters",
    "DatasetRef",
    "GenerateParameters",
    "GenerationParams",
    "LedgerEntry",
    "PrivacyAuditReport",
    "QuantizationInfo",
    "RunMetadata",
    "SamplingParams",
    "ledger_entry",
    "package_version",
    "read_ledger_entry",
    "run_metadata_json",
    "subject_digest",
]
