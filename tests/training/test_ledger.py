"""The privacy-budget ledger: composition, refusal with the remaining budget, reservations, charges."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.errors import BudgetExhausted, Conflict
from appliance.training import DatasetBudget, Ledger, PrivacyPolicy, composed_epsilon

FP = "f0" * 32
BUDGET = DatasetBudget(epsilon_budget=8.0, delta=1e-5)


def _begin(ledger: Ledger, run_id: str, steps: int = 10, sigma: float = 1.0, **kw: Any) -> None:
    ledger.begin(
        run_id=run_id,
        fingerprint=kw.pop("fingerprint", FP),
        out_path=f"/out/{run_id}",
        budget=kw.pop("budget", BUDGET),
        dp=kw.pop("dp", True),
        privacy_unit="record",
        target_epsilon=1.0,
        noise_multiplier=sigma,
        sample_rate=0.1,
        steps=steps,
        trained_by="tester",
        source_sha256=kw.pop("source_sha256", None),
    )


class TestLedger:
    def test_charges_are_durable_and_counted(self, tmp_path: Path) -> None:
        """Each charged step is in the file at once; a closed run counts exactly the steps it took."""
        ledger = Ledger(tmp_path / "ledger.db")
        _begin(ledger, "r1", steps=10)
        for _ in range(3):
            ledger.charge_step("r1")
        reopened = Ledger(tmp_path / "ledger.db").get("r1")
        assert reopened.steps_taken == 3 and reopened.charged_steps == 10  # open: reserves its plan
        closed = ledger.close("r1", status="failed", reason="test")
        assert closed.charged_steps == 3
        assert closed.epsilon == pytest.approx(composed_epsilon([(1.0, 0.1, 3)], 1e-5))

    def test_refuses_over_budget_with_remaining(self, tmp_path: Path) -> None:
        """A run whose plan would pass the budget is refused before it starts; the message gives what is left."""
        ledger = Ledger(tmp_path / "ledger.db")
        _begin(ledger, "r1", steps=10)
        spent = ledger.spent(FP, BUDGET.delta)
        with pytest.raises(BudgetExhausted) as err:
            _begin(ledger, "r2", steps=2000)
        assert f"{BUDGET.epsilon_budget - spent:.3f} of 8 remaining" in str(err.value)
        refused = ledger.get("r2")
        assert refused.status == "refused" and refused.charged_steps == 0
        assert ledger.spent(FP, BUDGET.delta) == pytest.approx(spent)

    def test_composes_across_runs(self, tmp_path: Path) -> None:
        """The dataset's spend is the RDP composition of its runs, and other datasets are separate."""
        ledger = Ledger(tmp_path / "ledger.db")
        _begin(ledger, "a", steps=20)
        _begin(ledger, "b", steps=30, sigma=1.5)
        _begin(ledger, "c", steps=30, fingerprint="0e" * 32)
        expected = composed_epsilon([(1.0, 0.1, 20), (1.5, 0.1, 30)], 1e-5)
        assert ledger.spent(FP, 1e-5) == pytest.approx(expected)
        assert ledger.summary(FP, BUDGET).remaining == pytest.approx(8.0 - expected)

    def test_no_dp_runs_are_recorded_but_not_composed(self, tmp_path: Path) -> None:
        """A --no-dp run is in the ledger, marked as such, and adds no epsilon."""
        ledger = Ledger(tmp_path / "ledger.db")
        ledger.begin(
            run_id="plain",
            fingerprint=FP,
            out_path="/out/plain",
            budget=BUDGET,
            dp=False,
            privacy_unit="record",
            target_epsilon=None,
            noise_multiplier=None,
            sample_rate=0.1,
            steps=5,
            trained_by="tester",
        )
        ledger.charge_step("plain")
        entry = ledger.get("plain")
        assert entry.dp is False and entry.epsilon is None and entry.steps_taken == 1
        assert ledger.spent(FP, 1e-5) == 0.0

    def test_resume_reserves_on_top_of_charged_steps(self, tmp_path: Path) -> None:
        """Resuming reserves the steps still to take on top of those charged, and refuses if that no longer fits."""
        ledger = Ledger(tmp_path / "ledger.db")
        _begin(ledger, "r1", steps=10)
        for _ in range(7):
            ledger.charge_step("r1")
        entry = ledger.reserve_resume("r1", BUDGET, remaining_steps=6)  # checkpoint at 4 -> 6 more steps
        assert entry.steps_reserved == 13 and entry.charged_steps == 13
        with pytest.raises(BudgetExhausted, match="remaining"):
            ledger.reserve_resume("r1", BUDGET, remaining_steps=5000)

    def test_closed_run_cannot_be_charged(self, tmp_path: Path) -> None:
        """Once closed, a run takes no more charges and cannot be resumed."""
        ledger = Ledger(tmp_path / "ledger.db")
        _begin(ledger, "r1")
        ledger.close("r1", status="finished")
        with pytest.raises(Conflict):
            ledger.charge_step("r1")
        with pytest.raises(Conflict):
            ledger.reserve_resume("r1", BUDGET, 1)

    def test_re_preparing_the_same_source_does_not_reset_the_budget(self, tmp_path: Path) -> None:
        """Each `data prepare` of one input gets a new fingerprint; its runs compose with the earlier ones."""
        ledger = Ledger(tmp_path / "ledger.db")
        src = "5c" * 32
        _begin(ledger, "first", steps=300, sigma=1.5, source_sha256=src)
        spent = ledger.spent(FP, BUDGET.delta)
        again = "ab" * 32  # the same source prepared again: a fresh salt, a fresh fingerprint
        assert ledger.spent(again, BUDGET.delta) == 0.0
        with pytest.raises(BudgetExhausted, match="remaining"):
            _begin(ledger, "second", steps=300, sigma=1.5, fingerprint=again, source_sha256=src)
        assert ledger.get("second").status == "refused"
        assert ledger.spent(again, BUDGET.delta) == pytest.approx(spent)
        assert ledger.summary(FP, BUDGET).spent == pytest.approx(spent)
        _begin(ledger, "other", steps=300, sigma=1.5, fingerprint="cd" * 32, source_sha256="9e" * 32)  # other input

    def test_an_override_on_one_preparation_budgets_every_preparation(self, tmp_path: Path) -> None:
        """An override on one preparation of a source is the budget of its shared spend: a re-preparation (new
        fingerprint, default budget) cannot spend past it. The budget is chosen inside the begin transaction."""
        policy = PrivacyPolicy(default=BUDGET, datasets={FP: DatasetBudget(epsilon_budget=2.0, delta=1e-5)})
        ledger = Ledger(tmp_path / "ledger.db")
        src, again = "5c" * 32, "ab" * 32
        _begin(ledger, "first", steps=10, sigma=1.5, source_sha256=src, budget=lambda f: policy.budget_for(FP, f))
        spent = ledger.spent(FP, BUDGET.delta)
        assert spent < 2.0 and ledger.preparations(again, src) == {FP, again}
        with pytest.raises(BudgetExhausted, match="of 2 remaining"):
            _begin(
                ledger,
                "second",
                steps=30,
                sigma=1.5,
                fingerprint=again,
                source_sha256=src,
                budget=lambda f: policy.budget_for(again, f),
            )
        assert ledger.get("second").status == "refused"
        with pytest.raises(BudgetExhausted, match="of 2 remaining"):
            ledger.reserve_resume("first", lambda f: policy.budget_for(FP, f), 40)

    def test_a_ledger_from_before_sources_is_upgraded(self, tmp_path: Path) -> None:
        """A ledger file without the source column gains it on open; its runs still count."""
        import sqlite3

        path = tmp_path / "ledger.db"
        ledger = Ledger(path)
        _begin(ledger, "old", steps=10)
        db = sqlite3.connect(path)
        db.execute("DROP INDEX runs_source")
        db.execute("ALTER TABLE runs DROP COLUMN source_sha256")
        db.commit()
        db.close()
        reopened = Ledger(path)
        assert reopened.get("old").source_sha256 is None
        assert reopened.spent(FP, 1e-5) == pytest.approx(composed_epsilon([(1.0, 0.1, 10)], 1e-5))
        _begin(reopened, "new", steps=10, source_sha256="5c" * 32)
        assert reopened.get("new").source_sha256 == "5c" * 32

    def test_a_ledger_from_before_config_digests_is_upgraded(self, tmp_path: Path) -> None:
        """A ledger file without the config_sha256 column gains it on open: its finished runs keep none (the
        registry refuses them: retrain), its open runs record one when they close."""
        import sqlite3

        path = tmp_path / "ledger.db"
        ledger = Ledger(path)
        for run_id in ("old", "open"):
            _begin(ledger, run_id, steps=1)
            ledger.charge_step(run_id)
        ledger.close("old", status="finished", weights_sha256="ab" * 32)
        db = sqlite3.connect(path)
        db.execute("ALTER TABLE runs DROP COLUMN config_sha256")
        db.commit()
        db.close()
        reopened = Ledger(path)
        assert reopened.get("old").config_sha256 is None and reopened.get("old").weights_sha256 == "ab" * 32
        reopened.close("open", status="finished", weights_sha256="cd" * 32, config_sha256="ef" * 32)
        assert reopened.get("open").config_sha256 == "ef" * 32

    def test_a_run_never_charges_past_its_reservation(self, tmp_path: Path) -> None:
        """Resuming a run that is in fact still alive: the two processes together stop at the reservation,
        the only spend the budget check admitted."""
        ledger = Ledger(tmp_path / "ledger.db")
        _begin(ledger, "r1", steps=5)
        for _ in range(3):
            ledger.charge_step("r1")
        ledger.reserve_resume("r1", BUDGET, remaining_steps=2)  # the "interrupted" run is still charging
        ledger.charge_step("r1")
        ledger.charge_step("r1")
        with pytest.raises(Conflict, match="reserved"):
            ledger.charge_step("r1")
        entry = ledger.get("r1")
        assert entry.steps_taken == 5 and entry.charged_steps == 5
