"""The one-run audit bound (Steinke, Nasr, Jagielski 2023): its arithmetic, its guesses, its calibration."""

from __future__ import annotations

import math
import random

import pytest
from scipy.stats import binom

from appliance.training._audit_bound import audit_bound, epsilon_lower_bound, guess_sizes, p_value


def _paper_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """The paper's Algorithm 2 as printed (a loop over i accumulating the binomial mass below v)."""
    q = 1 / (1 + math.exp(-eps))
    beta = binom.sf(v - 1, r, q)
    alpha, mass = 0.0, 0.0
    for i in range(1, v + 1):
        mass += binom.pmf(v - i, r, q)
        alpha = max(alpha, mass / i)
    return float(min(beta + alpha * delta * 2 * m, 1.0))


def _paper_bound(m: int, r: int, v: int, delta: float, p: float) -> float:
    """The paper's bisection: keep p_value(eps_min) < p <= p_value(eps_max), 30 halvings."""
    eps_min, eps_max = 0.0, 1.0
    while _paper_p_value(m, r, v, eps_max, delta) < p:
        eps_max += 1
    for _ in range(30):
        eps = (eps_min + eps_max) / 2
        if _paper_p_value(m, r, v, eps, delta) < p:
            eps_min = eps
        else:
            eps_max = eps
    return eps_min


class TestPaperFigures:
    @pytest.mark.parametrize(
        ("r", "expected"),
        [(10, 1.0518732), (100, 3.4929654), (1000, 5.8090683)],
    )
    def test_all_correct_without_delta_is_the_closed_form(self, r: int, expected: float) -> None:
        """With delta = 0 and r of r guesses correct, the bound is logit(0.05^(1/r)) (the theorem's tail q^r)."""
        closed = math.log(0.05 ** (1 / r) / (1 - 0.05 ** (1 / r)))
        assert closed == pytest.approx(expected, abs=1e-6)
        assert epsilon_lower_bound(1000, r, r, 0.0) == pytest.approx(closed, abs=1e-6)

    @pytest.mark.parametrize(
        ("m", "r", "v", "delta"),
        [
            (1000, 1000, 1000, 1e-5),
            (1000, 600, 600, 1e-5),
            (1000, 100, 90, 1e-5),
            (1000, 1000, 900, 1e-5),
            (100, 100, 100, 1e-5),
            (10_000, 200, 190, 1e-6),
            (1000, 50, 40, 1e-3),
        ],
    )
    def test_matches_the_papers_algorithm(self, m: int, r: int, v: int, delta: float) -> None:
        """The vectorised p-value and bound agree with a transcription of the paper's Algorithm 2."""
        for eps in (0.0, 0.5, 2.0, 4.0):
            assert p_value(m, r, v, eps, delta) == pytest.approx(_paper_p_value(m, r, v, eps, delta), rel=1e-9)
        assert epsilon_lower_bound(m, r, v, delta) == pytest.approx(_paper_bound(m, r, v, delta, 0.05), abs=1e-6)

    def test_pinned_values_at_delta_1e5(self) -> None:
        """m = 1000, delta = 1e-5, 95%: all correct bounds 5.78 (r = 1000), 3.47 (r = 100); 900/1000: 2.02."""
        assert epsilon_lower_bound(1000, 1000, 1000, 1e-5) == pytest.approx(5.7823, abs=1e-3)
        assert epsilon_lower_bound(1000, 100, 100, 1e-5) == pytest.approx(3.4654, abs=1e-3)
        assert epsilon_lower_bound(1000, 1000, 900, 1e-5) == pytest.approx(2.0206, abs=1e-3)

    def test_delta_costs_a_little(self) -> None:
        """The delta term only lowers the bound: (eps, delta) with delta > 0 is a weaker claim to reject."""
        assert epsilon_lower_bound(1000, 100, 100, 1e-5) < epsilon_lower_bound(1000, 100, 100, 0.0)
        assert epsilon_lower_bound(1000, 100, 100, 1e-3) < epsilon_lower_bound(1000, 100, 100, 1e-5)


