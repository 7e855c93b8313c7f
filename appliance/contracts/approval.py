"""The approval limits: the ``approval`` section of ``policies/privacy.yaml`` (one model for every reader).

The registry enforces them when an adapter is approved or published (``registry/_policy.py`` loads the section
alone, so approving never imports the training stack); training validates the whole file with them
(``training/_policy.py``). Both thresholds are required: an adapter is never approved against a limit nobody wrote.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ApprovalLimits"]


class ApprovalLimits(BaseModel):
    """Limits an adapter must meet before it may be approved."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_epsilon: float = Field(gt=0)  # the run's epsilon must not exceed this
    max_canary_exposure: float = Field(gt=0)  # bits; the run's max canary exposure must not exceed this
    require_dp: bool = True  # adapters trained without DP cannot be approved
    # quality: how much better than its base model the adapter must be on the eval split (strictly better always)
    min_loss_improvement: float = Field(default=0.0, ge=0)  # nats of mean token loss the adapter must remove
    min_exact_match_gain: float = Field(default=0.0, ge=0, le=1)  # exact-match fraction it must add
