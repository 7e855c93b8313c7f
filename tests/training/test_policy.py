"""policies/privacy.yaml: loading, validation and per-dataset budgets."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import ConfigError
from appliance.training import load_privacy_policy

REPO_POLICY = Path(__file__).resolve().parents[2] / "policies" / "privacy.yaml"


class TestPrivacyPolicy:
    def test_repository_policy_loads(self) -> None:
        """The shipped policy is valid, keeps --no-dp off and carries the approval limits the registry reads."""
        policy = load_privacy_policy(REPO_POLICY)
        assert policy.default.epsilon_budget > 0 and policy.default.delta < 1e-4
        assert policy.allow_no_dp is False
        assert policy.approval.max_epsilon > 0 and policy.approval.max_canary_exposure > 0

    def test_override_by_fingerprint(self, tmp_path: Path) -> None:
        """A dataset listed by fingerprint gets its own budget; others get the default."""
        fp = "ab" * 32
        path = tmp_path / "privacy.yaml"
        path.write_text(
            "default: {epsilon_budget: 10, delta: 1.0e-5}\n"
            f'datasets:\n  "{fp}": {{epsilon_budget: 2, delta: 1.0e-6}}\n'
        )
        policy = load_privacy_policy(path)
        assert policy.budget_for(fp).epsilon_budget == 2
        assert policy.budget_for("cd" * 32).epsilon_budget == 10

    def test_override_applies_to_every_preparation_of_its_source(self, tmp_path: Path) -> None:
        """Preparations of one source share a spend: the override of any of them (the strictest) applies to all."""
        strict, loose, plain, other = "ab" * 32, "cd" * 32, "ef" * 32, "12" * 32
        path = tmp_path / "privacy.yaml"
        path.write_text(
            "default: {epsilon_budget: 10, delta: 1.0e-5}\n"
            f'datasets:\n  "{strict}": {{epsilon_budget: 2, delta: 1.0e-5}}\n'
            f'  "{loose}": {{epsilon_budget: 20, delta: 1.0e-6}}\n'
        )
        policy = load_privacy_policy(path)
        assert policy.budget_for(plain, {plain, strict}).epsilon_budget == 2  # re-prepared: still the override
        assert policy.budget_for(strict, {strict, plain}).epsilon_budget == 2
        both = policy.budget_for(plain, {strict, loose})
        assert (both.epsilon_budget, both.delta) == (2, 1e-6)  # the strictest of each
        assert policy.budget_for(plain, {loose}).epsilon_budget == 20
        assert policy.budget_for(plain, {plain, other}) == policy.default

    def test_invalid_yaml_names_the_line(self, tmp_path: Path) -> None:
        """Broken YAML is a ConfigError naming the file and the line."""
        path = tmp_path / "privacy.yaml"
        path.write_text("default:\n  epsilon_budget: [1,\n")
        with pytest.raises(ConfigError, match=r"privacy.yaml line \d+"):
            load_privacy_policy(path)

    def test_invalid_values_name_the_field(self, tmp_path: Path) -> None:
        """A negative budget, a bad fingerprint key or an unknown field is refused with its location."""
        path = tmp_path / "privacy.yaml"
        path.write_text(
            "default: {epsilon_budget: -1, delta: 1.0e-5}\ndatasets: {nothex: {epsilon_budget: 1, delta: 1e-5}}\n"
        )
        with pytest.raises(ConfigError) as err:
            load_privacy_policy(path)
        assert "default.epsilon_budget" in str(err.value) and "fingerprint" in str(err.value)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing policy stops training (fail closed) with a ConfigError."""
        with pytest.raises(ConfigError, match="not found"):
            load_privacy_policy(tmp_path / "absent.yaml")
