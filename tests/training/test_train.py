"""End-to-end training on the tiny model: DP runs, the adapter, metadata, refusals and clean failures."""

from __future__ import annotations

import errno
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from appliance.config import Settings, load_settings
from appliance.contracts import RunMetadata
from appliance.errors import BudgetExhausted, IntakeRejected, NotFound, StorageUnavailable, ValidationFailed
from appliance.testing import MemoryAuditLog
from appliance.training import Ledger, TrainingRun, composed_epsilon, make_config, train
from tests.training.conftest import fingerprint_of, tiny_options, write_prepared

pytestmark = pytest.mark.slow

CONTRACT_KEYS = set(RunMetadata.model_fields)  # metadata.json's keys: the contract's fields, every one written


def _run(settings: Settings, audit: MemoryAuditLog | None = None, **options: object) -> object:
    return train(make_config(**options), settings, audit=audit or MemoryAuditLog())


class TestRecordLevel:
    def test_record_level_run(self, train_settings: Settings, prepared: Path, tiny_model: Path, tmp_path: Path) -> None:
        """A record-level DP run writes a peft adapter, contract metadata, curves, and an exact ledger entry."""
        from peft import PeftModel
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        audit = MemoryAuditLog()
        out = tmp_path / "adapter"
        result = _run(train_settings, audit, **tiny_options(prepared, tiny_model, out, canaries=2, trained_by="dr-x"))
        meta = json.loads((out / "metadata.json").read_text())
        assert set(meta) == CONTRACT_KEYS
        assert meta["dp"]["enabled"] is True and meta["dp"]["privacy_unit"] == "record"
        assert meta["dp"]["accountant"] == "rdp" and 0 < meta["dp"]["epsilon"] <= 4.0
        assert meta["dataset"]["fingerprint"] == fingerprint_of(prepared)
        assert meta["steps"] == 4 and meta["trained_by"] == "dr-x"
        assert meta["canaries"]["count"] == 2 and len(meta["canaries"]["exposures"]) == 2
        assert all(e["exposure"] >= 0 for e in meta["canaries"]["exposures"])
        assert set(meta["metrics"]) == {"eval_loss", "perplexity", "train_loss"}
        # every run ends with the evaluation of base and adapter on the eval split, kept by the ledger too
        evaluation = meta["evaluation"]
        assert evaluation["split"] == "eval" and evaluation["n"] == 8
        assert evaluation["adapter"]["loss"] == pytest.approx(meta["metrics"]["eval_loss"], abs=1e-5)
        assert evaluation["delta"]["loss"] == pytest.approx(
            evaluation["adapter"]["loss"] - evaluation["base"]["loss"], abs=1e-5
        )
        entry = Ledger(train_settings.ledger_path).get(meta["run_id"])
        assert entry.evaluation is not None and json.loads(entry.evaluation) == evaluation
        finish = [e for e in audit.events if e["type"] == "training.finish"][-1]
        assert finish["details"]["eval_loss_delta"] == evaluation["delta"]["loss"]
        assert {p.name for p in out.iterdir()} >= {
            "adapter_config.json", "adapter_model.safetensors", "metadata.json", "loss.png", "epsilon.png"
        }  # fmt: skip
        assert (out / "loss.png").read_bytes().startswith(b"\x89PNG")
        # plain peft loads it: peft's own key names, no Opacus prefix, weights that moved
        keys = load_file(str(out / "adapter_model.safetensors"))
        assert keys and not any("_module." in k for k in keys)
        assert all(k.startswith("base_model.model.") for k in keys)
        assert any(torch.count_nonzero(v) for k, v in keys.items() if "lora_B" in k)
        config = json.loads((out / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == str(tiny_model.resolve())
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model))
        model = PeftModel.from_pretrained(base, str(out))
        loaded = dict(model.named_parameters())
        some = next(k for k in keys if "lora_B" in k)
        assert torch.equal(loaded[some.replace(".weight", ".default.weight")], keys[some])
        # the ledger counts exactly the steps taken, at the epsilon reported
        entry = Ledger(train_settings.ledger_path).get(meta["run_id"])
        assert entry.status == "finished" and entry.steps_taken == 4
        assert entry.max_exposure == meta["canaries"]["max_exposure"]  # the registry checks the metadata against it
        assert entry.weights_sha256 == hashlib.sha256((out / "adapter_model.safetensors").read_bytes()).hexdigest()
        assert entry.config_sha256 == hashlib.sha256((out / "adapter_config.json").read_bytes()).hexdigest()
        assert entry.epsilon == pytest.approx(
            composed_epsilon([(meta["dp"]["noise_multiplier"], meta["dp"]["sample_rate"], 4)], meta["dp"]["delta"])
        )
        assert [e["type"] for e in audit.events] == ["training.start", "training.finish"]
        assert audit.events[1]["outcome"]["status"] == "success"
        assert result.run_id == meta["run_id"]  # type: ignore[attr-defined]
        # checkpoints (which hold the canary secrets) are gone once the adapter is final
        assert not (train_settings.runs_dir / meta["run_id"]).exists()

    def test_metadata_never_holds_secrets(
        self, train_settings: Settings, prepared: Path, tiny_model: Path, tmp_path: Path
    ) -> None:
        """Canary secrets and training text appear nowhere in the output directory (metadata.json, the sealed
        canaries, every other file) or the audit events; the sealed file is there, owner-only."""
        audit = MemoryAuditLog()
        run = TrainingRun(
            make_config(**tiny_options(prepared, tiny_model, tmp_path / "a", canaries=1)), train_settings, audit=audit
        )
        run.run()
        secret = run.prepared.canaries[0].secret
        text = (tmp_path / "a" / "metadata.json").read_text() + json.dumps(audit.events, default=str)
        assert secret not in text and "Summarise visit" not in text
        sealed = tmp_path / "a" / "canaries.sealed"
        assert sealed.is_file() and sealed.stat().st_mode & 0o077 == 0
        for path in (tmp_path / "a").rglob("*"):
            assert not path.is_file() or secret.encode() not in path.read_bytes(), path


