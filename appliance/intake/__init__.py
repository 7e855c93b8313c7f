"""Intake: validate a JSONL dataset, scrub PHI, remove duplicates, split by subject and fingerprint it.

Training accepts only what :func:`prepare` wrote, loaded through :func:`load_prepared` (which verifies the
fingerprint). See ``README.md`` in this package for the design and the measured scrub recall.
"""

from __future__ import annotations

from appliance.contracts import subject_digest  # how intake writes a subject (the registry reads it the same way)
from appliance.intake._dedup import deduplicate, normalise
from appliance.intake._evaluate import Evaluation, evaluate_scrubber, read_labelled, write_misses
from appliance.intake._labelled import generate_labelled_notes, write_labelled_notes
from appliance.intake._prepare import (
    PreparedDataset,
    PreparedRecord,
    PrepareOptions,
    PrepareResult,
    fingerprint_dir,
    load_prepared,
    prepare,
)
from appliance.intake._recall_cases import labeled_cases
from appliance.intake._residual import residual_counts
from appliance.intake._schema import Record, read_records
from appliance.intake._scrub import PLACEHOLDER_TYPES
from appliance.intake._scrub_file import scrub_file
from appliance.intake._scrubber import Scrubber, ScrubReport
from appliance.intake._suspects import suspect_name_spans
from appliance.intake._synthetic import generate_records, write_synthetic

__all__ = [
    "PLACEHOLDER_TYPES",
    "Evaluation",
    "PrepareOptions",
    "PrepareResult",
    "PreparedDataset",
    "PreparedRecord",
    "Record",
    "ScrubReport",
    "Scrubber",
    "deduplicate",
    "evaluate_scrubber",
    "fingerprint_dir",
    "generate_labelled_notes",
    "generate_records",
    "labeled_cases",
    "load_prepared",
    "normalise",
    "prepare",
    "read_labelled",
    "read_records",
    "residual_counts",
    "scrub_file",
    "subject_digest",
    "suspect_name_spans",
    "write_labelled_notes",
    "write_misses",
    "write_synthetic",
]
