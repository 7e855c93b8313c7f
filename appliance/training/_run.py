"""The training facade: one run in named phases, each callable on its own (tests drive them one by one).

``prepare`` (policy, dataset, base, units, noise, ledger check) -> ``build`` (model, LoRA, optimizer, Opacus) ->
``restore`` (checkpoint on --resume) -> ``fit`` (DP-SGD steps, each charged to the ledger before it is taken,
checkpoints) -> ``evaluate`` (eval loss, canary exposure) -> ``write`` (adapter, metadata, curves, renamed into
place) -> ``close``. :func:`train` runs them all. Each phase hands the next a typed result (``_phases.py``):
``prepared``, ``built``, ``progress``, ``evaluated``, ``written``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from appliance.config import Settings
from appliance.contracts import run_metadata_json
from appliance.errors import (
    ApplianceError,
    BudgetExhausted,
    KeyUnavailable,
    StorageUnavailable,
    TrainingFailed,
    ValidationFailed,
)
from appliance.protocols import AuditLog, KeyService
from appliance.training._accounting import composed_epsilon
from appliance.training._build import build as build_run
from appliance.training._build import dp_loader
from appliance.training._checkpoint import save_checkpoint
from appliance.training._config import TrainConfig
from appliance.training._data import read_prepared
from appliance.training._evaluate import evaluate as evaluate_run
from appliance.training._fit import backward, checkpoint_state, fit_dp, fit_plain, restore_state
from appliance.training._hooks import TrainingAudit, open_audit, open_keys
from appliance.training._ledger import Ledger
from appliance.training._memory import MemoryEstimate, size_run
from appliance.training._metadata import now, run_metadata
from appliance.training._output import (
    check_adapter,
    check_out_dir,
    commit_dir,
    partial_dir,
    weights_changed,
    write_json,
)
from appliance.training._phases import Built, Evaluated, Prepared, Progress, Resume, Written, require
from appliance.training._planner import TrainingPlan, plan_training, sample_rate_for
from appliance.training._plots import write_curves
from appliance.training._policy import PrivacyPolicy, load_privacy_policy
from appliance.training._prepare import find_resume, load_tokenizer, make_run_canaries, run_units
from appliance.training._quantization import require_quantization

__all__ = ["StepInfo", "TrainResult", "TrainingRun", "train"]

log = structlog.get_logger("appliance.training")


@dataclass(frozen=True)
class StepInfo:
    """Progress after one optimizer step (what the progress bar shows)."""

    step: int
    total: int
    loss: float
    epsilon: float | None


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced (``metadata``: metadata.json as written)."""

    out: Path
    run_id: str
    metadata: dict[str, Any]


