"""Exact and near-duplicate removal."""

from __future__ import annotations

from appliance.intake import deduplicate, normalise

NOTE = (
    "Summarise this discharge note. Patient [NAME] admitted on [DATE] with community-acquired pneumonia, treated "
    "with amoxicillin 875 mg every 12 hours, improving on room air, discharged home with follow-up in two weeks."
)


def test_normalise_folds_case_unicode_and_whitespace() -> None:
    """Normalisation is NFKC + casefold + collapsed whitespace."""
    assert normalise("  Ｆｕｌｌ\u00a0WIDTH \n text ") == "full width text"


def test_exact_duplicates_after_normalisation() -> None:
    """Records equal after normalisation are exact duplicates; the first is kept."""
    pairs = [(NOTE, "Stable."), ("  " + NOTE.upper(), "stable. "), ("Other task.", "Stable.")]
    result = deduplicate(pairs)
    assert result.kept == [0, 2]
    assert (result.exact_duplicates, result.near_duplicates) == (1, 0)


def test_near_duplicates_are_removed() -> None:
    """A record that differs by one appended word is a near duplicate of an earlier one."""
    pairs = [
        (NOTE, "Stable, discharge today."),
        (NOTE, "Stable, discharge today. Reviewed."),
    ]
    result = deduplicate(pairs)
    assert result.kept == [0]
    assert result.near_duplicates == 1


def test_different_records_are_kept() -> None:
    """Records about different things are all kept."""
    pairs = [
        (NOTE, "Stable."),
        ("Classify the urgency of this triage note: crushing chest pain radiating to the left arm.", "Urgency: high."),
        ("List the medications: metformin 500 mg, lisinopril 10 mg.", "Metformin; lisinopril."),
    ]
    result = deduplicate(pairs)
    assert result.kept == [0, 1, 2]


def test_threshold_one_disables_near_dedup() -> None:
    """With a threshold of 1.0 only exact duplicates are removed."""
    pairs = [(NOTE, "Stable."), (NOTE + " Reviewed.", "Stable.")]
    assert deduplicate(pairs, near_threshold=1.0).kept == [0, 1]
