"""The privacy-budget ledger: a persistent record of every training run, per dataset fingerprint.

SQLite (``settings.ledger_path``) in WAL mode with ``synchronous=FULL``: a commit is on disk when it returns.
Steps are charged *before* they are taken, one commit per step, so a crash never under-counts: after a
``SIGKILL`` the ledger holds every step that may have run. A resumed run keeps charging the same row, so steps
repeated after a resume are counted again (conservative). A run that has not closed (``running``) reserves
its whole planned charge, so two concurrent runs cannot both fit into the same remaining budget. Each run also
records its dataset's source (``manifest.source.sha256``): every preparation of the same input file gets a new
fingerprint, and a dataset's spend includes the runs on all of them, so re-preparing does not reset the budget.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from appliance.contracts import LedgerEntry, ledger_entry
from appliance.errors import BudgetExhausted, Conflict, NotFound, StorageUnavailable, ValidationFailed
from appliance.training._accounting import Mechanism, composed_epsilon
from appliance.training._policy import DatasetBudget

__all__ = ["BudgetOf", "Ledger", "LedgerEntry", "LedgerSummary"]

# the budget of a shared spend, given every dataset fingerprint in it (PrivacyPolicy.budget_for)
BudgetOf = Callable[[Collection[str]], DatasetBudget]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id           TEXT PRIMARY KEY,
    fingerprint      TEXT NOT NULL,
    out_path         TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed', 'refused')),
    dp               INTEGER NOT NULL,
    privacy_unit     TEXT NOT NULL,
    target_epsilon   REAL,
    delta            REAL,
    noise_multiplier REAL,
    sample_rate      REAL,
    steps_planned    INTEGER NOT NULL,
    steps_reserved   INTEGER NOT NULL,
    steps_taken      INTEGER NOT NULL DEFAULT 0,
    epsilon          REAL,
    trained_by       TEXT NOT NULL,
    reason           TEXT,
    started_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    finished_at      TEXT,
    source_sha256    TEXT,
    max_exposure     REAL,
    weights_sha256   TEXT,
    config_sha256    TEXT,
    evaluation       TEXT,
    privacy_audit    TEXT
);
CREATE INDEX IF NOT EXISTS runs_fingerprint ON runs (fingerprint);
"""
_SOURCE_INDEX = "CREATE INDEX IF NOT EXISTS runs_source ON runs (source_sha256)"

_EPS_TOLERANCE = 1e-9


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class LedgerSummary:
    """The budget position of one dataset."""

    fingerprint: str
    budget: float
    delta: float
    spent: float  # composed epsilon of every closed run and the reservations of open ones
    runs: int

    @property
    def remaining(self) -> float:
        return max(0.0, self.budget - self.spent)


