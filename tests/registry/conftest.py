"""Registry fixtures: real run directories (a peft LoRA on the tiny model, no DP training), keys, audit, registry.

A LoRA is written once per session with peft's ``save_pretrained`` on the ``tiny_model`` fixture; each run
directory gets its own copy of those tensors shifted by a seeded amount (so each has its own fingerprint), a
prepared dataset with salted subject digests, a ``metadata.json`` per contracts.md, and the finished run's row in
the data directory's privacy ledger (which the registry checks the metadata against).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import secrets
import shutil
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from appliance.config import Settings, load_settings
from appliance.contracts import (
    BaseModelRef,
    CanaryReport,
    DatasetRef,
    DPParameters,
    LedgerEntry,
    RunMetadata,
    run_metadata_json,
    subject_digest,
)
from appliance.errors import AuditUnavailable
from appliance.protocols import AuditReceipt
from appliance.registry import Actor, Registry, open_registry

TRAINER = "trainer-tom"
APPROVERS = (Actor("alice", frozenset({"approver"})), Actor("bob", frozenset({"approver"})))
OPERATOR = Actor("olga", frozenset({"admin"}))
_ROW: Mapping[str, Any] = {}  # make_run's default: the ledger row agrees with the metadata


@pytest.fixture(scope="session")
def lora_template(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter on the tiny model, written by peft's save_pretrained (once per session)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    peft_model = get_peft_model(model, config)
    out = tmp_path_factory.mktemp("lora") / "template"
    peft_model.save_pretrained(out)
    return out


def _digest(salt: str, subject: str) -> str:
    return subject_digest(bytes.fromhex(salt), subject)


def make_dataset(root: Path, train_subjects: list[str], eval_subjects: list[str] | None = None) -> Path:
    """A prepared dataset dir (train/eval JSONL with salted subject digests, manifest.json per contracts.md)."""
    root.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_hex(16)
    eval_subjects = eval_subjects or []
    train = [
        {"instruction": f"q{i}", "response": f"a{i}", "subject": _digest(salt, s)} for i, s in enumerate(train_subjects)
    ]
    evals = [
        {"instruction": f"e{i}", "response": f"b{i}", "subject": _digest(salt, s)} for i, s in enumerate(eval_subjects)
    ]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    fingerprint = hashlib.sha256((root / "train.jsonl").read_bytes() + (root / "eval.jsonl").read_bytes()).hexdigest()
    digests = sorted({_digest(salt, s) for s in [*train_subjects, *eval_subjects]})
    manifest = {
        "format_version": 1,
        "fingerprint": fingerprint,
        "counts": {
            "input": len(train) + len(evals),
            "invalid": 0,
            "exact_duplicates": 0,
            "near_duplicates": 0,
            "train": len(train),
            "eval": len(evals),
        },
        "scrub_report": {},
        "subjects": {"salt": salt, "digests": digests},
        "source": {"sha256": "0" * 64, "records": len(train) + len(evals)},
        "created_at": "2026-11-23T14:00:00Z",
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def record_in_ledger(ledger_path: Path, run: Path, **columns: Any) -> None:
    """Write the ledger row training would have written for the ``run`` directory (``columns`` override it)."""
    from appliance.training._ledger import Ledger

    Ledger(ledger_path)  # creates the schema
    metadata = json.loads((run / "metadata.json").read_text())
    dp = metadata["dp"]
    entry = LedgerEntry(
        run_id=metadata["run_id"],
        fingerprint=metadata["dataset"]["fingerprint"],
        out_path="/runs/" + metadata["run_id"],
        status="finished",
        dp=bool(dp["enabled"]),
        privacy_unit=dp.get("privacy_unit", "record"),
        target_epsilon=dp.get("epsilon"),
        delta=dp.get("delta"),
        noise_multiplier=dp.get("noise_multiplier"),
        sample_rate=dp.get("sample_rate"),
        steps_planned=metadata["steps"],
        steps_reserved=metadata["steps"],
        steps_taken=metadata["steps"],
        epsilon=dp.get("epsilon"),
        trained_by=metadata["trained_by"],
        reason=None,
        started_at="2026-11-23T14:00:00+00:00",
        updated_at="2026-11-23T14:01:00+00:00",
        finished_at="2026-11-23T14:01:00+00:00",
        source_sha256="0" * 64,
        max_exposure=metadata["canaries"]["max_exposure"] if metadata["canaries"]["exposures"] else None,
        weights_sha256=hashlib.sha256((run / "adapter_model.safetensors").read_bytes()).hexdigest(),
        config_sha256=hashlib.sha256((run / "adapter_config.json").read_bytes()).hexdigest(),
        evaluation=json.dumps(metadata["evaluation"], sort_keys=True) if metadata.get("evaluation") else None,
        privacy_audit=json.dumps(metadata["privacy_audit"]) if metadata.get("privacy_audit") else None,
    )
    row = {**dataclasses.asdict(entry), **columns}
    db = sqlite3.connect(ledger_path)
    try:
        with db:
            db.execute(
                f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",  # noqa: S608 (fixed column names)
                tuple(row.values()),
            )
    finally:
        db.close()


RunFactory = Callable[..., Path]


def evaluation(
    *, base_loss: float, adapter_loss: float, base_em: float | None, adapter_em: float | None
) -> dict[str, Any]:
    """An evaluation report (appliance.evaluation's format) with the given base and adapter figures."""

    def figures(loss: float, em: float | None) -> dict[str, Any]:
        return {
            "loss": loss,
            "loss_ci": [loss - 0.1, loss + 0.1],
            "perplexity": round(math.exp(loss), 6),
            "perplexity_ci": [0.0, 0.0],
            "exact_match": em,
            "exact_match_ci": None if em is None else [em, em],
        }

    gain = None if adapter_em is None or base_em is None else round(adapter_em - base_em, 6)
    return {
        "split": "eval",
        "n": 8,
        "exact_match_n": 0 if base_em is None else 8,
        "base": figures(base_loss, base_em),
        "adapter": figures(adapter_loss, adapter_em),
        "delta": {
            "loss": round(adapter_loss - base_loss, 6),
            "loss_ci": [0.0, 0.0],
            "perplexity": 0.0,
            "exact_match": gain,
            "exact_match_ci": None,
        },
        "bootstrap": {"resamples": 1000, "seed": 0, "level": 0.95},
    }


def run_metadata(
    n: int,
    base: Path,
    base_hash: str,
    dataset: Path,
    *,
    trained_by: str = TRAINER,
    dp: Mapping[str, Any] | None = None,
    max_exposure: float | None = 2.0,
) -> dict[str, Any]:
    """The ``metadata.json`` of finished run number ``n`` on ``base`` over the prepared ``dataset``, built with the
    run-metadata contract; ``dp`` overrides DP parameters. Its evaluation passes the approval gate."""
    manifest = json.loads((dataset / "manifest.json").read_text())
    return run_metadata_json(
        RunMetadata(
            format_version=1,
            appliance_version="0.1.0",
            run_id=f"run-{n}-{secrets.token_hex(3)}",
            trained_by=trained_by,
            base_model=BaseModelRef(path=str(base), sha256=base_hash),
            dataset=DatasetRef(fingerprint=manifest["fingerprint"], path=str(dataset)),
            dp=DPParameters.model_validate(
                {
                    "enabled": True,
                    "epsilon": 4.0,
                    "delta": 1e-5,
                    "noise_multiplier": 1.1,
                    "sample_rate": 0.01,
                    "max_grad_norm": 1.0,
                    "privacy_unit": "record",
                    "accountant": "rdp",
                    **(dp or {}),
                }
            ),
            lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            hyperparameters={"learning_rate": 1e-3, "batch_size": 4, "max_length": 64, "steps": 2, "seed": n},
            steps=2,
            metrics={"eval_loss": 5.1, "perplexity": 164.0, "train_loss": 5.3},
            evaluation=evaluation(base_loss=5.4, adapter_loss=5.1, base_em=0.25, adapter_em=0.5),
            canaries=CanaryReport(count=2, exposures=[{"repetitions": 1, "exposure": 1.0}], max_exposure=max_exposure),
            packages={"torch": "2.13.0", "transformers": "5.23.0", "peft": "0.21.2", "opacus": "1.6.0"},
            started_at="2026-11-23T14:00:00Z",
            finished_at="2026-11-23T14:01:00Z",
        )
    )


@pytest.fixture
def make_run(tmp_path: Path, lora_template: Path, tiny_model: Path, data_dir: Path) -> RunFactory:
    """Build a complete training run directory; keyword arguments override metadata fields.

    The run is also recorded as finished in the data directory's ledger: ``ledger`` overrides columns of that
    row, ``ledger=None`` leaves the run out of the ledger, ``ledger_db`` names another data directory's ledger.
    """
    from safetensors.numpy import load_file, save_file

    from appliance.models import model_hash

    tensors = load_file(str(lora_template / "adapter_model.safetensors"))
    base_hash = model_hash(tiny_model)
    counter = iter(range(1, 10_000))

    def build(
        *,
        dataset: Path | None = None,
        dp: Mapping[str, Any] | None = None,
        max_exposure: float | None = 2.0,
        trained_by: str = TRAINER,
        prefix_keys: bool = False,
        ledger: Mapping[str, Any] | None = _ROW,
        ledger_db: Path | None = None,
        **overrides: Any,
    ) -> Path:
        n = next(counter)
        run = tmp_path / f"run-{n}"
        run.mkdir()
        shifted = {(f"_module.{k}" if prefix_keys else k): (v + n * 1e-3).astype(v.dtype) for k, v in tensors.items()}
        save_file(shifted, str(run / "adapter_model.safetensors"))
        shutil.copy(lora_template / "adapter_config.json", run / "adapter_config.json")
        ds = dataset or make_dataset(tmp_path / f"dataset-{n}", ["p-1", "p-2", "p-2", "p-3"], ["p-4"])
        metadata = run_metadata(n, tiny_model, base_hash, ds, trained_by=trained_by, dp=dp, max_exposure=max_exposure)
        metadata.update(overrides)
        (run / "metadata.json").write_text(json.dumps(metadata))
        if ledger is not None:
            record_in_ledger(ledger_db or data_dir / "ledger.db", run, **ledger)
        return run

    return build


class RecordingAudit:
    """An in-test AuditLog that keeps events in memory and can be told to refuse (simulates a full audit disk)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.fail = False

    def record_sync(self, event: Mapping[str, Any]) -> AuditReceipt:
        if self.fail:
            raise AuditUnavailable("audit store refused the write (test)")
        self.events.append(dict(event))
        return AuditReceipt(event_id=str(len(self.events)), seq=len(self.events), record_hash="0" * 64, writer_id="t")

    async def record(self, event: Mapping[str, Any]) -> AuditReceipt:
        return self.record_sync(event)

    async def close(self) -> None:
        return None

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]


def enrol(reg: Registry) -> Registry:
    """Put APPROVERS on the registry's roster with the approver role (publish counts only current approvers)."""
    for approver in APPROVERS:
        reg.grant(approver.subject, "approver", OPERATOR)
    return reg


@pytest.fixture
def audit() -> RecordingAudit:
    """The in-memory audit recorder (the real trail is exercised in test_lifecycle and test_cli)."""
    return RecordingAudit()


@pytest.fixture
def keys(settings: Settings) -> Any:
    """The real local key service (keystore file in the test's data directory)."""
    from appliance.keys import open_key_service

    return open_key_service(settings)


@pytest.fixture
def bare_registry(settings: Settings, keys: Any, audit: RecordingAudit) -> Iterator[Registry]:
    """A registry on SQLite in the test's data directory, with nobody on its roster."""
    reg = open_registry(settings, keys=keys, audit=audit)
    yield reg
    reg.close()


@pytest.fixture
def registry(bare_registry: Registry, audit: RecordingAudit) -> Registry:
    """The registry with APPROVERS on its roster (their grants are not among ``audit``'s events)."""
    enrol(bare_registry)
    audit.events.clear()
    return bare_registry


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_settings(request: pytest.FixtureRequest, data_dir: Path) -> Settings:
    """Settings whose registry is SQLite in the data directory, or a fresh database on the real PostgreSQL."""
    from tests.conftest import REPO_ROOT

    overrides: dict[str, Any] = {}
    if request.param == "postgres":
        overrides["registry"] = {"database_url": request.getfixturevalue("postgres_url")}
    return load_settings(data_dir=data_dir, policies_dir=REPO_ROOT / "policies", **overrides)


def table_counts(reg: Registry) -> dict[str, int]:
    """Rows per registry table (to show that a failed operation changed nothing)."""
    from sqlalchemy import func, select

    from appliance.registry._models import Base

    with reg.db.engine.connect() as conn:
        return {
            t.name: conn.execute(select(func.count()).select_from(t)).scalar_one() for t in Base.metadata.sorted_tables
        }


def snapshot(reg: Registry) -> dict[str, Any]:
    """Row counts plus every adapter's status and every active publication."""
    return {
        "counts": table_counts(reg),
        "adapters": [(a.name, a.version, a.status, len(a.approvals), tuple(a.targets)) for a in reg.list_adapters()],
    }