class TestSubjectLevel:
    def test_subject_level_run(
        self, train_settings: Settings, prepared: Path, tiny_model: Path, tmp_path: Path
    ) -> None:
        """A subject-level run samples subjects (one unit each) and records the unit in the metadata."""
        out = tmp_path / "adapter"
        _run(train_settings, **tiny_options(prepared, tiny_model, out, privacy_unit="subject", batch_size=4))
        meta = json.loads((out / "metadata.json").read_text())
        assert meta["dp"]["privacy_unit"] == "subject"
        assert meta["dp"]["sample_rate"] == pytest.approx(1 / 3)  # 12 subjects, expected batch 4
        assert 0 < meta["dp"]["epsilon"] <= 4.0

    def test_delta_below_the_policy_is_the_delta_of_the_reported_epsilon(
        self, train_settings: Settings, prepared: Path, tiny_model: Path, tmp_path: Path
    ) -> None:
        """With --delta below the policy's (1e-5), metadata's epsilon is the epsilon at metadata's delta: an epsilon
        taken at the larger policy delta would state a stronger guarantee than the run has."""
        out = tmp_path / "adapter"
        _run(train_settings, **tiny_options(prepared, tiny_model, out, delta=1e-9))
        dp = json.loads((out / "metadata.json").read_text())["dp"]
        assert dp["delta"] == 1e-9
        assert dp["epsilon"] == pytest.approx(
            composed_epsilon([(dp["noise_multiplier"], dp["sample_rate"], 4)], dp["delta"])
        )
        assert dp["epsilon"] <= 4.0


