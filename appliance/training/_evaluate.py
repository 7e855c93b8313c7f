"""Phase 5: the trained adapter measured on the eval split, its canaries' exposure and the one-run privacy audit.

Eval loss is the mean over eval records of each record's mean response-token loss; ``evaluate_pair`` (the same
evaluation as ``appliance eval``) compares base (adapter disabled) and adapter. Only counts, losses and bounds
leave this phase: never a canary secret, a score or record text.
"""

from __future__ import annotations

import math
from typing import Any

import structlog

from appliance.training._canaries import measure_exposures
from appliance.training._config import TrainConfig
from appliance.training._data import Record, UnitDataset, build_units, collate
from appliance.training._loss import unit_losses
from appliance.training._phases import Built, Evaluated, Prepared, Progress

__all__ = ["evaluate"]

log = structlog.get_logger("appliance.training")


def _eval_loss(cfg: TrainConfig, built: Built, tokenizer: Any, records: list[Record]) -> float:
    import torch

    units = build_units(
        tokenizer,
        records,
        max_length=cfg.max_length,
        privacy_unit="record",
        max_records_per_subject=1,
        seed=cfg.seed,
    )
    batcher = collate(int(tokenizer.pad_token_id))
    dataset = UnitDataset(units)
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(dataset), cfg.physical_batch_size):
            batch = [dataset[i] for i in range(start, min(len(dataset), start + cfg.physical_batch_size))]
            ids, mask, weights = (t.to(built.device) for t in batcher(batch))
            total += float(unit_losses(built.model(input_ids=ids, attention_mask=mask).logits, ids, weights).sum())
    return total / len(dataset)


def evaluate(cfg: TrainConfig, prepared: Prepared, built: Built, progress: Progress, run_id: str) -> Evaluated:
    """Eval loss and perplexity on the eval split, base vs adapter, canary exposures, the privacy audit."""
    from appliance.evaluation import EvalOptions, evaluate_pair
    from appliance.training._audit import run_audit

    model, tokenizer = built.model, prepared.tokenizer
    model.eval()
    records = prepared.dataset.eval[: cfg.eval_max_records]
    eval_loss = _eval_loss(cfg, built, tokenizer, records)
    tail = progress.losses[-max(1, min(10, len(progress.losses))) :] or [float("nan")]
    metrics = {
        "eval_loss": eval_loss,
        "perplexity": math.exp(min(eval_loss, 50.0)),
        "train_loss": sum(tail) / len(tail),
    }
    options = EvalOptions(max_length=cfg.max_length, batch_size=cfg.physical_batch_size)
    evaluation = {"split": "eval", **evaluate_pair(model, tokenizer, records, options, built.device)}
    exposures: list[float] = []
    if prepared.canaries:
        exposures = measure_exposures(
            model, tokenizer, prepared.canaries, candidates=cfg.canary_candidates, device=built.device
        )
    privacy_audit: dict[str, Any] | None = None
    if prepared.audit_canaries:  # Steinke et al. 2023: counts and the bound only; which canary was in stays secret
        bound = run_audit(
            model,
            tokenizer,
            prepared.audit_canaries,
            delta=prepared.delta,
            max_length=cfg.max_length,
            batch_size=cfg.physical_batch_size,
            device=built.device,
        )
        privacy_audit = bound.as_dict()
        log.info("training.privacy_audit", run_id=run_id, **privacy_audit)
    return Evaluated(metrics, evaluation, exposures, privacy_audit)
