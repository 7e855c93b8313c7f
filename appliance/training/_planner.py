"""The DP plan: logical batch, steps, noise multiplier and learning rate from the units, epsilon and delta.

DP-SGD adds Gaussian noise of standard deviation ``σ·C`` to the *sum* of a logical batch's clipped gradients, so
the noise in the mean gradient, per coordinate, is ``σ·C/B``. At a fixed epsilon a larger sampling rate ``q = B/N``
raises ``σ`` only slowly, so large logical batches cut that noise (measured: at ε=8 on 2,000 units, 32-unit
batches carry 0.017 per coordinate, 128-unit batches 0.005). The rules, each a constant below:

* **batch**: ``TARGET_SAMPLE_RATE`` of the units (a few percent), at least ``MIN_BATCH``, at most ``MAX_BATCH``
  and at most ``MAX_SAMPLE_RATE`` of the units (a small dataset gets a smaller batch, not a huge sampling rate);
* **steps**: ``EPOCHS`` expected passes over the data, within ``[MIN_STEPS, MAX_STEPS]``;
* **noise**: the smallest ``σ`` whose RDP epsilon for those steps at that rate is within the target
  (``opacus.accountants.utils.get_noise_multiplier``, the accountant the ledger composes with);
* **learning rate**: anchored on the best measured DP learning rate (issue 14: SmolLM2-135M, ε=8, 16 steps of
  32 records, σ=0.48: 0.02 beat 0.01 beat 0.005) and scaled by the square root of how much less noisy the plan's
  mean gradient is than that run's (Adam's square-root scaling rule, Malladi et al., NeurIPS 2022), within
  ``[LR_MIN, LR_MAX]`` (the cap keeps it within 1.5x of what was measured).

An option given explicitly wins; the rest are planned around it. An explicit noise multiplier is checked: its
epsilon for the plan's steps and rate must be within the target. The plan's ``epsilon`` is what the ledger charges
for the full run (``composed_epsilon`` of ``(σ, q, steps)`` at the run's delta).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from appliance.errors import ValidationFailed
from appliance.training._accounting import composed_epsilon, noise_for_epsilon

__all__ = ["PLANNED_OPTIONS", "TrainingPlan", "plan_training", "sample_rate_for"]

TARGET_SAMPLE_RATE = 0.04  # expected logical batch = 4% of the units
MIN_BATCH = 32  # the smallest logical batch measured to learn under DP
MAX_BATCH = 1024  # beyond this the steps of a few epochs become too few to optimise
MAX_SAMPLE_RATE = 0.10  # a small dataset gets a smaller batch rather than a larger rate
EPOCHS = 2.0  # expected passes over the units ("a few epochs at most")
MIN_STEPS = 10
MAX_STEPS = 2000
LR_REFERENCE = 0.02  # best measured DP learning rate (AdamW, LoRA) ...
NOISE_REFERENCE = 0.48 / 32  # ... at this relative noise σ/B (σ=0.48, B=32)
LR_MIN = 0.005
LR_MAX = 0.03

PLANNED_OPTIONS = ("batch_size", "steps", "noise_multiplier", "learning_rate")  # what the plan fills in


def sample_rate_for(units: int, batch_size: int) -> float:
    """Poisson sampling rate for an expected logical batch: exactly the rate Opacus's DP data loader uses."""
    return 1.0 / math.ceil(units / batch_size)


