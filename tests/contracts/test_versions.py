"""The versions stored artifacts record: an installed distribution's, or a stated placeholder when not installed."""

from __future__ import annotations

import yaml

from appliance.contracts import package_version


def test_an_installed_distribution_gives_its_version() -> None:
    """PyYAML (a pinned dependency) reports the version its module carries."""
    assert package_version("pyyaml") == yaml.__version__


def test_a_missing_distribution_gives_the_placeholder() -> None:
    """A distribution that is not installed is "unknown", or the placeholder the caller names."""
    assert package_version("no-such-distribution-xyz") == "unknown"
    assert package_version("no-such-distribution-xyz", unknown="0+unknown") == "0+unknown"