class TestRefusals:
    def test_over_budget_is_refused_before_it_starts(
        self, data_dir: Path, make_policy: Callable[..., Path], prepared: Path, tiny_model: Path, tmp_path: Path
    ) -> None:
        """Past the dataset's budget a run is refused with the remaining epsilon; nothing is written or charged."""
        settings = load_settings(data_dir=data_dir, policies_dir=make_policy(default={"epsilon_budget": 4.5}))
        _run(settings, **tiny_options(prepared, tiny_model, tmp_path / "first", epsilon=4.0))
        spent = Ledger(settings.ledger_path).spent(fingerprint_of(prepared), 1e-5)
        audit = MemoryAuditLog()
        with pytest.raises(BudgetExhausted) as err:
            _run(settings, audit, **tiny_options(prepared, tiny_model, tmp_path / "second", epsilon=4.0))
        assert f"{4.5 - spent:.3f} of 4.5 remaining" in str(err.value)
        assert not (tmp_path / "second").exists()
        assert [e["type"] for e in audit.events] == ["training.refused"]
        statuses = [e.status for e in Ledger(settings.ledger_path).runs()]
        assert statuses == ["finished", "refused"]

    def test_re_preparing_the_source_does_not_reset_the_budget(
        self, data_dir: Path, make_policy: Callable[..., Path], tiny_model: Path, tmp_path: Path
    ) -> None:
        """`data prepare` run again on the same input gives a new fingerprint, not a fresh budget."""
        from appliance.intake import prepare, write_synthetic

        source = tmp_path / "export.jsonl"
        write_synthetic(source, n=120, seed=3)
        first, second = tmp_path / "prep1", tmp_path / "prep2"
        prepare(source, first)
        prepare(source, second)
        assert fingerprint_of(first) != fingerprint_of(second)
        settings = load_settings(data_dir=data_dir, policies_dir=make_policy(default={"epsilon_budget": 4.5}))
        _run(settings, **tiny_options(first, tiny_model, tmp_path / "a", epsilon=4.0))
        with pytest.raises(BudgetExhausted, match="remaining"):
            _run(settings, **tiny_options(second, tiny_model, tmp_path / "b", epsilon=4.0))
        assert not (tmp_path / "b").exists()

    def test_re_preparing_the_source_keeps_its_override(
        self, data_dir: Path, make_policy: Callable[..., Path], tiny_model: Path, tmp_path: Path
    ) -> None:
        """A budget override on one preparation also budgets the runs on a re-preparation (new fingerprint)."""
        from appliance.intake import prepare, write_synthetic

        source = tmp_path / "export.jsonl"
        write_synthetic(source, n=120, seed=3)
        first, second = tmp_path / "prep1", tmp_path / "prep2"
        prepare(source, first)
        prepare(source, second)
        override = {fingerprint_of(first): {"epsilon_budget": 4.5, "delta": 1e-5}}
        settings = load_settings(data_dir=data_dir, policies_dir=make_policy(datasets=override))
        _run(settings, **tiny_options(first, tiny_model, tmp_path / "a", epsilon=4.0))
        with pytest.raises(BudgetExhausted, match=r"of 4\.5 remaining"):
            _run(settings, **tiny_options(second, tiny_model, tmp_path / "b", epsilon=4.0))
        assert not (tmp_path / "b").exists()

    def test_no_dp_needs_policy_and_is_recorded(
        self, data_dir: Path, make_policy: Callable[..., Path], prepared: Path, tiny_model: Path, tmp_path: Path
    ) -> None:
        """--no-dp is refused by the shipped policy; where allowed, the metadata and ledger say no DP."""
        settings = load_settings(data_dir=data_dir, policies_dir=make_policy())
        with pytest.raises(ValidationFailed, match="no-dp"):
            _run(settings, **tiny_options(prepared, tiny_model, tmp_path / "x", no_dp=True, epsilon=None))
        settings = load_settings(data_dir=data_dir, policies_dir=make_policy(allow_no_dp=True))
        _run(settings, **tiny_options(prepared, tiny_model, tmp_path / "plain", no_dp=True, epsilon=None))
        meta = json.loads((tmp_path / "plain" / "metadata.json").read_text())
        assert meta["dp"]["enabled"] is False and meta["dp"]["epsilon"] is None
        (entry,) = Ledger(settings.ledger_path).runs()
        assert entry.dp is False and entry.steps_taken == 4

    def test_unknown_base(self, train_settings: Settings, prepared: Path, tmp_path: Path) -> None:
        """A base that is not a model directory is NotFound, before any budget is charged."""
        with pytest.raises(NotFound, match="unknown base model"):
            _run(train_settings, **tiny_options(prepared, tmp_path / "nobase", tmp_path / "out"))
        assert Ledger(train_settings.ledger_path).runs() == []

    def test_malformed_dataset(self, train_settings: Settings, tiny_model: Path, tmp_path: Path) -> None:
        """A raw JSONL directory (not prepared) is refused, and nothing is charged or written."""
        raw = tmp_path / "raw"
        raw.mkdir()
        (raw / "train.jsonl").write_text('{"instruction": "a", "response": "b"}\n')
        with pytest.raises(IntakeRejected):
            _run(train_settings, **tiny_options(raw, tiny_model, tmp_path / "out"))
        assert not (tmp_path / "out").exists() and Ledger(train_settings.ledger_path).runs() == []

    def test_existing_output_is_never_overwritten(
        self, train_settings: Settings, prepared: Path, tiny_model: Path, tmp_path: Path
    ) -> None:
        """An output directory with content is refused before training."""
        out = tmp_path / "out"
        out.mkdir()
        (out / "keep.txt").write_text("x")
        with pytest.raises(ValidationFailed, match="not empty"):
            _run(train_settings, **tiny_options(prepared, tiny_model, out))
        assert (out / "keep.txt").read_text() == "x"

    def test_bad_options(self, train_settings: Settings, prepared: Path, tiny_model: Path, tmp_path: Path) -> None:
        """DP without epsilon, or a batch larger than the dataset, are clear validation errors."""
        with pytest.raises(ValidationFailed, match="epsilon"):
            make_config(**tiny_options(prepared, tiny_model, tmp_path / "o", epsilon=None))
        small = write_prepared(tmp_path / "small", train=6, evals=2, subjects=3)
        with pytest.raises(ValidationFailed, match="batch size"):
            _run(train_settings, **tiny_options(small, tiny_model, tmp_path / "o", batch_size=16))

    def test_disk_full_leaves_nothing_that_looks_complete(
        self,
        train_settings: Settings,
        prepared: Path,
        tiny_model: Path,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """ENOSPC while writing the output is a clear StorageUnavailable; no adapter or partial directory remains."""

        def full(*args: object, **kwargs: object) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr("appliance.training._run.write_curves", full)
        out = tmp_path / "out"
        with pytest.raises(StorageUnavailable, match="disk full"):
            _run(train_settings, **tiny_options(prepared, tiny_model, out))
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
        (entry,) = Ledger(train_settings.ledger_path).runs()
        assert entry.status == "running" and entry.steps_taken == 4  # charged, and resumable

    def test_a_failed_run_deletes_its_checkpoint_and_canary_secrets(
        self,
        train_settings: Settings,
        prepared: Path,
        tiny_model: Path,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A run closed as failed cannot be resumed (nor abandoned): its run directory, whose checkpoint holds the
        canary secrets, must not stay behind."""
        from appliance.errors import TrainingFailed

        def boom(self: TrainingRun) -> None:
            raise RuntimeError("evaluation crashed")

        monkeypatch.setattr(TrainingRun, "evaluate", boom)
        options = tiny_options(prepared, tiny_model, tmp_path / "out", canaries=1, checkpoint_every=2)
        with pytest.raises(TrainingFailed, match="evaluation crashed"):
            _run(train_settings, **options)
        (entry,) = Ledger(train_settings.ledger_path).runs()
        assert entry.status == "failed" and entry.steps_taken == 4
        assert not (train_settings.runs_dir / entry.run_id).exists()

    def test_a_run_abandoned_while_alive_leaves_no_checkpoint_behind(
        self, train_settings: Settings, prepared: Path, tiny_model: Path, tmp_path: Path
    ) -> None:
        """`ledger abandon` deletes the run directory, but the live run may write one more checkpoint (with the
        canary secrets) before its next charge is refused: that one is deleted too."""
        import shutil

        from appliance.errors import Conflict
        from appliance.training import StepInfo

        ledger = Ledger(train_settings.ledger_path)

        def abandon_at_step_2(info: StepInfo) -> None:
            if info.step == 2:  # what `appliance ledger abandon` does, while the run is between two steps
                (entry,) = ledger.runs()
                ledger.close(entry.run_id, status="failed", reason="abandoned")
                shutil.rmtree(train_settings.runs_dir / entry.run_id)

        options = tiny_options(prepared, tiny_model, tmp_path / "out", canaries=1, checkpoint_every=1)
        with pytest.raises(Conflict, match="not running"):
            train(make_config(**options), train_settings, audit=MemoryAuditLog(), on_step=abandon_at_step_2)
        (entry,) = ledger.runs()
        assert entry.reason == "abandoned" and entry.steps_taken == 2  # the third charge was refused
        assert not (train_settings.runs_dir / entry.run_id).exists()
