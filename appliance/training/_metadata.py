"""``metadata.json`` of a finished run, built as the contract (``appliance.contracts.RunMetadata``).

``metadata.dp.epsilon`` is the ledger's (conservative) epsilon for the steps charged, at the run's own delta.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import structlog

from appliance.contracts import (
    METADATA_FORMAT_VERSION,
    BaseModelRef,
    CanaryReport,
    DatasetRef,
    DPParameters,
    PrivacyAuditReport,
    QuantizationInfo,
    RunMetadata,
    package_version,
)
from appliance.training._config import TrainConfig
from appliance.training._phases import Evaluated, Prepared, Progress
from appliance.training._quantization import quantization_metadata

__all__ = ["NOISE_SEEDING", "SAMPLING_SEEDING", "now", "run_metadata"]

log = structlog.get_logger("appliance.training")

NOISE_SEEDING = "os-csprng-per-step"  # metadata.dp.noise_seeding: the noise generator, reseeded before every step
SAMPLING_SEEDING = "os-csprng"  # metadata.dp.sampling_seeding: the Poisson sampler's generator


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _dp(cfg: TrainConfig, prepared: Prepared, epsilon: float | None) -> DPParameters:
    if not cfg.dp:
        return DPParameters(  # every key present, null: the run carries no guarantee
            enabled=False,
            epsilon=epsilon,
            delta=None,
            noise_multiplier=None,
            sample_rate=None,
            max_grad_norm=None,
            privacy_unit=cfg.privacy_unit,
            accountant="rdp",
        )
    mechanics: dict[str, Any] = {  # extra keys of metadata.dp: how the noise and sampling were drawn
        "noise_seeding": NOISE_SEEDING,
        "sampling_seeding": SAMPLING_SEEDING,
        "grad_sample_mode": cfg.grad_sample_mode,
        "noise_per_coordinate": (prepared.noise_multiplier or 0.0) * cfg.max_grad_norm / cfg.batch_size,
    }
    return DPParameters(
        enabled=True,
        epsilon=epsilon,
        delta=prepared.delta,
        noise_multiplier=prepared.noise_multiplier,
        sample_rate=prepared.sample_rate,
        max_grad_norm=cfg.max_grad_norm,
        privacy_unit=cfg.privacy_unit,
        accountant="rdp",
        **mechanics,
    )


def _privacy_audit(audit: dict[str, Any] | None, epsilon: float | None, run_id: str) -> PrivacyAuditReport | None:
    """metadata.privacy_audit: the audit's counts and bound beside the epsilon the accountant claims."""
    if audit is None:
        return None
    claim = {**audit, "claimed_epsilon": epsilon}
    if epsilon is not None and claim["epsilon_lower_bound"] > epsilon:
        log.warning("training.privacy_audit_exceeds_claim", run_id=run_id, **claim)
    return PrivacyAuditReport.model_validate(claim)


def run_metadata(
    cfg: TrainConfig,
    run_id: str,
    prepared: Prepared,
    progress: Progress,
    evaluated: Evaluated,
    *,
    epsilon: float | None,
    target_modules: list[str],
    canaries_sealed: bool,
) -> RunMetadata:
    """The run's metadata (contracts.md "Training output"); ``epsilon`` is the ledger's (None without DP)."""
    exposures = [
        {"repetitions": c.repetitions, "exposure": round(e, 4)}
        for c, e in zip(prepared.canaries, evaluated.exposures, strict=True)
    ]
    sealed: dict[str, Any] = {"sealed": canaries_sealed}  # extra key of metadata.canaries: canaries.sealed beside
    return RunMetadata(
        format_version=METADATA_FORMAT_VERSION,
        appliance_version=package_version("appliance"),
        run_id=run_id,
        trained_by=cfg.trained_by,
        base_model=BaseModelRef(path=str(cfg.base.resolve()), sha256=prepared.base_hash),
        dataset=DatasetRef(fingerprint=prepared.dataset.fingerprint, path=str(prepared.dataset.path)),
        dp=_dp(cfg, prepared, epsilon),
        lora={
            "r": cfg.lora_r,
            "alpha": cfg.lora_alpha,
            "dropout": cfg.lora_dropout,
            "target_modules": sorted({m.rsplit(".", 1)[-1] for m in target_modules}),
        },
        quantization=QuantizationInfo.model_validate(quantization_metadata(cfg.quantize, cfg.serving_base)),
        hyperparameters={
            "learning_rate": cfg.learning_rate,
            "batch_size": cfg.batch_size,
            "max_length": cfg.max_length,
            "steps": cfg.steps,
            "seed": cfg.seed,
        },
        steps=progress.step,
        metrics=evaluated.metrics,
        evaluation=evaluated.evaluation,
        canaries=CanaryReport(
            count=len(prepared.canaries),
            exposures=exposures,
            max_exposure=max((e["exposure"] for e in exposures), default=0.0),
            **sealed,
        ),
        privacy_audit=_privacy_audit(evaluated.privacy_audit, epsilon, run_id),
        packages={name: package_version(name) for name in ("torch", "transformers", "peft", "opacus")},
        started_at=prepared.started_at,
        finished_at=now(),
    )
