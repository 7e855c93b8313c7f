"""The one-run privacy audit inside training (--audit-canaries): canaries, inclusion, metadata, ledger, secrecy."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from appliance.config import Settings, load_settings
from appliance.errors import ValidationFailed
from appliance.testing import MemoryAuditLog
from appliance.training import Ledger, TrainingRun, make_config
from appliance.training._audit import make_audit_canaries
from appliance.training._canaries import make_canaries
from appliance.training._fit import audit_canaries_from
from tests.training.conftest import tiny_options


class TestAuditCanaries:
    def test_each_is_a_fair_coin_and_unique(self) -> None:
        """Inclusion is a coin per canary (about half in), codes and references are unique."""
        canaries = make_audit_canaries(2000)
        included = sum(c.included for c in canaries)
        assert 900 < included < 1100  # 2000 fair coins: outside this range with probability < 1e-5
        assert len({c.code for c in canaries}) == 2000 and len({c.secret for c in canaries}) == 2000

    def test_unlike_the_exposure_canaries(self) -> None:
        """An audit canary shares neither prompt nor response form nor subject with the exposure canaries."""
        audit = make_audit_canaries(3)[0].record()
        exposure = make_canaries(1, [1])[0].records()[0]
        assert "MRN" not in audit.response and "medical record" not in audit.instruction
        assert audit.instruction != exposure.instruction and audit.subject != exposure.subject
        assert audit.subject is not None and audit.subject.startswith("audit-")

    def test_checkpoint_round_trip(self) -> None:
        """The canaries and their coins survive a checkpoint (a resumed run audits the same canaries)."""
        canaries = make_audit_canaries(5)
        state = {"audit_canaries": [[c.code, c.secret, c.included] for c in canaries]}
        assert audit_canaries_from(state) == canaries
        assert audit_canaries_from({}) == []

    def test_one_canary_is_refused(self, tmp_path: Path) -> None:
        """An audit of one canary bounds nothing: the option refuses it before anything is charged."""
        with pytest.raises(ValidationFailed, match="at least 2 audit canaries"):
            make_config(dataset=tmp_path, base=tmp_path, out=tmp_path / "o", epsilon=1.0, audit_canaries=1)


@pytest.mark.slow
class TestAuditedRun:
    def test_dp_run_records_the_bound_and_keeps_the_secrets(
        self, train_settings: Settings, prepared: Path, tiny_model: Path, tmp_path: Path
    ) -> None:
        """A DP run with audit canaries trains on exactly the included ones and records counts and bound only."""
        audit = MemoryAuditLog()
        out = tmp_path / "audited"
        run = TrainingRun(
            make_config(**tiny_options(prepared, tiny_model, out, audit_canaries=24)), train_settings, audit=audit
        )
        with capture_logs() as logs:
            run.run()
        included = sum(c.included for c in run.prepared.audit_canaries)
        assert len(run.prepared.units) == 48 + included  # 48 records of the dataset, one unit per included canary
        meta = json.loads((out / "metadata.json").read_text())
        claim = meta["privacy_audit"]
        assert set(claim) == {
            "m",
            "guesses",
            "correct",
            "epsilon_lower_bound",
            "claimed_epsilon",
            "delta",
            "significance",
        }
        assert claim["m"] == 24 and 0 <= claim["correct"] <= claim["guesses"] <= 24
        assert claim["claimed_epsilon"] == meta["dp"]["epsilon"] and claim["delta"] == meta["dp"]["delta"]
        assert 0.0 <= claim["epsilon_lower_bound"] <= claim["claimed_epsilon"]
        entry = Ledger(train_settings.ledger_path).get(meta["run_id"])
        assert entry.privacy_audit is not None and json.loads(entry.privacy_audit) == claim
        finish = [e for e in audit.events if e["type"] == "training.finish"][-1]
        assert finish["details"]["epsilon_lower_bound"] == claim["epsilon_lower_bound"]
        # neither the references, nor the codes, nor which canary was in leave the process in clear
        published = (out / "metadata.json").read_text() + json.dumps(audit.events, default=str) + repr(logs)
        for canary in run.prepared.audit_canaries:
            assert canary.secret not in published and canary.code not in published
            assert " ".join(canary.secret) not in published
        assert not (train_settings.runs_dir / meta["run_id"]).exists()

    def test_no_audit_is_null(self, train_settings: Settings, prepared: Path, tiny_model: Path, tmp_path: Path) -> None:
        """Without --audit-canaries the metadata says so (null) and the ledger keeps nothing."""
        run = TrainingRun(make_config(**tiny_options(prepared, tiny_model, tmp_path / "plain")), train_settings)
        run.run()
        meta = json.loads((tmp_path / "plain" / "metadata.json").read_text())
        assert meta["privacy_audit"] is None
        assert Ledger(train_settings.ledger_path).get(meta["run_id"]).privacy_audit is None

    def test_no_dp_run_has_no_claim(
        self, data_dir: Path, make_policy: Callable[..., Path], prepared: Path, tiny_model: Path, tmp_path: Path
    ) -> None:
        """A run without DP is audited too, at the policy's delta, with no claimed epsilon to compare."""
        settings = load_settings(data_dir=data_dir, policies_dir=make_policy(allow_no_dp=True))
        options = tiny_options(prepared, tiny_model, tmp_path / "nodp", no_dp=True, epsilon=None, audit_canaries=8)
        TrainingRun(make_config(**options), settings).run()
        claim = json.loads((tmp_path / "nodp" / "metadata.json").read_text())["privacy_audit"]
        assert claim["claimed_epsilon"] is None and claim["m"] == 8 and claim["delta"] > 0
