"""The empirical epsilon lower bound of a one-run privacy audit (Steinke, Nasr, Jagielski, NeurIPS 2023).

"Privacy Auditing with One (1) Training Run" (arXiv 2305.08846): m canaries are each included in training
independently with probability 1/2; afterwards an auditor guesses "in" or "out" for r of them (abstaining on
the rest) and v guesses are correct. If training is (eps, delta)-DP, then (the paper's main theorem, computed
by its Algorithm 2)

    P[v or more correct] <= beta + 2 m delta alpha,   q = e^eps / (1 + e^eps),
    beta  = P[Binomial(r, q) >= v],
    alpha = max_{i = 1..v} P[v - i <= Binomial(r, q) < v] / i.

That right-hand side is the p-value of the hypothesis "the run is (eps, delta)-DP"; it grows with eps. The
lower bound at confidence 1 - significance is the largest eps whose hypothesis is rejected (p-value at most
``significance``), found by bisection. With delta = 0 and every guess correct it is logit(significance^(1/r)).

Guesses (the paper's abstention strategy): sort the canaries by membership score, guess "in" for the k highest
and "out" for the k lowest, abstain on the rest. Several k are tried; each is tested at significance/|K|
(Bonferroni), so the largest bound over them still holds with probability 1 - significance. Google DeepMind's
``jax_privacy/auditing.py`` computes the same p-value (one-sided guesses only); this module is numpy/scipy only.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

__all__ = ["AuditBound", "audit_bound", "epsilon_lower_bound", "guess_sizes", "p_value"]

SIGNIFICANCE = 0.05  # 95% confidence, as in the paper's experiments
_EPS_CEILING = 100.0  # logit of 1 - 4e-44: beyond any bound m <= 10^6 canaries can show


def p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Upper bound on P[at least v of r guesses correct] for an (eps, delta)-DP run with m canaries."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got m={m}, r={r}, v={v}")
    if eps < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need eps >= 0 and 0 <= delta <= 1, got eps={eps}, delta={delta}")
    if v == 0:
        return 1.0
    q = 1.0 / (1.0 + math.exp(-eps))  # accuracy of eps-DP randomized response
    beta = float(binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if delta == 0:
        return min(1.0, beta)
    below = np.cumsum(binom.pmf(np.arange(v - 1, -1, -1), r, q))  # i -> P[v - i <= Binomial < v]
    alpha = float(np.max(below / np.arange(1, v + 1)))
    return min(1.0, beta + alpha * delta * 2 * m)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, significance: float = SIGNIFICANCE) -> float:
    """The largest eps for which (eps, delta)-DP is rejected at ``significance`` (0.0 when none is)."""
    if not 0 < significance < 1:
        raise ValueError(f"significance must be in (0, 1), got {significance}")
    if p_value(m, r, v, 0.0, delta) > significance:
        return 0.0
    lo, hi = 0.0, 1.0  # p_value(lo) <= significance < p_value(hi)
    while p_value(m, r, v, hi, delta) <= significance:
        lo, hi = hi, 2 * hi
        if hi > _EPS_CEILING:
            return _EPS_CEILING
    while hi - lo > 1e-7:
        mid = (lo + hi) / 2
        if p_value(m, r, v, mid, delta) <= significance:
            lo = mid
        else:
            hi = mid
    return lo


def guess_sizes(m: int) -> list[int]:
    """The k tried (k "in" guesses and k "out" guesses each): powers of two, and m // 2 (every canary guessed)."""
    sizes = {2**j for j in range(int(math.log2(max(1, m // 2))) + 1)} | {m // 2}
    return sorted(k for k in sizes if 1 <= k <= m // 2)


@dataclass(frozen=True)
class AuditBound:
    """The outcome of a one-run audit: counts only (never which canary was in or how it scored)."""

    m: int  # canaries, each included with probability 1/2
    guesses: int  # r: guesses made by the best k (2k)
    correct: int  # v: correct among them
    epsilon_lower_bound: float  # at confidence 1 - significance (Bonferroni over the k tried)
    delta: float
    significance: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "m": self.m,
            "guesses": self.guesses,
            "correct": self.correct,
            "epsilon_lower_bound": round(self.epsilon_lower_bound, 6),
            "delta": self.delta,
            "significance": self.significance,
        }


def audit_bound(
    scores: Sequence[float],
    included: Sequence[bool],
    *,
    delta: float,
    significance: float = SIGNIFICANCE,
) -> AuditBound:
    """Guess from membership ``scores`` (higher: more likely trained on) and bound epsilon from the hits.

    Ties between scores are broken by a CSPRNG, so equal scores never leak the canaries' order of creation.
    """
    m = len(scores)
    if m != len(included):
        raise ValueError(f"{m} scores for {len(included)} canaries")
    if m < 2:
        raise ValueError("an audit needs at least 2 canaries")
    if not all(math.isfinite(s) for s in scores):
        raise ValueError("membership scores must be finite")
    tiebreak = [secrets.randbits(32) for _ in range(m)]
    order = sorted(range(m), key=lambda i: (-scores[i], tiebreak[i]))  # most likely member first
    member = np.array([bool(included[i]) for i in order])
    sizes = guess_sizes(m)
    per_test = significance / len(sizes)
    best = AuditBound(m, 0, 0, 0.0, delta, significance)
    for k in sizes:
        correct = int(member[:k].sum()) + int((~member[m - k :]).sum())
        bound = epsilon_lower_bound(m, 2 * k, correct, delta, per_test)
        if bound > best.epsilon_lower_bound or best.guesses == 0:
            best = AuditBound(m, 2 * k, correct, bound, delta, significance)
    return best