class TrainingRun:
    """One training run. Construct, then call :meth:`run` (or the phases in order)."""

    def __init__(
        self,
        config: TrainConfig,
        settings: Settings,
        *,
        keys: KeyService | None = None,
        audit: AuditLog | None = None,
        policy: PrivacyPolicy | None = None,
        on_step: Callable[[StepInfo], None] | None = None,
        on_checkpoint: Callable[[int], None] | None = None,
        use_stage_factories: bool = True,
    ) -> None:
        self.settings = settings
        self.config = config
        self.out = config.out.resolve()
        self._policy = policy
        self._keys = keys if keys is not None or not use_stage_factories else open_keys(settings)
        self._audit = TrainingAudit(
            audit if audit is not None or not use_stage_factories else open_audit(settings), config.trained_by
        )
        self._on_step = on_step
        self._on_checkpoint = on_checkpoint
        self.run_id = ""
        self.plan: TrainingPlan | None = None  # the DP plan (None for --no-dp and --resume)
        self.memory: MemoryEstimate | None = None  # peak-memory estimate (--plan-only, --gpu-memory)
        self.resume: Resume | None = None  # the interrupted run --resume continues
        self._prepared: Prepared | None = None
        self._built: Built | None = None
        self.progress = Progress()
        self._evaluated: Evaluated | None = None
        self._written: Written | None = None

    # --- the phases' results (TrainingFailed names a phase that has not run) ------------------------------------
    @property
    def prepared(self) -> Prepared:
        return require(self._prepared, "prepare")

    @property
    def built(self) -> Built:
        return require(self._built, "build")

    @property
    def evaluated(self) -> Evaluated:
        return require(self._evaluated, "evaluate")

    @functools.cached_property
    def ledger(self) -> Ledger:
        """The privacy-budget ledger (opened, and created, on first use: ``plan_only`` never writes it)."""
        return Ledger(self.settings.ledger_path)

    @property
    def run_dir(self) -> Path:
        return self.settings.runs_dir / self.run_id

    def _load_policy(self) -> PrivacyPolicy:
        return self._policy or load_privacy_policy(self.settings.policies_dir / "privacy.yaml")

    # --- phase 1 ------------------------------------------------------------------------------------------------
    def prepare(self) -> Prepared:
        """Validate everything and charge nothing until the ledger has accepted the run."""
        policy = self._load_policy()
        if self.config.no_dp and not policy.allow_no_dp:
            raise ValidationFailed("--no-dp is disabled by policies/privacy.yaml (allow_no_dp: false)")
        if self.config.resume:
            self.run_id, self.config, self.resume = find_resume(
                self.ledger, self.out, self.settings.runs_dir, self.config, self._keys
            )
        else:
            check_out_dir(self.out)
            self.run_id = uuid.uuid4().hex[:16]
        cfg = self.config
        require_quantization(cfg.quantize)  # no CUDA or no bitsandbytes: refused before anything is charged
        prepared = self._resolve(policy, ledger_exists=True)
        cfg, dataset = self.config, prepared.dataset
        details: dict[str, str | int | float | bool | None] = {
            "run_id": self.run_id,
            "dataset_fingerprint": dataset.fingerprint,
            "base_sha256": prepared.base_hash,
            "dp": cfg.dp,
            "privacy_unit": cfg.privacy_unit,
            "epsilon": cfg.epsilon,
            "steps": cfg.steps,
            "resume": cfg.resume,
        }
        if self.resume is not None:
            remaining = cfg.steps - self.resume.step
            self.ledger.reserve_resume(self.run_id, lambda fps: policy.budget_for(dataset.fingerprint, fps), remaining)
        else:
            try:
                self.ledger.begin(
                    run_id=self.run_id,
                    fingerprint=dataset.fingerprint,
                    out_path=str(self.out),
                    budget=lambda fps: policy.budget_for(dataset.fingerprint, fps),  # re-read in the transaction
                    dp=cfg.dp,
                    privacy_unit=cfg.privacy_unit,
                    target_epsilon=cfg.epsilon,
                    noise_multiplier=prepared.noise_multiplier,
                    sample_rate=prepared.sample_rate,
                    steps=cfg.steps,
                    trained_by=cfg.trained_by,
                    delta=prepared.delta,  # metadata pairs the ledger's epsilon with this delta
                    source_sha256=dataset.source_sha256,  # re-preparing the same input does not reset the budget
                )
            except BudgetExhausted as exc:
                self._audit.record("training.refused", status="denied", details=details, error=exc.code)
                raise
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(cfg.model_dump_json(indent=2), encoding="utf-8")
        if cfg.no_dp:
            log.warning("training.no_dp", run_id=self.run_id, effect="the adapter carries no privacy guarantee")
        self._audit.record("training.start", status="success", details=details)
        return prepared

    def plan_only(self) -> TrainingPlan:
        """The DP plan this run would follow, with nothing charged, audited or written (``--plan-only``)."""
        policy = self._load_policy()
        if self.config.resume or not self.config.dp:
            raise ValidationFailed("--plan-only plans a new DP run: it cannot be combined with --resume or --no-dp")
        self._resolve(policy, ledger_exists=self.settings.ledger_path.is_file())
        if self.memory is None:
            self._size_memory(choose_batch=False)
        return require(self.plan, "plan")

    def _resolve(self, policy: PrivacyPolicy, *, ledger_exists: bool) -> Prepared:
        """Dataset, budget, delta, base tokenizer, canaries, units and the DP plan; nothing is charged."""
        cfg, resume = self.config, self.resume
        started_at = now()
        choose_batch = cfg.sized_physical_batch()  # before the plan makes every option explicit
        dataset = read_prepared(cfg.dataset)
        if resume is not None and dataset.fingerprint != resume.fingerprint:
            raise ValidationFailed("the dataset changed since the interrupted run (fingerprint differs)")
        # runs on every preparation of the source share one spend, and so its strictest override
        preparations = (
            self.ledger.preparations(dataset.fingerprint, dataset.source_sha256)
            if ledger_exists
            else {dataset.fingerprint}
        )
        budget = policy.budget_for(dataset.fingerprint, preparations)
        delta = cfg.delta if cfg.delta is not None else budget.delta
        if resume is not None and resume.delta is not None:  # the delta its noise was calibrated and charged at
            delta = resume.delta
        if cfg.dp and delta > budget.delta:
            raise ValidationFailed(f"delta {delta:g} is above the policy's {budget.delta:g} for this dataset")
        tokenizer, base_hash = load_tokenizer(cfg.base)
        canaries, audit_canaries = make_run_canaries(cfg, resume)
        units = run_units(cfg, tokenizer, dataset, canaries, audit_canaries)
        n_units = len(units)
        if cfg.dp and delta >= 1.0 / n_units:
            raise ValidationFailed(f"delta {delta:g} must be below 1/{n_units} (the number of units)")
        noise = resume.noise_multiplier if resume is not None else None  # a resumed run keeps the ledger's noise
        if cfg.dp and resume is None:
            if cfg.epsilon is None:
                raise ValidationFailed("a DP run needs --epsilon")
            self.plan = plan_training(
                units=n_units,
                epsilon=cfg.epsilon,
                delta=delta,
                max_grad_norm=cfg.max_grad_norm,
                **cfg.given_plan_options(),
            )
            self.config = cfg = cfg.with_plan(self.plan)
            log.info("training.plan", **self.plan.as_dict())
            noise = self.plan.noise_multiplier
        if cfg.batch_size > n_units:
            raise ValidationFailed(f"batch size {cfg.batch_size} is larger than the {n_units} privacy units")
        sample_rate = sample_rate_for(n_units, cfg.batch_size)
        rate = resume.sample_rate if resume is not None else None
        if rate is not None and not math.isclose(rate, sample_rate, rel_tol=1e-12):
            raise ValidationFailed("the interrupted run's sample rate cannot be reproduced; start a new run")
        if cfg.gpu_memory_gb is not None and resume is None:  # a resumed run keeps its stored physical batch
            self._size_memory(choose_batch=choose_batch)
        self._prepared = Prepared(
            dataset, delta, units, sample_rate, noise, canaries, audit_canaries, base_hash, tokenizer, started_at
        )
        return self._prepared

    def _size_memory(self, *, choose_batch: bool) -> None:
        """The peak-memory estimate; with ``--gpu-memory`` and no physical batch given, the largest that fits."""
        self.memory = size_run(self.config, choose_batch=choose_batch)
        if self.memory.physical_batch != self.config.physical_batch_size:
            self.config = self.config.model_copy(update={"physical_batch_size": self.memory.physical_batch})
        log.info("training.memory", physical_batch=self.memory.physical_batch, estimate_bytes=self.memory.total)

    # --- phase 2 ------------------------------------------------------------------------------------------------
    def build(self) -> Built:
        """Load the base, add LoRA, make the optimizer; with DP, attach Opacus (hooks, Poisson sampling)."""
        self._built = build_run(
            self.config, self.settings, self.prepared, dp_module=self._dp_module, dp_loader=self._dp_loader
        )
        return self._built

    def _dp_module(self, model: Any) -> Any:
        """The module handed to ``make_private`` (one process: the peft model itself)."""
        return model

    def _dp_loader(self, loader: Any) -> Any:
        """The Poisson loader the steps draw from (``_build.dp_loader``: our collate for every draw)."""
        return dp_loader(loader, int(self.prepared.tokenizer.pad_token_id))

    # --- phase 3 ------------------------------------------------------------------------------------------------
    def restore(self) -> Progress:
        """On --resume, load the last checkpoint: weights, optimizer, accountant, RNG, curves (canaries: prepare)."""
        if self.resume is not None and self.resume.state is not None:
            self.progress = restore_state(self.built, self.resume.state)
            log.info("training.resumed", run_id=self.run_id, step=self.progress.step)
        return self.progress

    def _checkpoint(self) -> None:
        prepared = self.prepared
        state = checkpoint_state(self.built, self.progress, prepared.canaries, prepared.audit_canaries)
        save_checkpoint(self.run_dir, run_id=self.run_id, step=self.progress.step, state=state, keys=self._keys)
        log.info("training.checkpoint", run_id=self.run_id, step=self.progress.step)
        if self._on_checkpoint is not None:
            self._on_checkpoint(self.progress.step)

    # --- phase 4 ------------------------------------------------------------------------------------------------
    def fit(self) -> Progress:
        """Take the remaining steps; each step is charged to the ledger before it runs."""
        fit_steps = fit_dp if self.config.dp else fit_plain
        fit_steps(self.config, self.built, self.progress, charge=self._charge_step, after_step=self._after_step)
        return self.progress

    def _charge_step(self) -> None:
        """Charge the coming step to the ledger, durably, before it runs."""
        self.ledger.charge_step(self.run_id)

    def _epsilon(self) -> float | None:
        """Epsilon of the steps taken so far (the same RDP computation the ledger makes, cached per step)."""
        prepared = self.prepared
        if not self.config.dp or prepared.noise_multiplier is None:
            return None
        return composed_epsilon([(prepared.noise_multiplier, prepared.sample_rate, self.progress.step)], prepared.delta)

    def _after_step(self, loss: float) -> None:
        progress = self.progress
        progress.step += 1
        progress.losses.append(loss)
        eps = self._epsilon()
        progress.epsilons.append(eps)
        if self._on_step is not None:
            self._on_step(StepInfo(progress.step, self.config.steps, loss, eps))
        if progress.step % self.config.checkpoint_every == 0 and progress.step < self.config.steps:
            self._checkpoint()

    def _backward(self, losses: Any, optimizer: Any) -> None:
        """Per-unit gradients for the DP optimizer: Opacus hooks, or ghost clipping's two backward passes."""
        backward(losses, optimizer, self.built.ghost_hooks)

    # --- phase 5 ------------------------------------------------------------------------------------------------
    def evaluate(self) -> Evaluated:
        """Eval loss and perplexity, base vs adapter, canary exposures, the one-run privacy audit."""
        self._evaluated = evaluate_run(self.config, self.prepared, self.built, self.progress, self.run_id)
        return self._evaluated

    # --- phase 6 ------------------------------------------------------------------------------------------------
    def write(self) -> TrainResult:
        """Write adapter, metadata and curves into a hidden directory, check them, rename into place."""
        from appliance.training._fs import storage_errors

        cfg, model = self.config, self.built.model
        unchanged = weights_changed(self.built.initial, dict(model.named_parameters()))
        if unchanged:
            raise TrainingFailed(
                f"{len(unchanged)} LoRA tensors never changed during training (e.g. {unchanged[0]}); "
                "the adapter would be the base model (Opacus #820)"
            )
        entry = self.ledger.get(self.run_id)
        tmp = partial_dir(self.out, self.run_id)
        try:
            with storage_errors(str(tmp)):
                model.save_pretrained(str(tmp), safe_serialization=True)
            check_adapter(tmp, {n: p for n, p in model.named_parameters() if p.requires_grad})
            with storage_errors(str(tmp)):
                self._written = Written(
                    weights_sha256=hashlib.sha256((tmp / "adapter_model.safetensors").read_bytes()).hexdigest(),
                    config_sha256=hashlib.sha256((tmp / "adapter_config.json").read_bytes()).hexdigest(),
                )
            sealed = self._seal_canaries(tmp)
            metadata = run_metadata_json(
                run_metadata(
                    cfg,
                    self.run_id,
                    self.prepared,
                    self.progress,
                    self.evaluated,
                    epsilon=entry.epsilon if cfg.dp else None,
                    target_modules=list(model.peft_config["default"].target_modules),
                    canaries_sealed=sealed,
                )
            )
            write_json(tmp / "metadata.json", metadata)
            with storage_errors(str(tmp)):
                write_curves(tmp, self.progress.losses, self.progress.epsilons)
            commit_dir(tmp, self.out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return TrainResult(self.out, self.run_id, metadata)

    def _seal_canaries(self, directory: Path) -> bool:
        """The canaries' secrets and prompts for the registry (and so the production probe), sealed under a
        ``canaries`` data key (appliance.canaries); without a key service they are dropped, never written in clear.
        Returns whether ``canaries.sealed`` was written."""
        canaries = self.prepared.canaries
        if not canaries or self._keys is None:
            if canaries:
                log.warning("training.canaries_not_sealed", effect="no key service: production probes impossible")
            return False
        from appliance._fs import atomic_write
        from appliance.canaries import SEALED_FILE, ProbeCanary, render_document, seal_document
        from appliance.training._data import prompt_text
        from appliance.training._fs import storage_errors

        tokenizer = self.prepared.tokenizer
        probes = [ProbeCanary(c, prompt_text(tokenizer, c.instruction)) for c in canaries]
        plaintext = render_document(self.run_id, self.config.canary_candidates, probes)
        sealed = seal_document(self._keys, self.run_id, plaintext)
        with storage_errors(str(directory / SEALED_FILE)):
            atomic_write(directory / SEALED_FILE, sealed, mode=0o600)
        return True

    def _resumable(self, exc: BaseException) -> bool:
        """Whether a failure leaves the run open for ``--resume`` (else it closes as failed)."""
        return isinstance(exc, (KeyboardInterrupt, StorageUnavailable, KeyUnavailable))

    # --- everything ---------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """All phases in order; on failure the ledger and the audit trail say so and no output is left."""
        self.prepare()
        try:
            self.build()
            self.restore()
            self.fit()
            self.evaluate()
            result = self.write()
        except BaseException as exc:
            self._fail(exc)
            raise  # _fail raises for every failure; this keeps the type checker informed
        return self._finish(result)

    def _fail(self, exc: BaseException) -> None:
        """A failed run: open for --resume when resumable, else closed as failed with its run directory gone."""
        if self._resumable(exc):  # the run stays open in the ledger with everything it charged
            code = exc.code if isinstance(exc, ApplianceError) else "INTERRUPTED"
            self._audit.record(
                "training.finish", status="error", details={"run_id": self.run_id, "resumable": True}, error=code
            )
            raise exc
        reason = exc.code if isinstance(exc, ApplianceError) else type(exc).__name__
        try:
            self.ledger.close(self.run_id, status="failed", reason=reason)
        finally:  # not resumable (or already abandoned); its checkpoint holds canary secrets
            shutil.rmtree(self.run_dir, ignore_errors=True)
        self._audit.record(
            "training.finish", status="error", details={"run_id": self.run_id, "resumable": False}, error=reason
        )
        if isinstance(exc, ApplianceError):
            raise exc
        raise TrainingFailed(f"training run {self.run_id} failed: {type(exc).__name__}: {exc}") from exc

    def _finish(self, result: TrainResult) -> TrainResult:
        """Close the finished run in the ledger (with what the registry checks), audit it, drop its run dir."""
        canaries, audit = result.metadata["canaries"], result.metadata.get("privacy_audit")
        written = require(self._written, "write")
        entry = self.ledger.close(
            self.run_id,
            status="finished",
            max_exposure=canaries["max_exposure"] if canaries["exposures"] else None,  # what the registry checks
            weights_sha256=written.weights_sha256,
            config_sha256=written.config_sha256,
            evaluation=json.dumps(result.metadata["evaluation"], sort_keys=True),
            privacy_audit=None if audit is None else json.dumps(audit, sort_keys=True),
        )
        evaluation = result.metadata["evaluation"] or {}
        self._audit.record(
            "training.finish",
            status="success",
            details={
                "run_id": self.run_id,
                "steps": self.progress.step,
                "steps_charged": entry.steps_taken,
                "epsilon": entry.epsilon,
                "eval_loss": round(self.evaluated.metrics["eval_loss"], 4),
                "eval_loss_delta": evaluation.get("delta", {}).get("loss"),
                "exact_match_delta": evaluation.get("delta", {}).get("exact_match"),
                "epsilon_lower_bound": (audit or {}).get("epsilon_lower_bound"),
            },
        )
        shutil.rmtree(self.run_dir, ignore_errors=True)  # checkpoints hold canary secrets; the adapter is final
        return result


def train(
    config: TrainConfig,
    settings: Settings,
    *,
    on_step: Callable[[StepInfo], None] | None = None,
    **kwargs: Any,
) -> TrainResult:
    """Run one training job end to end (see :class:`TrainingRun` for the phases)."""
    return TrainingRun(config, settings, on_step=on_step, **kwargs).run()


def read_metadata(out: Path) -> dict[str, Any]:
    """The metadata.json of a finished adapter directory."""
    return dict(json.loads((out / "metadata.json").read_text(encoding="utf-8")))
