"""Privacy accounting: the RDP accountant, composed over every DP run on a dataset.

RDP composes additively: a dataset's history is a list of ``(noise_multiplier, sample_rate, steps)`` and the
composed (epsilon, delta) guarantee is converted once, at the end, which is tighter than adding epsilons.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable

from appliance.errors import ValidationFailed

__all__ = ["Mechanism", "composed_epsilon", "noise_for_epsilon"]

Mechanism = tuple[float, float, int]  # (noise_multiplier, sample_rate, steps)


@functools.lru_cache(maxsize=256)
def _rdp_per_step(sample_rate: float, noise_multiplier: float) -> tuple[float, ...]:
    """RDP of one step of the subsampled Gaussian at every order (it is linear in the number of steps)."""
    from opacus.accountants.analysis.rdp import compute_rdp
    from opacus.accountants.rdp import RDPAccountant

    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS)
    return tuple(float(x) for x in rdp)


def composed_epsilon(history: Iterable[Mechanism], delta: float) -> float:
    """The epsilon at ``delta`` of every mechanism in ``history`` composed under RDP (0 for no steps)."""
    import numpy as np
    from opacus.accountants.analysis.rdp import get_privacy_spent
    from opacus.accountants.rdp import RDPAccountant

    orders = RDPAccountant.DEFAULT_ALPHAS
    total = None
    for sigma, q, steps in history:
        if steps <= 0:
            continue
        rdp = np.asarray(_rdp_per_step(float(q), float(sigma))) * steps
        total = rdp if total is None else total + rdp
    if total is None:
        return 0.0
    with warnings.catch_warnings():  # "optimal order is the largest alpha": only for very small epsilons
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = get_privacy_spent(orders=orders, rdp=total, delta=delta)
    return float(eps)


def noise_for_epsilon(*, epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier that keeps ``steps`` steps at ``sample_rate`` within (epsilon, delta)."""
    from opacus.accountants.utils import get_noise_multiplier

    if epsilon <= 0:
        raise ValidationFailed(f"epsilon must be positive, got {epsilon}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            sigma = get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant="rdp",
                epsilon_tolerance=0.005,
            )
    except ValueError as exc:
        raise ValidationFailed(
            f"epsilon {epsilon} is too small for {steps} steps at sample rate {sample_rate:.4g}: {exc}"
        ) from exc
    return float(sigma)
