"""The privacy-budget ledger's rows (``<data_dir>/ledger.db``): their shape, and a read-only view of one.

Training owns the ledger (``appliance/training/_ledger.py``: schema, migrations, every write); this is the shape
of a row it writes (``LedgerEntry``) and the one way another stage reads a row (``read_ledger_entry``: the SQLite
file opened read-only, ``mode=ro``), so the registry checks a run directory against the ledger without the
training stack and without SQL of its own. A column a ledger from an older version lacks reads as None.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LedgerEntry", "ledger_entry", "read_ledger_entry"]


@dataclass(frozen=True)
class LedgerEntry:
    """One run as the ledger records it."""

    run_id: str
    fingerprint: str
    out_path: str
    status: str  # running | finished | failed | refused
    dp: bool
    privacy_unit: str
    target_epsilon: float | None
    delta: float | None
    noise_multiplier: float | None
    sample_rate: float | None
    steps_planned: int
    steps_reserved: int
    steps_taken: int
    epsilon: float | None
    trained_by: str
    reason: str | None
    started_at: str
    updated_at: str
    finished_at: str | None
    source_sha256: str | None = None  # the raw input the dataset was prepared from (None: not known)
    max_exposure: float | None = None  # the finished run's highest canary exposure, bits (None: none measured)
    weights_sha256: str | None = None  # SHA-256 of the finished run's adapter_model.safetensors
    config_sha256: str | None = None  # SHA-256 of the finished run's adapter_config.json bytes
    evaluation: str | None = None  # the finished run's base-vs-adapter evaluation, JSON (appliance.evaluation)
    privacy_audit: str | None = None  # the finished run's one-run audit (counts, bound, claimed epsilon), JSON

    @property
    def charged_steps(self) -> int:
        """Steps this run counts against the budget: its reservation while open, what it took once closed."""
        if self.status == "running":
            return max(self.steps_taken, self.steps_reserved)
        return self.steps_taken

    def mechanism(self, steps: int | None = None) -> tuple[float, float, int] | None:
        """This run as an RDP mechanism ``(noise_multiplier, sample_rate, steps)``, or None without DP."""
        if not self.dp or self.noise_multiplier is None or self.sample_rate is None:
            return None
        return (self.noise_multiplier, self.sample_rate, self.charged_steps if steps is None else steps)


_COLUMNS = tuple(f.name for f in dataclasses.fields(LedgerEntry))


def ledger_entry(row: Mapping[str, Any]) -> LedgerEntry:
    """The entry of one ``runs`` row (a column the row lacks keeps its default)."""
    values = {name: row[name] for name in _COLUMNS if name in row}
    return LedgerEntry(**{**values, "dp": bool(values["dp"])})


def read_ledger_entry(path: Path, run_id: str) -> LedgerEntry | None:
    """The ledger's entry for ``run_id`` (None: no ledger file, or no such run), read through a read-only
    connection. ``sqlite3.Error`` when the file cannot be read (the caller says which stage failed)."""
    if not path.is_file():
        return None
    db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=30.0)
    try:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else ledger_entry({key: row[key] for key in row.keys()})  # noqa: SIM118
    finally:
        db.close()
