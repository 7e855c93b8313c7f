"""RDP accounting: noise calibration for a step budget and composition across runs."""

from __future__ import annotations

import pytest
from opacus.accountants import RDPAccountant

from appliance.errors import ValidationFailed
from appliance.training import composed_epsilon, noise_for_epsilon


class TestAccounting:
    def test_noise_meets_the_target(self) -> None:
        """The calibrated noise keeps the run's epsilon at or just below the target."""
        sigma = noise_for_epsilon(epsilon=3.0, delta=1e-5, sample_rate=0.05, steps=200)
        eps = composed_epsilon([(sigma, 0.05, 200)], 1e-5)
        assert 2.95 <= eps <= 3.0

    def test_composition_matches_opacus(self) -> None:
        """Composing two runs gives what Opacus's RDP accountant gives for the same history."""
        history = [(1.1, 0.02, 100), (0.9, 0.05, 40)]
        acc = RDPAccountant()
        acc.history = list(history)
        assert composed_epsilon(history, 1e-5) == pytest.approx(acc.get_epsilon(delta=1e-5), rel=1e-9)

    def test_composition_is_tighter_than_the_sum(self) -> None:
        """RDP composition of two runs is below the sum of their separate epsilons."""
        a, b = (1.0, 0.05, 50), (1.0, 0.05, 50)
        assert composed_epsilon([a, b], 1e-5) < composed_epsilon([a], 1e-5) + composed_epsilon([b], 1e-5)

    def test_nothing_spent(self) -> None:
        """An empty history (or zero steps) has spent nothing."""
        assert composed_epsilon([], 1e-5) == 0.0
        assert composed_epsilon([(1.0, 0.1, 0)], 1e-5) == 0.0

    def test_impossible_epsilon(self) -> None:
        """A non-positive epsilon is a clear validation error."""
        with pytest.raises(ValidationFailed):
            noise_for_epsilon(epsilon=0.0, delta=1e-5, sample_rate=0.1, steps=10)
