"""Phase 1 helpers: the base's tokenizer and hash, the privacy units, and an interrupted run to resume.

Nothing here charges the ledger or writes anything; ``TrainingRun.prepare`` does, once every check has passed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.errors import NotFound, ValidationFailed
from appliance.protocols import KeyService
from appliance.training._audit import AuditCanary, make_audit_canaries
from appliance.training._canaries import Canary, make_canaries
from appliance.training._checkpoint import CHECKPOINT_NAME, load_checkpoint
from appliance.training._config import TrainConfig
from appliance.training._data import PreparedDataset, Record, Unit, build_units
from appliance.training._fit import canaries_of
from appliance.training._ledger import Ledger
from appliance.training._phases import Resume

__all__ = ["find_resume", "load_tokenizer", "make_run_canaries", "run_units"]


def load_tokenizer(base: Path) -> tuple[Any, str]:
    """The base model's tokenizer (pad = eos when it has none) and the base's content hash."""
    from transformers import AutoTokenizer

    from appliance.models import model_hash

    if not base.is_dir() or not (base / "config.json").is_file():
        raise NotFound(f"unknown base model: {base} is not a Hugging Face model directory (no config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValidationFailed(f"base model {base} has no usable tokenizer: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, model_hash(base)


def run_units(
    cfg: TrainConfig,
    tokenizer: Any,
    dataset: PreparedDataset,
    canaries: list[Canary],
    audit_canaries: list[AuditCanary],
) -> list[Unit]:
    """The privacy units the run samples: the train split, the canaries' records, the included audit canaries."""
    records: list[Record] = list(dataset.train)
    for canary in canaries:
        records.extend(canary.records())
    records.extend(c.record() for c in audit_canaries if c.included)
    return build_units(
        tokenizer,
        records,
        max_length=cfg.max_length,
        privacy_unit=cfg.privacy_unit,
        max_records_per_subject=cfg.max_records_per_subject,
        seed=cfg.seed,
    )


def make_run_canaries(cfg: TrainConfig, resume: Resume | None) -> tuple[list[Canary], list[AuditCanary]]:
    """The run's canaries: a checkpoint's (a resume audits and measures the same ones), else new ones."""
    if resume is not None and resume.state is not None:
        return canaries_of(resume.state)
    return make_canaries(cfg.canaries, cfg.canary_repetitions), make_audit_canaries(cfg.audit_canaries)


def find_resume(
    ledger: Ledger, out: Path, runs_dir: Path, given: TrainConfig, keys: KeyService | None
) -> tuple[str, TrainConfig, Resume]:
    """The interrupted run writing to ``out``: its id, stored options (authoritative; only the resume flag and
    the device may differ) and what the ledger and its checkpoint keep."""
    entry = ledger.open_run_for(str(out))
    if entry is None:
        raise NotFound(f"no interrupted run writes to {out}; start a new run without --resume")
    run_dir = runs_dir / entry.run_id
    stored_path = run_dir / "config.json"
    if not stored_path.is_file():
        raise NotFound(f"run {entry.run_id} has no stored configuration in {run_dir}")
    stored = TrainConfig.model_validate_json(stored_path.read_text(encoding="utf-8"))
    if given.dataset.resolve() != stored.dataset.resolve() or given.base.resolve() != stored.base.resolve():
        raise ValidationFailed("--resume must use the dataset and base model of the interrupted run")
    config = stored.model_copy(update={"resume": True, "device": given.device})
    step, state = 0, None
    if (run_dir / CHECKPOINT_NAME).is_file():  # else interrupted before its first checkpoint: start over
        step, state = load_checkpoint(run_dir, run_id=entry.run_id, keys=keys)
    resume = Resume(entry.fingerprint, entry.noise_multiplier, entry.sample_rate, entry.delta, step, state)
    return entry.run_id, config, resume