class Ledger:
    """The persistent privacy-budget ledger (one SQLite file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                db.executescript(_SCHEMA)
                columns = {row["name"] for row in db.execute("PRAGMA table_info(runs)")}
                if "source_sha256" not in columns:  # a ledger written before runs recorded their source
                    db.execute("ALTER TABLE runs ADD COLUMN source_sha256 TEXT")
                if "max_exposure" not in columns:  # a ledger written before runs recorded canary exposure
                    db.execute("ALTER TABLE runs ADD COLUMN max_exposure REAL")
                if "weights_sha256" not in columns:  # a ledger written before runs recorded their weights
                    db.execute("ALTER TABLE runs ADD COLUMN weights_sha256 TEXT")
                if "config_sha256" not in columns:  # a ledger written before runs recorded their adapter config
                    db.execute("ALTER TABLE runs ADD COLUMN config_sha256 TEXT")
                if "evaluation" not in columns:  # a ledger written before runs recorded their evaluation
                    db.execute("ALTER TABLE runs ADD COLUMN evaluation TEXT")
                if "privacy_audit" not in columns:  # a ledger written before runs recorded a privacy audit
                    db.execute("ALTER TABLE runs ADD COLUMN privacy_audit TEXT")
                db.execute(_SOURCE_INDEX)
        except (sqlite3.Error, OSError) as exc:
            raise StorageUnavailable(f"privacy ledger {path} cannot be opened: {exc}") from exc

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: the budget check and the write it guards are atomic across processes."""
        try:
            with self._connect() as db:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"privacy ledger {self.path}: {exc}") from exc

    # --- reading -------------------------------------------------------------------------------------------
    def runs(self, fingerprint: str | None = None) -> list[LedgerEntry]:
        """Every recorded run (of one dataset when given), oldest first."""
        try:
            with self._connect() as db:
                return self._runs(db, fingerprint)
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"privacy ledger {self.path}: {exc}") from exc

    def get(self, run_id: str) -> LedgerEntry:
        """One run by id (NotFound if the ledger has no such run)."""
        for entry in self.runs():
            if entry.run_id == run_id:
                return entry
        raise NotFound(f"no run {run_id} in the privacy ledger")

    def open_run_for(self, out_path: str) -> LedgerEntry | None:
        """The run still open (``running``) that writes to ``out_path``, if any."""
        open_runs = [e for e in self.runs() if e.out_path == out_path and e.status == "running"]
        return open_runs[-1] if open_runs else None

    @staticmethod
    def _runs(db: sqlite3.Connection, fingerprint: str | None, source: str | None = None) -> list[LedgerEntry]:
        """Every run, or those charged to a dataset: its own and those on any preparation of the same source
        (``source`` given, else the source its runs recorded)."""
        if fingerprint is None:
            rows = db.execute("SELECT * FROM runs ORDER BY started_at, rowid").fetchall()
        else:
            if source is None:
                row = db.execute(
                    "SELECT source_sha256 FROM runs WHERE fingerprint = ? AND source_sha256 IS NOT NULL LIMIT 1",
                    (fingerprint,),
                ).fetchone()
                source = row["source_sha256"] if row is not None else None
            rows = db.execute(
                "SELECT * FROM runs WHERE fingerprint = ? OR (? IS NOT NULL AND source_sha256 = ?)"
                " ORDER BY started_at, rowid",
                (fingerprint, source, source),
            ).fetchall()
        return [ledger_entry(dict(row)) for row in rows]

    def preparations(self, fingerprint: str, source: str | None = None) -> set[str]:
        """The fingerprints whose runs share ``fingerprint``'s spend (itself and other preparations of its source)."""
        try:
            with self._connect() as db:
                return {fingerprint, *(e.fingerprint for e in self._runs(db, fingerprint, source))}
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"privacy ledger {self.path}: {exc}") from exc

    @staticmethod
    def _budget(budget: DatasetBudget | BudgetOf, fingerprint: str, entries: list[LedgerEntry]) -> DatasetBudget:
        """A fixed budget, or the one for every preparation in the spend, read in the same transaction."""
        if isinstance(budget, DatasetBudget):
            return budget
        return budget({fingerprint, *(e.fingerprint for e in entries)})

    @staticmethod
    def _history(entries: list[LedgerEntry], exclude: str | None = None) -> list[Mechanism]:
        out = []
        for entry in entries:
            mech = entry.mechanism()
            if entry.run_id != exclude and mech is not None:
                out.append(mech)
        return out

    def spent(self, fingerprint: str, delta: float) -> float:
        """The composed epsilon charged to a dataset so far (open runs count their reservation)."""
        return composed_epsilon(self._history(self.runs(fingerprint)), delta)

    def summary(self, fingerprint: str, budget: DatasetBudget) -> LedgerSummary:
        """A dataset's budget, spend and number of runs."""
        entries = self.runs(fingerprint)
        spent = composed_epsilon(self._history(entries), budget.delta)
        return LedgerSummary(fingerprint, budget.epsilon_budget, budget.delta, spent, len(entries))

    # --- writing -------------------------------------------------------------------------------------------
    def begin(
        self,
        *,
        run_id: str,
        fingerprint: str,
        out_path: str,
        budget: DatasetBudget | BudgetOf,
        dp: bool,
        privacy_unit: str,
        target_epsilon: float | None,
        noise_multiplier: float | None,
        sample_rate: float | None,
        steps: int,
        trained_by: str,
        delta: float | None = None,
        source_sha256: str | None = None,
    ) -> None:
        """Record a new run after checking, atomically, that its planned steps fit the remaining budget.

        ``delta`` is the run's own (at most the policy's; default the policy's): the run's epsilon is reported at
        it, while the budget is composed at the policy's. A run that does not fit is recorded as ``refused`` and
        :class:`BudgetExhausted` names the remaining budget. ``source_sha256`` (the dataset's
        ``manifest.source.sha256``) composes the run with those on every other preparation of the same input;
        ``budget`` given as :data:`BudgetOf` is chosen from all of their fingerprints inside the transaction.
        """
        now = _now()
        with self._transaction() as db:
            entries = self._runs(db, fingerprint, source_sha256)
            if any(e.run_id == run_id for e in entries):
                raise Conflict(f"run {run_id} is already in the privacy ledger")
            budget = self._budget(budget, fingerprint, entries)
            if dp and delta is not None and delta > budget.delta:
                raise ValidationFailed(f"delta {delta:g} is above the policy's {budget.delta:g} for this dataset")
            refusal: str | None = None
            if dp:
                assert noise_multiplier is not None and sample_rate is not None
                history = self._history(entries)
                spent = composed_epsilon(history, budget.delta)
                after = composed_epsilon([*history, (noise_multiplier, sample_rate, steps)], budget.delta)
                if after > budget.epsilon_budget + _EPS_TOLERANCE:
                    remaining = max(0.0, budget.epsilon_budget - spent)
                    refusal = (
                        f"dataset {fingerprint[:12]} has epsilon {remaining:.3f} of {budget.epsilon_budget:g} "
                        f"remaining (spent {spent:.3f} at delta {budget.delta:g}); "
                        f"this run would bring it to {after:.3f}"
                    )
            db.execute(
                "INSERT INTO runs (run_id, fingerprint, out_path, status, dp, privacy_unit, target_epsilon, delta,"
                " noise_multiplier, sample_rate, steps_planned, steps_reserved, steps_taken, epsilon, trained_by,"
                " reason, started_at, updated_at, finished_at, source_sha256)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,0,?,?,?,?,?,?,?)",
                (
                    run_id,
                    fingerprint,
                    out_path,
                    "refused" if refusal else "running",
                    int(dp),
                    privacy_unit,
                    target_epsilon,
                    (budget.delta if delta is None else delta) if dp else None,
                    noise_multiplier,
                    sample_rate,
                    steps,
                    0 if refusal else steps,
                    0.0 if dp else None,
                    trained_by,
                    refusal,
                    now,
                    now,
                    now if refusal else None,
                    source_sha256,
                ),
            )
        if refusal:
            raise BudgetExhausted(f"privacy budget exhausted: {refusal}")

    def reserve_resume(self, run_id: str, budget: DatasetBudget | BudgetOf, remaining_steps: int) -> LedgerEntry:
        """Reopen an interrupted run: reserve the steps still to take on top of those already charged."""
        with self._transaction() as db:
            entries = self._runs(db, None)
            entry = next((e for e in entries if e.run_id == run_id), None)
            if entry is None:
                raise NotFound(f"no run {run_id} in the privacy ledger")
            if entry.status != "running":
                raise Conflict(f"run {run_id} is {entry.status}; only an interrupted run can be resumed")
            reserved = entry.steps_taken + remaining_steps
            mech = entry.mechanism(reserved)
            if mech is not None:
                same = self._runs(db, entry.fingerprint, entry.source_sha256)
                budget = self._budget(budget, entry.fingerprint, same)
                history = self._history(same, exclude=run_id)
                spent = composed_epsilon(history, budget.delta)
                after = composed_epsilon([*history, mech], budget.delta)
                if after > budget.epsilon_budget + _EPS_TOLERANCE:
                    remaining = max(0.0, budget.epsilon_budget - spent)
                    raise BudgetExhausted(
                        f"privacy budget exhausted: resuming run {run_id} needs {remaining_steps} more steps; dataset "
                        f"{entry.fingerprint[:12]} has epsilon {remaining:.3f} of {budget.epsilon_budget:g} remaining"
                    )
            db.execute(
                "UPDATE runs SET steps_reserved = ?, updated_at = ? WHERE run_id = ?", (reserved, _now(), run_id)
            )
        return self.get(run_id)

    def charge_step(self, run_id: str) -> int:
        """Charge one step before it is taken (durable on return); returns the run's steps charged so far.

        A run never charges past its reservation (Conflict): two processes on one run, such as a ``--resume``
        of a run that is still alive, would otherwise spend more than the budget check admitted."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT status, steps_taken, steps_reserved, noise_multiplier, sample_rate, delta, dp FROM runs"
                " WHERE run_id = ?",
                (run_id,),
            ).fetchone()
            if row is None or row["status"] != "running":
                raise Conflict(f"run {run_id} is not running in the privacy ledger")
            taken = int(row["steps_taken"]) + 1
            if taken > int(row["steps_reserved"]):  # only the reservation passed the budget check
                raise Conflict(
                    f"run {run_id} has charged all {row['steps_reserved']} steps it reserved (is it also running "
                    "in another process, e.g. resumed while still alive?)"
                )
            epsilon = None
            if row["dp"]:
                epsilon = composed_epsilon([(row["noise_multiplier"], row["sample_rate"], taken)], row["delta"])
            db.execute(
                "UPDATE runs SET steps_taken = ?, epsilon = ?, updated_at = ? WHERE run_id = ?",
                (taken, epsilon, _now(), run_id),
            )
        return taken

    def close(
        self,
        run_id: str,
        *,
        status: str,
        reason: str | None = None,
        max_exposure: float | None = None,
        weights_sha256: str | None = None,
        config_sha256: str | None = None,
        evaluation: str | None = None,
        privacy_audit: str | None = None,
    ) -> LedgerEntry:
        """Close a run as ``finished`` or ``failed``; from then on it counts exactly the steps it took.

        ``max_exposure`` (the canary exposure in the run's metadata), ``weights_sha256`` and ``config_sha256`` (of
        the adapter files it wrote) and ``evaluation`` (the base-vs-adapter report as JSON, what the quality gate
        reads) and ``privacy_audit`` (the one-run audit's bound, what the audit gate reads, as JSON) are kept so
        that the registry can check the run directory against them."""
        if status not in ("finished", "failed"):
            raise ValueError(f"unknown closing status {status!r}")
        now = _now()
        with self._transaction() as db:
            cur = db.execute(
                "UPDATE runs SET status = ?, reason = ?, updated_at = ?, finished_at = ?, max_exposure = ?,"
                " weights_sha256 = ?, config_sha256 = ?, evaluation = ?, privacy_audit = ?"
                " WHERE run_id = ? AND status = 'running'",
                (
                    status,
                    reason,
                    now,
                    now,
                    max_exposure,
                    weights_sha256,
                    config_sha256,
                    evaluation,
                    privacy_audit,
                    run_id,
                ),
            )
            if cur.rowcount != 1:
                raise Conflict(f"run {run_id} is not running in the privacy ledger")
        return self.get(run_id)
