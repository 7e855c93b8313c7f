"""Canaries: secrets from a CSPRNG in the MRN format, and the Secret Sharer exposure estimate."""

from __future__ import annotations

import math

import pytest

from appliance.training import exposure
from appliance.training._canaries import SECRET_DIGITS, make_canaries

SPACE_BITS = SECRET_DIGITS * math.log2(10)


class TestExposure:
    def test_unmemorised_secret_has_about_one_bit(self) -> None:
        """A secret ranked in the middle of the candidates has an exposure of about 1 bit."""
        candidates = [float(i) for i in range(100)]
        assert exposure(49.5, candidates) == pytest.approx(1.0, abs=0.05)

    def test_worst_ranked_secret_has_no_exposure(self) -> None:
        """A secret the model finds less likely than every candidate has exposure ~0."""
        assert exposure(1000.0, [float(i) for i in range(100)]) == pytest.approx(0.0, abs=0.02)

    def test_memorised_secret_is_extrapolated(self) -> None:
        """A secret far better than every sampled candidate gets more bits than the sample alone resolves."""
        candidates = [10.0 + 0.1 * (i % 10) for i in range(64)]
        value = exposure(0.0, candidates)
        assert math.log2(64) < value <= SPACE_BITS

    def test_exposure_grows_with_the_gap(self) -> None:
        """A lower log-perplexity of the secret never lowers its exposure."""
        candidates = [float(i % 17) for i in range(128)]
        values = [exposure(s, candidates) for s in (16.0, 8.0, 2.0, 0.5, -3.0)]
        assert values == sorted(values)


def test_canaries_are_random_and_well_formed() -> None:
    """Canaries have unique codes, 8-digit secrets and cycle through the repetition counts."""
    canaries = make_canaries(6, [1, 4, 16])
    assert [c.repetitions for c in canaries] == [1, 4, 16, 1, 4, 16]
    assert len({c.code for c in canaries}) == 6
    assert all(len(c.secret) == SECRET_DIGITS and c.secret.isdigit() for c in canaries)
    recs = canaries[2].records()
    assert len(recs) == 16 and len({r.subject for r in recs}) == 1
    assert canaries[2].secret in recs[0].response
