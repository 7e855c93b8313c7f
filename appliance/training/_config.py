"""TrainConfig: everything one training run needs, validated before anything is charged or written."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from appliance.errors import ValidationFailed
from appliance.training._planner import PLANNED_OPTIONS, TrainingPlan

__all__ = ["TrainConfig", "make_config"]


class TrainConfig(BaseModel):
    """One training run's inputs and hyperparameters (the CLI's options, one for one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: Path  # prepared dataset directory (train.jsonl, eval.jsonl, manifest.json)
    base: Path  # base model directory (any local Hugging Face causal LM)
    out: Path  # adapter directory, created atomically
    epsilon: float | None = Field(default=None, gt=0)  # epsilon this run may spend (None only with no_dp)
    delta: float | None = Field(default=None, gt=0, lt=1e-2)  # None -> the policy's delta for the dataset
    # with DP, steps, batch_size, learning_rate and noise_multiplier not given are planned (_planner.py); the
    # defaults below are the non-DP ones
    steps: int = Field(default=100, ge=1, le=1_000_000)  # optimizer (logical-batch) steps
    batch_size: int = Field(default=16, ge=1)  # expected logical batch (Poisson sampling rate = batch/units)
    physical_batch_size: int = Field(default=8, ge=1)  # rows per forward/backward pass (memory bound)
    learning_rate: float = Field(default=2e-3, gt=0, lt=1)
    noise_multiplier: float | None = Field(default=None, gt=0)  # given: checked against epsilon; None: planned
    grad_sample_mode: Literal["hooks", "ghost"] = "hooks"  # Opacus per-sample gradients, or ghost clipping
    max_length: int = Field(default=256, ge=8, le=32_768)  # tokens per record
    lora_r: int = Field(default=8, ge=1, le=256)
    lora_alpha: int = Field(default=16, ge=1)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["all-linear"])
    privacy_unit: Literal["record", "subject"] = "record"
    max_records_per_subject: int = Field(default=4, ge=1, le=256)  # subject unit: at most k records per subject
    max_grad_norm: float = Field(default=1.0, gt=0)  # per-unit clipping bound C
    canaries: int = Field(default=0, ge=0, le=64)
    canary_repetitions: list[int] = Field(default_factory=lambda: [1, 4, 16])  # cycled over the canaries
    canary_candidates: int = Field(default=256, ge=8, le=100_000)  # sampled candidates for the exposure rank
    audit_canaries: int = Field(default=0, ge=0, le=100_000)  # one-run privacy audit: M records, each in w.p. 1/2
    checkpoint_every: int = Field(default=50, ge=1)
    resume: bool = False
    no_dp: bool = False
    seed: int = 0
    trained_by: str = Field(default="cli", min_length=1, max_length=200)
    eval_max_records: int = Field(default=512, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    quantize: Literal["none", "nf4"] = "none"  # nf4: QLoRA base (bitsandbytes, CUDA only; _quantization.py)
    serving_base: Literal["unquantised", "engine"] = "unquantised"  # what the adapter is to be served on
    gpu_memory_gb: float | None = Field(default=None, gt=0, le=4096)  # picks the largest physical batch that fits

    @field_validator("target_modules")
    @classmethod
    def _modules(cls, value: list[str]) -> list[str]:
        names = [v.strip() for v in value if v.strip()]
        if not names:
            raise ValueError("at least one target module is needed")
        return names

    @field_validator("canary_repetitions")
    @classmethod
    def _reps(cls, value: list[int]) -> list[int]:
        if not value or any(r < 1 or r > 1000 for r in value):
            raise ValueError("canary repetitions must be between 1 and 1000")
        return value

    @field_validator("audit_canaries")
    @classmethod
    def _audit(cls, value: int) -> int:
        if value == 1:
            raise ValueError("a privacy audit needs at least 2 audit canaries (0 turns it off)")
        return value

    @model_validator(mode="after")
    def _dp_needs_epsilon(self) -> TrainConfig:
        if not self.no_dp and self.epsilon is None:
            raise ValueError("--epsilon is required unless --no-dp")
        if self.no_dp and self.noise_multiplier is not None:
            raise ValueError("--noise-multiplier needs DP (it cannot be combined with --no-dp)")
        if self.quantize != "none" and self.device == "cpu":
            raise ValueError(f"--quantize {self.quantize} needs a CUDA device (bitsandbytes); --device cpu cannot")
        planned_batch = self.dp and "batch_size" not in self.model_fields_set
        if not planned_batch and self.physical_batch_size > self.batch_size:
            object.__setattr__(self, "physical_batch_size", self.batch_size)
        return self

    @property
    def dp(self) -> bool:
        return not self.no_dp

    def given_plan_options(self) -> dict[str, Any]:
        """The plannable options given explicitly (the planner keeps them and plans the rest)."""
        return {
            name: getattr(self, name)
            for name in PLANNED_OPTIONS
            if name in self.model_fields_set and getattr(self, name) is not None
        }

    def with_plan(self, plan: TrainingPlan) -> TrainConfig:
        """This configuration with the plan's values (all explicit from then on: a resume reuses them)."""
        physical = min(self.physical_batch_size, plan.batch_size)
        return self.model_copy(
            update={
                "batch_size": plan.batch_size,
                "steps": plan.steps,
                "learning_rate": plan.learning_rate,
                "noise_multiplier": plan.noise_multiplier,
                "physical_batch_size": physical,
            }
        )

    def sized_physical_batch(self) -> bool:
        """True when ``--gpu-memory`` chooses the physical batch (it was not given explicitly)."""
        return self.gpu_memory_gb is not None and "physical_batch_size" not in self.model_fields_set

    def resume_view(self) -> dict[str, object]:
        """The fields a resumed run must share with the run it continues."""
        return self.model_dump(mode="json", exclude={"resume", "out", "dataset", "base", "device", "trained_by"})


def make_config(**values: object) -> TrainConfig:
    """Build a TrainConfig; invalid values are a ValidationFailed naming each field."""
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in exc.errors()
        )
        raise ValidationFailed(f"invalid training options: {problems}") from exc