@dataclass(frozen=True)
class TrainingPlan:
    """A run's DP settings and what they cost."""

    units: int  # privacy units in the training set (canaries included)
    target_epsilon: float
    delta: float
    batch_size: int  # expected logical batch
    sample_rate: float
    steps: int
    noise_multiplier: float
    max_grad_norm: float
    learning_rate: float
    epsilon: float  # RDP epsilon of the whole run at ``delta``: what the ledger charges
    planned: tuple[str, ...]  # the options the planner chose (the others were given)

    @property
    def epochs(self) -> float:
        """Expected passes over the units."""
        return self.steps * self.sample_rate

    @property
    def noise_per_coordinate(self) -> float:
        """Standard deviation of the noise in each coordinate of the mean gradient: ``σ·C/B``."""
        return self.noise_multiplier * self.max_grad_norm / self.batch_size

    def as_dict(self) -> dict[str, object]:
        """The plan as JSON-ready values (``--plan-only --json``, metadata)."""
        return asdict(self) | {
            "planned": list(self.planned),
            "epochs": self.epochs,
            "noise_per_coordinate": self.noise_per_coordinate,
        }

    def describe(self) -> list[str]:
        """The plan for a person, one setting a line; ``*`` marks what the planner chose."""

        def mark(name: str) -> str:
            return "*" if name in self.planned else " "

        return [
            f"privacy units      {self.units:,}",
            f"logical batch    {mark('batch_size')} {self.batch_size:,} (sampling rate {100 * self.sample_rate:.2f}%)",
            f"steps            {mark('steps')} {self.steps:,} ({self.epochs:.2f} epochs)",
            f"noise multiplier {mark('noise_multiplier')} {self.noise_multiplier:.4f}  (max grad norm "
            f"{self.max_grad_norm:g})",
            f"noise/coordinate   {self.noise_per_coordinate:.5f}  (σ·C/B, in the mean gradient)",
            f"learning rate    {mark('learning_rate')} {self.learning_rate:.4g}",
            f"epsilon            {self.epsilon:.4f} at δ={self.delta:g} (target {self.target_epsilon:g}, RDP)",
        ]


def _planned_batch(units: int) -> int:
    batch = max(round(TARGET_SAMPLE_RATE * units), MIN_BATCH)
    return max(1, min(batch, MAX_BATCH, math.floor(MAX_SAMPLE_RATE * units)))


def _planned_steps(sample_rate: float) -> int:
    return min(MAX_STEPS, max(MIN_STEPS, round(EPOCHS / sample_rate)))


def _planned_learning_rate(relative_noise: float) -> float:
    """Adam is invariant to the gradient's scale, so the rule uses the noise relative to the clip bound, σ/B."""
    scaled = LR_REFERENCE * math.sqrt(NOISE_REFERENCE / relative_noise)
    return min(LR_MAX, max(LR_MIN, scaled))


def plan_training(
    *,
    units: int,
    epsilon: float,
    delta: float,
    max_grad_norm: float = 1.0,
    batch_size: int | None = None,
    steps: int | None = None,
    noise_multiplier: float | None = None,
    learning_rate: float | None = None,
) -> TrainingPlan:
    """Plan a DP run on ``units`` privacy units within (``epsilon``, ``delta``); given options are kept."""
    if units < 1:
        raise ValidationFailed("the training set has no privacy units")
    if epsilon <= 0 or not 0 < delta < 1:
        raise ValidationFailed(f"epsilon must be positive and delta in (0, 1), got {epsilon}, {delta}")
    given = {
        "batch_size": batch_size,
        "steps": steps,
        "noise_multiplier": noise_multiplier,
        "learning_rate": learning_rate,
    }
    planned = tuple(name for name in PLANNED_OPTIONS if given[name] is None)
    batch = batch_size if batch_size is not None else _planned_batch(units)
    if batch > units:
        raise ValidationFailed(f"batch size {batch} is larger than the {units} privacy units")
    rate = sample_rate_for(units, batch)
    n_steps = steps if steps is not None else _planned_steps(rate)
    if noise_multiplier is None:
        sigma = noise_for_epsilon(epsilon=epsilon, delta=delta, sample_rate=rate, steps=n_steps)
    else:
        sigma = noise_multiplier
    spent = composed_epsilon([(sigma, rate, n_steps)], delta)
    if spent > epsilon * (1 + 1e-9):
        raise ValidationFailed(
            f"noise multiplier {sigma:g} for {n_steps} steps at sampling rate {rate:.4g} spends epsilon "
            f"{spent:.3f}, above the target {epsilon:g}: raise the noise or lower the steps or batch size"
        )
    lr = learning_rate if learning_rate is not None else _planned_learning_rate(sigma / batch)
    return TrainingPlan(
        units=units,
        target_epsilon=epsilon,
        delta=delta,
        batch_size=batch,
        sample_rate=rate,
        steps=n_steps,
        noise_multiplier=sigma,
        max_grad_norm=max_grad_norm,
        learning_rate=lr,
        epsilon=spent,
        planned=planned,
    )
