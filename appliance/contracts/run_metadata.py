"""A training run's ``metadata.json`` (contracts.md "Training output"): one model, written and read.

Training builds a ``RunMetadata`` and writes ``run_metadata_json(metadata)``; the registry validates the file with
the same model (every problem at once). Keys a newer writer adds are kept, not refused (``extra="allow"``): the
DP run's mechanics (``dp.noise_seeding``, ``dp.sampling_seeding``, ``dp.grad_sample_mode``,
``dp.noise_per_coordinate``) and ``canaries.sealed`` travel that way, as readers must accept their absence
(adapters trained before them lack them).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "METADATA_FORMAT_VERSION",
    "BaseModelRef",
    "CanaryReport",
    "DPParameters",
    "DatasetRef",
    "PrivacyAuditReport",
    "QuantizationInfo",
    "RunMetadata",
    "run_metadata_json",
]

METADATA_FORMAT_VERSION: Literal[1] = 1


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class BaseModelRef(_Loose):
    """The base model a run trained on: its directory and content hash (``appliance.models.model_hash``)."""

    path: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class DatasetRef(_Loose):
    """The prepared dataset a run trained on (its directory holds ``manifest.json``)."""

    fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")
    path: str = Field(min_length=1)


class DPParameters(_Loose):
    """``metadata.dp``: the guarantee (the ledger's epsilon at the run's delta) and the mechanism behind it."""

    enabled: bool
    epsilon: float | None = Field(default=None, ge=0)
    delta: float | None = Field(default=None, ge=0, lt=1)
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    max_grad_norm: float | None = None
    privacy_unit: Literal["record", "subject"] = "record"
    accountant: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> DPParameters:
        if self.enabled and (self.epsilon is None or self.delta is None):
            raise ValueError("a DP run must record its epsilon and delta")
        return self


class CanaryReport(_Loose):
    """``metadata.canaries``: counts and exposures only, never a secret (``sealed``: canaries.sealed beside it)."""

    count: int = Field(ge=0)
    exposures: list[dict[str, Any]] = Field(default_factory=list)  # [{"repetitions": int, "exposure": bits}]
    max_exposure: float | None = None


class QuantizationInfo(_Loose):
    """How the base was held in training and what the adapter is to be served on (absent before QLoRA)."""

    method: Literal["none", "nf4"]
    compute_dtype: Literal["float32", "bfloat16", "float16"]
    adapter_dtype: Literal["float32", "bfloat16", "float16"]
    double_quant: bool | None = None
    serving: Literal["unquantised", "engine"]


class PrivacyAuditReport(_Loose):
    """The one-run privacy audit's counts and bound (Steinke et al. 2023; ``appliance train --audit-canaries``)."""

    m: int = Field(ge=2)  # audit canaries, each trained on with probability 1/2
    guesses: int = Field(ge=0)
    correct: int = Field(ge=0)
    epsilon_lower_bound: float = Field(ge=0)  # empirical, at confidence 1 - significance, at ``delta``
    claimed_epsilon: float | None = None  # what the accountant claims (None: no DP)
    delta: float = Field(gt=0, lt=1)
    significance: float = Field(gt=0, lt=1)

    @model_validator(mode="after")
    def _counts(self) -> PrivacyAuditReport:
        if not self.correct <= self.guesses <= self.m:
            raise ValueError("need correct <= guesses <= m")
        return self


class RunMetadata(_Loose):
    """``metadata.json`` of a training run (contracts.md); unknown extra keys are kept, not refused."""

    format_version: Literal[1]  # METADATA_FORMAT_VERSION; a newer one is refused by readers
    appliance_version: str | None = None
    run_id: str = Field(min_length=1, max_length=128)
    trained_by: str = Field(min_length=1, max_length=128)
    base_model: BaseModelRef
    dataset: DatasetRef
    dp: DPParameters
    lora: dict[str, Any]  # r, alpha, dropout, target_modules
    hyperparameters: dict[str, Any]  # learning_rate, batch_size, max_length, steps, seed
    steps: int = Field(ge=0)  # optimizer steps in the adapter
    metrics: dict[str, Any]  # eval_loss, perplexity, train_loss
    evaluation: dict[str, Any] | None = None  # appliance.evaluation's report (base vs adapter on the eval split)
    quantization: QuantizationInfo | None = None  # None: trained before QLoRA
    canaries: CanaryReport
    privacy_audit: PrivacyAuditReport | None = None  # absent or null: the run was not audited
    packages: dict[str, Any] = Field(default_factory=dict)
    started_at: str | None = None
    finished_at: str | None = None


def run_metadata_json(metadata: RunMetadata) -> dict[str, Any]:
    """The JSON object written as ``metadata.json``: the fields the writer set (an absent optional key stays
    absent, as contracts.md allows), extra keys included."""
    return metadata.model_dump(mode="json", exclude_unset=True)
