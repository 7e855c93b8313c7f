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

__all__ = [
    "API_LIMITS",
    "ApiLimits",
    "ApprovalLimits",
    "GenerateParameters",
    "GenerationParams",
    "SamplingParams",
]
