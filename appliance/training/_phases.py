"""What the phases of a run hand forward: one typed result per phase (``TrainingRun`` keeps each as it is made).

``Prepared`` (policy, dataset, base, units, noise: nothing trained) -> ``Built`` (model, optimizer, loader,
Opacus) -> ``Progress`` (the steps taken: the one part that changes while ``fit`` runs, and what a checkpoint
restores) -> ``Evaluated`` (eval metrics, base-vs-adapter, canary exposures, privacy audit) -> ``Written``
(the adapter's file digests).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from appliance.errors import TrainingFailed
from appliance.training._audit import AuditCanary
from appliance.training._canaries import Canary
from appliance.training._data import PreparedDataset, Unit

__all__ = ["Built", "Evaluated", "Prepared", "Progress", "Resume", "Written", "require"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class Resume:
    """An interrupted run to continue (``--resume``): the ledger's mechanism and the checkpoint, if any."""

    fingerprint: str  # the dataset the run was charged to
    noise_multiplier: float | None
    sample_rate: float | None
    delta: float | None  # the delta its noise was calibrated and its steps charged at
    step: int = 0  # the checkpoint's step (0: interrupted before its first checkpoint)
    state: dict[str, Any] | None = None  # the checkpoint's payload


@dataclass(frozen=True)
class Prepared:
    """The run's inputs, checked and admitted by the ledger (phase 1)."""

    dataset: PreparedDataset
    delta: float  # the run's own delta (its noise and metadata); the dataset's budget composes at the policy's
    units: list[Unit]
    sample_rate: float
    noise_multiplier: float | None  # None: --no-dp
    canaries: list[Canary]
    audit_canaries: list[AuditCanary]  # --audit-canaries (secret: which are in)
    base_hash: str
    tokenizer: Any
    started_at: str


@dataclass(frozen=True)
class Built:
    """The model with LoRA, its optimizer and loader; with DP, Opacus's engine around them (phase 2)."""

    model: Any
    optimizer: Any
    loader: Any
    device: Any
    initial: dict[str, Any]  # the LoRA tensors as initialised (write refuses an adapter that never changed)
    engine: Any = None  # opacus.PrivacyEngine (DP only): its accountant is checkpointed
    noise_generator: Any = None  # reseeded from the OS CSPRNG before every optimizer step (DP only)
    ghost_hooks: Any = None  # ghost clipping's hooks (per-sample norms, then a second, clipped backward)


@dataclass
class Progress:
    """The steps taken so far, with their loss and epsilon curves (phase 3 restores it, phase 4 extends it)."""

    step: int = 0
    losses: list[float] = field(default_factory=list)
    epsilons: list[float | None] = field(default_factory=list)


@dataclass(frozen=True)
class Evaluated:
    """The trained adapter measured (phase 5): no canary secret, no score, no record text."""

    metrics: dict[str, float]  # eval_loss, perplexity, train_loss
    evaluation: dict[str, Any]  # base vs adapter on the eval split (appliance.evaluation)
    exposures: list[float]  # one per canary, bits
    privacy_audit: dict[str, Any] | None  # the one-run audit's counts and bound (None: not audited)


@dataclass(frozen=True)
class Written:
    """Digests of the files the adapter directory holds (phase 6; the ledger keeps them)."""

    weights_sha256: str  # adapter_model.safetensors
    config_sha256: str  # adapter_config.json


def require(value: _T | None, phase: str) -> _T:
    """A phase's result, or TrainingFailed naming the phase that has not run (phases run in order)."""
    if value is None:
        raise TrainingFailed(f"the {phase} phase of this run has not run yet")
    return value
