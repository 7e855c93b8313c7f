"""The run as the privacy-budget ledger recorded it (``<data_dir>/ledger.db``, read only).

``metadata.json`` is a plain, unsigned file in the run directory: the trainer can edit it between ``appliance
train`` and ``registry add``. The ledger row of the same run is written by the training process itself, so the
registry checks the run directory's claims against it: the run must be there and ``finished``, and its dataset,
trainer, DP parameters, epsilon, delta, steps, highest canary exposure, weights file and adapter_config.json (rank,
scaling, target modules: what the adapter computes) and its evaluation against the base model (what the
quality gate reads) must agree. The registry reads the row through ``appliance.contracts.read_ledger_entry``
(the file opened read-only; training owns its schema and writes), so that it never imports the training stack.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.contracts import LedgerEntry, read_ledger_entry
from appliance.errors import IntegrityViolation, StorageUnavailable

__all__ = ["ClaimedRun", "check_against_ledger"]

_REL_TOL = 1e-9  # metadata floats are the ledger's own values, written through JSON (exact round trip)


@dataclass(frozen=True)
class ClaimedRun:
    """What a run's metadata (or the registry's row made from it) claims about the run."""

    run_id: str
    dataset: str
    trained_by: str
    dp: bool
    privacy_unit: str
    epsilon: float | None
    delta: float | None
    noise_multiplier: float | None
    sample_rate: float | None
    steps: int | None
    max_exposure: float | None  # None: no canary measured
    weights: str  # SHA-256 of adapter_model.safetensors
    config: str  # SHA-256 of adapter_config.json as training wrote it (before the registry rewrites its base path)
    evaluation: dict[str, Any] | None = None  # the base-vs-adapter report (what the quality gate reads)
    privacy_audit: dict[str, Any] | None = None  # the one-run audit (what the audit gate reads)


def _read(path: Path, run_id: str) -> LedgerEntry | None:
    try:
        return read_ledger_entry(path, run_id)
    except sqlite3.Error as exc:
        raise StorageUnavailable(f"privacy ledger {path} cannot be read: {exc}") from exc


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=1e-15)


def _json(stored: str | None) -> Any:
    """A JSON column's value (None: absent, as in a ledger from before the column, or empty)."""
    try:
        return json.loads(stored) if stored else None
    except json.JSONDecodeError:
        return "unreadable"


def check_against_ledger(ledger_path: Path, claimed: ClaimedRun) -> None:
    """Raise IntegrityViolation naming every field where ``claimed`` and the ledger's row for the run differ."""
    row = _read(Path(ledger_path), claimed.run_id)
    where = f"training run {claimed.run_id!r}"
    if row is None:
        raise IntegrityViolation(f"{where} is not in the privacy ledger {ledger_path}; only runs trained here register")
    if row.status != "finished":
        state = "abandoned" if row.reason == "abandoned" else row.status
        raise IntegrityViolation(f"{where} is {state} in the privacy ledger; only finished runs register")
    ledger: dict[str, Any] = {
        "dataset": row.fingerprint,
        "trained_by": row.trained_by,
        "dp": row.dp,
        "privacy_unit": row.privacy_unit,
    }
    problems = [
        f"{field} {getattr(claimed, field)!r} (ledger: {value!r})"
        for field, value in ledger.items()
        if getattr(claimed, field) != value
    ]
    for field in ("epsilon", "delta", "noise_multiplier", "sample_rate"):
        if not _same(getattr(claimed, field), getattr(row, field)):
            problems.append(f"{field} {getattr(claimed, field)!r} (ledger: {getattr(row, field)!r})")
    # recorded when the run closed; a run finished before the ledger kept it has none and cannot claim one
    if not _same(claimed.max_exposure, row.max_exposure):
        problems.append(f"canary max_exposure {claimed.max_exposure!r} (ledger: {row.max_exposure!r})")
    if claimed.weights != row.weights_sha256:  # other weights under this run's metadata
        problems.append(f"weights {claimed.weights[:16]}... (ledger: {str(row.weights_sha256)[:16]}...)")
    if claimed.config != row.config_sha256:  # an edited (or other run's) adapter_config.json under this metadata
        config = row.config_sha256
        recorded = f"{config[:16]}..." if config else "none: the run finished before the ledger kept it; retrain"
        problems.append(f"adapter_config.json {claimed.config[:16]}... (ledger: {recorded})")
    # the numbers the quality gate reads must be the ones the training process measured, not an edited file's
    if claimed.evaluation != _json(row.evaluation):
        problems.append("evaluation (base vs adapter) differs from the one the ledger recorded")
    if claimed.privacy_audit != _json(row.privacy_audit):
        problems.append("privacy_audit (epsilon lower bound) differs from the one the ledger recorded")
    # a finished run took every planned step; the ledger may have charged more (steps repeated after a resume)
    if claimed.steps != row.steps_planned or row.steps_taken < row.steps_planned:
        problems.append(f"steps {claimed.steps!r} (ledger: {row.steps_planned} planned, {row.steps_taken} charged)")
    if problems:
        raise IntegrityViolation(f"{where}: the metadata does not match the privacy ledger: {'; '.join(problems)}")
