"""The DP planner: its plan for several dataset sizes and epsilons, explicit options, and refusals (no model)."""

from __future__ import annotations

import pytest

from appliance.errors import ValidationFailed
from appliance.training import composed_epsilon, plan_training
from appliance.training._planner import LR_MAX, LR_MIN, MAX_BATCH, MAX_SAMPLE_RATE


@pytest.mark.parametrize("units", [500, 100_000])
@pytest.mark.parametrize("epsilon", [1.0, 8.0])
def test_plan_spends_the_target_epsilon_with_a_few_percent_sampled(units: int, epsilon: float) -> None:
    """The plan samples a few percent, takes a few epochs, and its accountant epsilon is just under the target."""
    plan = plan_training(units=units, epsilon=epsilon, delta=1e-5)
    assert 0.01 <= plan.sample_rate <= MAX_SAMPLE_RATE
    assert 32 <= plan.batch_size <= MAX_BATCH
    assert plan.sample_rate == 1 / -(-units // plan.batch_size)  # Opacus's rate for that batch
    assert 1.0 <= plan.epochs <= 3.0
    spent = composed_epsilon([(plan.noise_multiplier, plan.sample_rate, plan.steps)], 1e-5)
    assert spent == plan.epsilon
    assert epsilon - 0.05 <= spent <= epsilon
    assert plan.noise_per_coordinate == pytest.approx(plan.noise_multiplier * 1.0 / plan.batch_size)
    assert LR_MIN <= plan.learning_rate <= LR_MAX
    assert plan.planned == ("batch_size", "steps", "noise_multiplier", "learning_rate")


def test_more_units_or_more_epsilon_mean_less_noise_and_no_smaller_learning_rate() -> None:
    """Noise per coordinate falls as the dataset or epsilon grows; the learning rate follows the noise."""
    small = plan_training(units=1_000, epsilon=3.0, delta=1e-5)
    large = plan_training(units=20_000, epsilon=3.0, delta=1e-5)
    loose = plan_training(units=1_000, epsilon=8.0, delta=1e-5)
    assert large.noise_per_coordinate < small.noise_per_coordinate
    assert loose.noise_per_coordinate < small.noise_per_coordinate
    assert large.learning_rate >= small.learning_rate and loose.learning_rate >= small.learning_rate


def test_a_small_dataset_gets_a_small_batch_not_a_large_rate() -> None:
    """Below MIN_BATCH / MAX_SAMPLE_RATE units the batch shrinks so that at most 10% is sampled."""
    plan = plan_training(units=48, epsilon=4.0, delta=1e-3)
    assert plan.batch_size == 4 and plan.sample_rate == pytest.approx(1 / 12)


def test_explicit_options_win_and_the_rest_is_planned() -> None:
    """Given batch and steps are kept; the noise is the accountant's for them; the learning rate is planned."""
    plan = plan_training(units=2_000, epsilon=8.0, delta=1e-5, batch_size=64, steps=20, learning_rate=0.01)
    assert (plan.batch_size, plan.steps, plan.learning_rate) == (64, 20, 0.01)
    assert plan.planned == ("noise_multiplier",)
    assert 7.95 <= plan.epsilon <= 8.0


def test_an_explicit_noise_multiplier_is_checked_against_epsilon() -> None:
    """Too little noise for the target is refused with both epsilons; enough noise spends less than the target."""
    with pytest.raises(ValidationFailed, match="above the target 1"):
        plan_training(units=2_000, epsilon=1.0, delta=1e-5, noise_multiplier=0.3)
    plan = plan_training(units=2_000, epsilon=8.0, delta=1e-5, noise_multiplier=2.0)
    assert plan.noise_multiplier == 2.0 and plan.epsilon < 8.0
    assert plan.epsilon == composed_epsilon([(2.0, plan.sample_rate, plan.steps)], 1e-5)


def test_impossible_requests_are_refused() -> None:
    """A batch larger than the units, no units, or a bad epsilon is a ValidationFailed."""
    with pytest.raises(ValidationFailed, match="larger than the 100"):
        plan_training(units=100, epsilon=8.0, delta=1e-5, batch_size=101)
    with pytest.raises(ValidationFailed):
        plan_training(units=0, epsilon=8.0, delta=1e-5)
    with pytest.raises(ValidationFailed):
        plan_training(units=100, epsilon=0.0, delta=1e-5)