class TestMonotone:
    def test_p_value_grows_with_epsilon(self) -> None:
        """A larger claimed epsilon makes the same hits less surprising."""
        values = [p_value(500, 200, 150, eps, 1e-5) for eps in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)]
        assert values == sorted(values) and values[0] < 1e-3 and values[-1] == pytest.approx(1.0)

    def test_bound_grows_with_correct_guesses(self) -> None:
        """More correct guesses out of the same number never lower the bound."""
        bounds = [epsilon_lower_bound(1000, 200, v, 1e-5) for v in range(100, 201, 10)]
        assert bounds == sorted(bounds) and bounds[0] == 0.0 and bounds[-1] > 4.0

    def test_chance_level_hits_bound_nothing(self) -> None:
        """Half of the guesses right is what a coin gets: no epsilon is rejected."""
        assert epsilon_lower_bound(1000, 1000, 500, 1e-5) == 0.0
        assert p_value(1000, 10, 0, 1.0, 1e-5) == 1.0

    def test_invalid_counts_are_refused(self) -> None:
        """More correct guesses than guesses (or guesses than canaries) is a caller error."""
        with pytest.raises(ValueError, match="v <= r <= m"):
            p_value(10, 5, 6, 1.0, 0.0)
        with pytest.raises(ValueError, match="significance"):
            epsilon_lower_bound(10, 5, 5, 0.0, significance=0.0)


class TestGuessing:
    def test_guess_sizes_cover_every_canary(self) -> None:
        """k runs over powers of two and ends with m // 2 (every canary guessed)."""
        assert guess_sizes(200) == [1, 2, 4, 8, 16, 32, 64, 100]
        assert guess_sizes(2) == [1]

    @pytest.mark.parametrize("seed", range(5))
    def test_random_scores_bound_about_zero(self, seed: int) -> None:
        """Scores unrelated to membership give a bound near 0 (a DP run that leaks nothing)."""
        rng = random.Random(seed)
        scores = [rng.gauss(0, 1) for _ in range(1000)]
        included = [rng.random() < 0.5 for _ in range(1000)]
        result = audit_bound(scores, included, delta=1e-5)
        assert result.epsilon_lower_bound < 0.3
        assert result.m == 1000 and 0 <= result.correct <= result.guesses <= 1000

    def test_separated_scores_bound_high(self) -> None:
        """Members scoring far above non-members (memorised) give a large bound, from the guesses that hit."""
        rng = random.Random(7)
        included = [rng.random() < 0.5 for _ in range(1000)]
        scores = [rng.gauss(5.0 if inc else 0.0, 1) for inc in included]
        result = audit_bound(scores, included, delta=1e-5)
        assert result.epsilon_lower_bound > 3.5
        assert result.correct / result.guesses > 0.95

    def test_equal_scores_leak_nothing(self) -> None:
        """Identical scores (a model that learnt nothing) are ordered by a CSPRNG and bound nothing."""
        included = [i < 500 for i in range(1000)]  # creation order = membership: must not be exploitable
        result = audit_bound([1.0] * 1000, included, delta=1e-5)
        assert result.epsilon_lower_bound < 0.3

    def test_weak_signal_is_between(self) -> None:
        """A modest shift gives a bound between chance and perfect separation."""
        rng = random.Random(3)
        included = [rng.random() < 0.5 for _ in range(2000)]
        scores = [rng.gauss(1.0 if inc else 0.0, 1) for inc in included]
        bound = audit_bound(scores, included, delta=1e-5).epsilon_lower_bound
        assert 0.3 < bound < 3.0

    def test_scores_must_match_canaries(self) -> None:
        """One score per canary, finite, at least two canaries."""
        with pytest.raises(ValueError, match="scores for"):
            audit_bound([1.0, 2.0], [True], delta=1e-5)
        with pytest.raises(ValueError, match="finite"):
            audit_bound([1.0, float("nan")], [True, False], delta=1e-5)
