"""The training facade: one run in named phases, each callable on its own (tests drive them one by one).

``prepare`` (policy, dataset, base, units, noise, ledger check) -> ``build`` (model, LoRA, optimizer, Opacus) ->
``restore`` (checkpoint on --resume) -> ``fit`` (DP-SGD steps, each charged to the ledger before it is taken,
checkpoints) -> ``evaluate`` (eval loss, canary exposure) -> ``write`` (adapter, metadata, curves, renamed into
place) -> ``close``. :func:`train` runs them all.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import math
import random
import secrets
import shutil
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from appliance.config import Settings
from appliance.contracts import (
    METADATA_FORMAT_VERSION,
    BaseModelRef,
    CanaryReport,
    DatasetRef,
    DPParameters,
    PrivacyAuditReport,
    QuantizationInfo,
    RunMetadata,
    run_metadata_json,
)
from appliance.errors import (
    ApplianceError,
    BudgetExhausted,
    KeyUnavailable,
    NotFound,
    StorageUnavailable,
    TrainingFailed,
    ValidationFailed,
)
from appliance.protocols import AuditLog, KeyService
from appliance.training._accounting import composed_epsilon
from appliance.training._audit import AuditCanary, make_audit_canaries, run_audit
from appliance.training._canaries import Canary, make_canaries, measure_exposures
from appliance.training._checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from appliance.training._config import TrainConfig
from appliance.training._data import PreparedDataset, Record, Unit, UnitDataset, build_units, collate, read_prepared
from appliance.training._hooks import TrainingAudit, open_audit, open_keys
from appliance.training._ledger import Ledger
from appliance.training._loss import unit_losses
from appliance.training._memory import MemoryEstimate, size_run
from appliance.training._output import (
    check_adapter,
    check_out_dir,
    commit_dir,
    partial_dir,
    weights_changed,
    write_json,
)
from appliance.training._planner import TrainingPlan, plan_training, sample_rate_for
from appliance.training._plots import write_curves
from appliance.training._policy import DatasetBudget, PrivacyPolicy, load_privacy_policy
from appliance.training._quantization import load_base_model, quantization_metadata, require_quantization

__all__ = ["StepInfo", "TrainResult", "TrainingRun", "train"]

log = structlog.get_logger("appliance.training")

NOISE_SEEDING = "os-csprng-per-step"  # metadata.dp.noise_seeding: see TrainingRun._reseed_noise
SAMPLING_SEEDING = "os-csprng"  # metadata.dp.sampling_seeding: the Poisson sampler's generator


@dataclass(frozen=True)
class StepInfo:
    """Progress after one optimizer step (what the progress bar shows)."""

    step: int
    total: int
    loss: float
    epsilon: float | None


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced."""

    out: Path
    run_id: str
    metadata: dict[str, Any]


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class _State:
    """What the phases hand each other."""

    dataset: PreparedDataset | None = None
    budget: DatasetBudget | None = None
    delta: float | None = None
    units: list[Unit] = field(default_factory=list)
    sample_rate: float | None = None
    noise_multiplier: float | None = None
    canaries: list[Canary] = field(default_factory=list)
    base_hash: str = ""
    started_at: str = ""
    step: int = 0
    losses: list[float] = field(default_factory=list)
    epsilons: list[float | None] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    exposures: list[float] = field(default_factory=list)
    weights_sha256: str | None = None  # of the adapter_model.safetensors written
    config_sha256: str | None = None  # of the adapter_config.json written
    evaluation: dict[str, Any] | None = None  # base vs adapter on the eval split (appliance.evaluation)
    audit_canaries: list[AuditCanary] = field(default_factory=list)  # --audit-canaries (secret: which are in)
    privacy_audit: dict[str, Any] | None = None  # the one-run audit's counts and bound (no canary, no score)
    ledger_open: bool = False


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
        self.s = _State()
        self.plan: TrainingPlan | None = None  # the DP plan (None for --no-dp and --resume)
        self.memory: MemoryEstimate | None = None  # peak-memory estimate (--plan-only, --gpu-memory)
        self._noise_generator: Any = None  # reseeded from the OS CSPRNG before every optimizer step
        self._model: Any = None
        self._tokenizer: Any = None
        self._optimizer: Any = None
        self._loader: Any = None
        self._engine: Any = None
        self._device: Any = None
        self._ghost_hooks: Any = None  # ghost clipping's hooks (per-sample norms, then a second, clipped backward)
        self._initial: dict[str, Any] = {}
        self._resume_state: dict[str, Any] | None = None
        self._resume_step = 0
        self._resume_rate: float | None = None
        self._resume_delta: float | None = None

    @functools.cached_property
    def ledger(self) -> Ledger:
        """The privacy-budget ledger (opened, and created, on first use: ``plan_only`` never writes it)."""
        return Ledger(self.settings.ledger_path)

    @property
    def run_dir(self) -> Path:
        return self.settings.runs_dir / self.run_id

    # --- phase 1 ------------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Validate everything and charge nothing until the ledger has accepted the run."""
        cfg = self.config
        policy = self._policy or load_privacy_policy(self.settings.policies_dir / "privacy.yaml")
        if cfg.no_dp and not policy.allow_no_dp:
            raise ValidationFailed("--no-dp is disabled by policies/privacy.yaml (allow_no_dp: false)")
        self.s.started_at = _now()
        resume_from: str | None = None
        if cfg.resume:
            resume_from = self._prepare_resume()
            cfg = self.config
        else:
            check_out_dir(self.out)
            self.run_id = uuid.uuid4().hex[:16]
        require_quantization(cfg.quantize)  # no CUDA or no bitsandbytes: refused before anything is charged
        self._resolve(policy, resume_from, ledger_exists=True)
        cfg, dataset = self.config, self.s.dataset
        assert dataset is not None
        details: dict[str, str | int | float | bool | None] = {
            "run_id": self.run_id,
            "dataset_fingerprint": dataset.fingerprint,
            "base_sha256": self.s.base_hash,
            "dp": cfg.dp,
            "privacy_unit": cfg.privacy_unit,
            "epsilon": cfg.epsilon,
            "steps": cfg.steps,
            "resume": cfg.resume,
        }
        if cfg.resume:
            remaining = cfg.steps - self._resume_step
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
                    noise_multiplier=self.s.noise_multiplier,
                    sample_rate=self.s.sample_rate,
                    steps=cfg.steps,
                    trained_by=cfg.trained_by,
                    delta=self.s.delta,  # metadata pairs the ledger's epsilon with this delta
                    source_sha256=dataset.source_sha256,  # re-preparing the same input does not reset the budget
                )
            except BudgetExhausted as exc:
                self._audit.record("training.refused", status="denied", details=details, error=exc.code)
                raise
        self.s.ledger_open = True
        if not cfg.resume:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(cfg.model_dump_json(indent=2), encoding="utf-8")
        if cfg.no_dp:
            log.warning("training.no_dp", run_id=self.run_id, effect="the adapter carries no privacy guarantee")
        self._audit.record("training.start", status="success", details=details)

    def plan_only(self) -> TrainingPlan:
        """The DP plan this run would follow, with nothing charged, audited or written (``--plan-only``)."""
        policy = self._policy or load_privacy_policy(self.settings.policies_dir / "privacy.yaml")
        if self.config.resume or not self.config.dp:
            raise ValidationFailed("--plan-only plans a new DP run: it cannot be combined with --resume or --no-dp")
        self._resolve(policy, None, ledger_exists=self.settings.ledger_path.is_file())
        assert self.plan is not None
        if self.memory is None:
            self._size_memory(choose_batch=False)
        return self.plan

    def _resolve(self, policy: PrivacyPolicy, resume_from: str | None, *, ledger_exists: bool) -> None:
        """Dataset, budget, delta, base tokenizer, canaries, units and the DP plan; nothing is charged."""
        cfg = self.config
        choose_batch = cfg.sized_physical_batch()  # before the plan makes every option explicit
        dataset = read_prepared(cfg.dataset)
        if resume_from is not None and dataset.fingerprint != resume_from:
            raise ValidationFailed("the dataset changed since the interrupted run (fingerprint differs)")
        self.s.dataset = dataset
        # runs on every preparation of the source share one spend, and so its strictest override
        preparations = (
            self.ledger.preparations(dataset.fingerprint, dataset.source_sha256)
            if ledger_exists
            else {dataset.fingerprint}
        )
        self.s.budget = budget = policy.budget_for(dataset.fingerprint, preparations)
        self.s.delta = cfg.delta if cfg.delta is not None else budget.delta
        if self._resume_delta is not None:  # the delta its noise was calibrated and its steps charged at
            self.s.delta = self._resume_delta
        if cfg.dp and self.s.delta > budget.delta:
            raise ValidationFailed(f"delta {self.s.delta:g} is above the policy's {budget.delta:g} for this dataset")
        self._load_base()
        if resume_from is None:
            self.s.canaries = make_canaries(cfg.canaries, cfg.canary_repetitions)
            self.s.audit_canaries = make_audit_canaries(cfg.audit_canaries)
        self._build_units()
        n_units = len(self.s.units)
        if cfg.dp and self.s.delta >= 1.0 / n_units:
            raise ValidationFailed(f"delta {self.s.delta:g} must be below 1/{n_units} (the number of units)")
        if cfg.dp and not cfg.resume:  # a resumed run keeps its stored options and the ledger's noise
            assert cfg.epsilon is not None
            self.plan = plan_training(
                units=n_units,
                epsilon=cfg.epsilon,
                delta=self.s.delta,
                max_grad_norm=cfg.max_grad_norm,
                **cfg.given_plan_options(),
            )
            self.config = cfg = cfg.with_plan(self.plan)
            log.info("training.plan", **self.plan.as_dict())
            self.s.noise_multiplier = self.plan.noise_multiplier
        if cfg.batch_size > n_units:
            raise ValidationFailed(f"batch size {cfg.batch_size} is larger than the {n_units} privacy units")
        self.s.sample_rate = sample_rate_for(n_units, cfg.batch_size)
        if self._resume_rate is not None and not math.isclose(self._resume_rate, self.s.sample_rate, rel_tol=1e-12):
            raise ValidationFailed("the interrupted run's sample rate cannot be reproduced; start a new run")
        if cfg.gpu_memory_gb is not None and not cfg.resume:  # a resumed run keeps its stored physical batch
            self._size_memory(choose_batch=choose_batch)

    def _size_memory(self, *, choose_batch: bool) -> None:
        """The peak-memory estimate; with ``--gpu-memory`` and no physical batch given, the largest that fits."""
        self.memory = size_run(self.config, choose_batch=choose_batch)
        if self.memory.physical_batch != self.config.physical_batch_size:
            self.config = self.config.model_copy(update={"physical_batch_size": self.memory.physical_batch})
        log.info("training.memory", physical_batch=self.memory.physical_batch, estimate_bytes=self.memory.total)

    def _prepare_resume(self) -> str:
        """Find the interrupted run writing to ``out``; load its options and checkpoint. Returns its fingerprint."""
        entry = self.ledger.open_run_for(str(self.out))
        if entry is None:
            raise NotFound(f"no interrupted run writes to {self.out}; start a new run without --resume")
        self.run_id = entry.run_id
        stored_path = self.run_dir / "config.json"
        if not stored_path.is_file():
            raise NotFound(f"run {self.run_id} has no stored configuration in {self.run_dir}")
        stored = TrainConfig.model_validate_json(stored_path.read_text(encoding="utf-8"))
        if (
            self.config.dataset.resolve() != stored.dataset.resolve()
            or self.config.base.resolve() != stored.base.resolve()
        ):
            raise ValidationFailed("--resume must use the dataset and base model of the interrupted run")
        # the stored options are authoritative; only the resume flag and the device may differ
        self.config = stored.model_copy(update={"resume": True, "device": self.config.device})
        self.s.noise_multiplier = entry.noise_multiplier
        self._resume_rate = entry.sample_rate
        self._resume_delta = entry.delta
        if (self.run_dir / CHECKPOINT_NAME).is_file():
            step, state = load_checkpoint(self.run_dir, run_id=self.run_id, keys=self._keys)
            self._resume_state = state
            self._resume_step = step
            self.s.canaries = [Canary(c["code"], c["secret"], int(c["repetitions"])) for c in state["canaries"]]
            self.s.audit_canaries = _audit_canaries_from(state)
        else:  # interrupted before its first checkpoint: start over under the same ledger entry
            self.s.canaries = make_canaries(stored.canaries, stored.canary_repetitions)
            self.s.audit_canaries = make_audit_canaries(stored.audit_canaries)
        return entry.fingerprint

    def _load_base(self) -> None:
        from transformers import AutoTokenizer

        from appliance.models import model_hash

        base = self.config.base
        if not base.is_dir() or not (base / "config.json").is_file():
            raise NotFound(f"unknown base model: {base} is not a Hugging Face model directory (no config.json)")
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ValidationFailed(f"base model {base} has no usable tokenizer: {exc}") from exc
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self.s.base_hash = model_hash(base)

    def _build_units(self) -> None:
        cfg = self.config
        assert self.s.dataset is not None
        records: list[Record] = list(self.s.dataset.train)
        for canary in self.s.canaries:
            records.extend(canary.records())
        records.extend(c.record() for c in self.s.audit_canaries if c.included)
        self.s.units = build_units(
            self._tokenizer,
            records,
            max_length=cfg.max_length,
            privacy_unit=cfg.privacy_unit,
            max_records_per_subject=cfg.max_records_per_subject,
            seed=cfg.seed,
        )

    # --- phase 2 ------------------------------------------------------------------------------------------------
    def build(self) -> None:
        """Load the base, add LoRA, make the optimizer; with DP, attach Opacus (hooks, Poisson sampling)."""
        import torch
        from peft import LoraConfig, get_peft_model
        from torch.utils.data import DataLoader

        cfg = self.config
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        if cfg.device == "auto":
            device_name = self.settings.training.device
            if device_name == "auto":
                device_name = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            device_name = cfg.device
        if device_name == "cuda" and not torch.cuda.is_available():
            raise ValidationFailed("device 'cuda' requested but no CUDA device is available")
        self._device = torch.device(device_name)
        try:  # on its device before peft and Opacus (Opacus #820)
            model: Any = load_base_model(cfg.base, cfg.quantize, self._device)
        except (OSError, ValueError) as exc:
            raise ValidationFailed(f"base model {cfg.base} cannot be loaded: {exc}") from exc
        model.config.use_cache = False
        targets: str | list[str] = "all-linear" if cfg.target_modules == ["all-linear"] else list(cfg.target_modules)
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=targets,
            bias="none",
            task_type="CAUSAL_LM",
        )
        try:
            model = get_peft_model(model, lora)
        except ValueError as exc:
            raise ValidationFailed(
                f"LoRA target modules {cfg.target_modules} do not fit the base model: {exc}"
            ) from exc
        model.base_model.model.name_or_path = str(cfg.base.resolve())
        self._model = model
        self._initial = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
        dataset = UnitDataset(self.s.units)
        pad = int(self._tokenizer.pad_token_id)
        # DP: Poisson sampling must be secret (the amplification by subsampling assumes it), so its generator is
        # seeded from the OS CSPRNG, not from the published --seed
        generator = torch.Generator().manual_seed(secrets.randbits(64) if cfg.dp else cfg.seed)
        loader: Any = DataLoader(
            dataset,  # type: ignore[arg-type]
            batch_size=cfg.batch_size,
            shuffle=not cfg.dp,
            collate_fn=collate(pad),
            generator=generator,
            drop_last=False,
        )
        if cfg.dp:
            from opacus import PrivacyEngine

            # "Secure RNG turned off": torchcsprng has no wheel; the noise generator is reseeded from the OS CSPRNG
            warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)
            engine = PrivacyEngine(accountant="rdp")
            assert self.s.noise_multiplier is not None
            self._noise_generator = torch.Generator(device=self._device)
            private = engine.make_private(
                module=self._dp_module(model),  # several processes: Opacus's DPDDP (see _distributed.py)
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=self.s.noise_multiplier,
                max_grad_norm=cfg.max_grad_norm,
                poisson_sampling=True,
                grad_sample_mode=cfg.grad_sample_mode,
                wrap_model=False,
                loss_reduction="mean",
                noise_generator=self._noise_generator,
                criterion=torch.nn.CrossEntropyLoss(),  # ghost mode wraps it; the loss is unit_losses all the same
            )
            if cfg.grad_sample_mode == "ghost":
                _, optimizer, criterion, loader = private
                self._ghost_hooks = criterion.module
            else:
                _, optimizer, loader = private
            actual_rate = loader.batch_sampler.sample_rate
            if not math.isclose(actual_rate, self.s.sample_rate or 0.0, rel_tol=1e-9):
                raise TrainingFailed(
                    f"Opacus sample rate {actual_rate} differs from the accounted {self.s.sample_rate}"
                )
            self._engine = engine
            loader = self._dp_loader(loader)
        self._optimizer = optimizer
        self._loader = loader

    def _dp_module(self, model: Any) -> Any:
        """The module handed to ``make_private`` (one process: the peft model itself)."""
        return model

    def _dp_loader(self, loader: Any) -> Any:
        """The Poisson loader the steps draw from: Opacus's sampler with our collate for every draw. Ours gives an
        empty draw the batch's three zero-row tensors; Opacus's wrapper gives an empty *first* draw the dataset's
        two (ids, weights), which no step can unpack."""
        from torch.utils.data import DataLoader

        return DataLoader(
            loader.dataset,
            batch_sampler=loader.batch_sampler,
            collate_fn=collate(int(self._tokenizer.pad_token_id)),
            generator=loader.generator,
        )

    # --- phase 3 ------------------------------------------------------------------------------------------------
    def restore(self) -> None:
        """On --resume, load the last checkpoint: weights, optimizer, accountant, RNG, curves, canaries."""
        import torch

        state = self._resume_state
        if state is None:
            return
        named = dict(self._model.named_parameters())
        with torch.no_grad():
            for name, value in state["lora"].items():
                named[name].copy_(value.to(self._device))
        self._optimizer.load_state_dict(state["optimizer"])
        if self._engine is not None:
            self._engine.accountant.history = [tuple(h) for h in state["accountant"]]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        self.s.step = int(state["step"])
        self.s.losses = list(state["losses"])
        self.s.epsilons = [None if e < 0 else e for e in state["epsilons"]]
        log.info("training.resumed", run_id=self.run_id, step=self.s.step)

    def _checkpoint(self) -> None:
        import torch

        state = {
            "step": self.s.step,
            "lora": {n: p.detach().cpu() for n, p in self._model.named_parameters() if p.requires_grad},
            "optimizer": self._optimizer.state_dict(),
            "accountant": [list(h) for h in self._engine.accountant.history] if self._engine is not None else [],
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
            "losses": list(self.s.losses),
            "epsilons": [-1.0 if e is None else e for e in self.s.epsilons],
            "canaries": [{"code": c.code, "secret": c.secret, "repetitions": c.repetitions} for c in self.s.canaries],
            "audit_canaries": [[c.code, c.secret, c.included] for c in self.s.audit_canaries],
        }
        save_checkpoint(self.run_dir, run_id=self.run_id, step=self.s.step, state=state, keys=self._keys)
        log.info("training.checkpoint", run_id=self.run_id, step=self.s.step)
        if self._on_checkpoint is not None:
            self._on_checkpoint(self.s.step)

    # --- phase 4 ------------------------------------------------------------------------------------------------
    def fit(self) -> None:
        """Take the remaining steps; each step is charged to the ledger before it runs."""
        if self.config.dp:
            self._fit_dp()
        else:
            self._fit_plain()

    def _charge_step(self) -> None:
        """Charge the coming step to the ledger, durably, before it runs."""
        self.ledger.charge_step(self.run_id)

    def _epsilon(self) -> float | None:
        """Epsilon of the steps taken so far (the same RDP computation the ledger makes, cached per step)."""
        if not self.config.dp or self.s.noise_multiplier is None or self.s.sample_rate is None:
            return None
        assert self.s.delta is not None
        return composed_epsilon([(self.s.noise_multiplier, self.s.sample_rate, self.s.step)], self.s.delta)

    def _after_step(self, loss: float) -> None:
        self.s.step += 1
        self.s.losses.append(loss)
        eps = self._epsilon()
        self.s.epsilons.append(eps)
        if self._on_step is not None:
            self._on_step(StepInfo(self.s.step, self.config.steps, loss, eps))
        if self.s.step % self.config.checkpoint_every == 0 and self.s.step < self.config.steps:
            self._checkpoint()

    def _fit_dp(self) -> None:
        import torch
        from opacus.utils.batch_memory_manager import BatchMemoryManager

        cfg = self.config
        model, optimizer = self._model, self._optimizer
        model.train()
        # the embeddings are frozen, so Opacus's full backward hooks see no input gradients: expected, not a fault
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        charge_due = True
        step_loss, step_rows = 0.0, 0
        while self.s.step < cfg.steps:
            with BatchMemoryManager(
                data_loader=self._loader, max_physical_batch_size=cfg.physical_batch_size, optimizer=optimizer
            ) as batches:
                for input_ids, mask, weights in batches:
                    if charge_due:
                        self._charge_step()
                        charge_due = False
                    rows = int(input_ids.shape[0])
                    if rows == 0:  # an empty Poisson batch still takes a noisy step
                        for p in optimizer.params:
                            if self._ghost_hooks is not None:
                                p.grad = torch.zeros_like(p)
                            else:
                                p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
                    else:
                        input_ids, mask, weights = (t.to(self._device) for t in (input_ids, mask, weights))
                        logits = model(input_ids=input_ids, attention_mask=mask).logits
                        losses = unit_losses(logits, input_ids, weights)
                        self._backward(losses, optimizer)
                        step_loss += float(losses.detach().sum())
                        step_rows += rows
                    self._reseed_noise()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    if not optimizer._is_last_step_skipped:
                        self._after_step(step_loss / max(1, step_rows))
                        step_loss, step_rows = 0.0, 0
                        charge_due = True
                        if self.s.step >= cfg.steps:
                            break

    def _backward(self, losses: Any, optimizer: Any) -> None:
        """Per-unit gradients for the DP optimizer: Opacus hooks, or ghost clipping's two backward passes."""
        if self._ghost_hooks is None:
            losses.mean().backward()
            return
        from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

        DPTensorFastGradientClipping(self._ghost_hooks, optimizer, losses, loss_reduction="mean").backward()

    def _reseed_noise(self) -> None:
        """A fresh 64-bit seed from the OS CSPRNG for the noise of the coming step (Opacus's secure_mode needs
        torchcsprng, which has no wheel): no noise can be predicted from the published --seed or an earlier step.
        """
        self._noise_generator.manual_seed(secrets.randbits(64))

    def _fit_plain(self) -> None:
        cfg = self.config
        model, optimizer = self._model, self._optimizer
        model.train()
        while self.s.step < cfg.steps:
            for input_ids, mask, weights in self._loader:
                self._charge_step()
                rows = int(input_ids.shape[0])
                total = 0.0
                for start in range(0, rows, cfg.physical_batch_size):
                    part = slice(start, start + cfg.physical_batch_size)
                    ids, m, w = (t[part].to(self._device) for t in (input_ids, mask, weights))
                    losses = unit_losses(model(input_ids=ids, attention_mask=m).logits, ids, w)
                    (losses.sum() / rows).backward()
                    total += float(losses.detach().sum())
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                self._after_step(total / rows)
                if self.s.step >= cfg.steps:
                    break

    # --- phase 5 ------------------------------------------------------------------------------------------------
    def evaluate(self) -> None:
        """Eval loss and perplexity on the eval split (per-record mean token loss); canary exposures."""
        import torch

        cfg = self.config
        assert self.s.dataset is not None
        model = self._model
        model.eval()
        records = self.s.dataset.eval[: cfg.eval_max_records]
        units = build_units(
            self._tokenizer,
            records,
            max_length=cfg.max_length,
            privacy_unit="record",
            max_records_per_subject=1,
            seed=cfg.seed,
        )
        pad = int(self._tokenizer.pad_token_id)
        batcher = collate(pad)
        dataset = UnitDataset(units)
        total = 0.0
        with torch.no_grad():
            for start in range(0, len(dataset), cfg.physical_batch_size):
                batch = [dataset[i] for i in range(start, min(len(dataset), start + cfg.physical_batch_size))]
                ids, mask, weights = (t.to(self._device) for t in batcher(batch))
                total += float(unit_losses(model(input_ids=ids, attention_mask=mask).logits, ids, weights).sum())
        eval_loss = total / len(dataset)
        tail = self.s.losses[-max(1, min(10, len(self.s.losses))) :] or [float("nan")]
        self.s.metrics = {
            "eval_loss": eval_loss,
            "perplexity": math.exp(min(eval_loss, 50.0)),
            "train_loss": sum(tail) / len(tail),
        }
        self._evaluate_against_base(records)
        if self.s.canaries:
            self.s.exposures = measure_exposures(
                model, self._tokenizer, self.s.canaries, candidates=cfg.canary_candidates, device=self._device
            )
        if self.s.audit_canaries:
            self._audit_privacy()

    def _audit_privacy(self) -> None:
        """The one-run privacy audit (Steinke et al. 2023): score the audit canaries, bound epsilon at the run's
        delta. Only counts and the bound are kept; which canary was in stays secret."""
        assert self.s.delta is not None
        bound = run_audit(
            self._model,
            self._tokenizer,
            self.s.audit_canaries,
            delta=self.s.delta,
            max_length=self.config.max_length,
            batch_size=self.config.physical_batch_size,
            device=self._device,
        )
        self.s.privacy_audit = bound.as_dict()
        log.info("training.privacy_audit", run_id=self.run_id, **self.s.privacy_audit)

    def _evaluate_against_base(self, records: list[Record]) -> None:
        """The same evaluation as `appliance eval`: base (adapter disabled) and adapter on the eval records."""
        from appliance.evaluation import EvalOptions, evaluate_pair

        options = EvalOptions(max_length=self.config.max_length, batch_size=self.config.physical_batch_size)
        result = evaluate_pair(self._model, self._tokenizer, records, options, self._device)
        self.s.evaluation = {"split": "eval", **result}

    # --- phase 6 ------------------------------------------------------------------------------------------------
    def write(self) -> TrainResult:
        """Write adapter, metadata and curves into a hidden directory, check them, rename into place."""
        cfg = self.config
        assert self.s.dataset is not None
        unchanged = weights_changed(self._initial, dict(self._model.named_parameters()))
        if unchanged:
            raise TrainingFailed(
                f"{len(unchanged)} LoRA tensors never changed during training (e.g. {unchanged[0]}); "
                "the adapter would be the base model (Opacus #820)"
            )
        entry = self.ledger.get(self.run_id)
        tmp = partial_dir(self.out, self.run_id)
        try:
            from appliance.training._fs import storage_errors

            with storage_errors(str(tmp)):
                self._model.save_pretrained(str(tmp), safe_serialization=True)
            trainable = {n: p for n, p in self._model.named_parameters() if p.requires_grad}
            check_adapter(tmp, trainable)
            with storage_errors(str(tmp)):
                self.s.weights_sha256 = hashlib.sha256((tmp / "adapter_model.safetensors").read_bytes()).hexdigest()
                self.s.config_sha256 = hashlib.sha256((tmp / "adapter_config.json").read_bytes()).hexdigest()
            metadata = run_metadata_json(self._metadata(entry.epsilon if cfg.dp else None))
            self._seal_canaries(tmp)
            write_json(tmp / "metadata.json", metadata)
            with storage_errors(str(tmp)):
                write_curves(tmp, self.s.losses, self.s.epsilons)
            commit_dir(tmp, self.out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return TrainResult(self.out, self.run_id, metadata)

    def _seal_canaries(self, directory: Path) -> None:
        """The canaries' secrets and prompts for the registry (and so the production probe), sealed under a
        ``canaries`` data key (appliance.canaries); without a key service they are dropped, never written in clear."""
        if not self.s.canaries or self._keys is None:
            if self.s.canaries:
                log.warning("training.canaries_not_sealed", effect="no key service: production probes impossible")
            return
        from appliance._fs import atomic_write
        from appliance.canaries import SEALED_FILE, ProbeCanary, render_document, seal_document
        from appliance.training._data import prompt_text
        from appliance.training._fs import storage_errors

        probes = [ProbeCanary(c, prompt_text(self._tokenizer, c.instruction)) for c in self.s.canaries]
        plaintext = render_document(self.run_id, self.config.canary_candidates, probes)
        sealed = seal_document(self._keys, self.run_id, plaintext)
        with storage_errors(str(directory / SEALED_FILE)):
            atomic_write(directory / SEALED_FILE, sealed, mode=0o600)

    def _metadata(self, epsilon: float | None) -> RunMetadata:
        cfg = self.config
        assert self.s.dataset is not None
        exposures = [
            {"repetitions": c.repetitions, "exposure": round(e, 4)}
            for c, e in zip(self.s.canaries, self.s.exposures, strict=True)
        ]
        mechanics: dict[str, Any] = self._dp_mechanics() if cfg.dp else {}  # extra keys of metadata.dp
        sealed: dict[str, Any] = {"sealed": bool(self.s.canaries) and self._keys is not None}  # canaries.sealed
        return RunMetadata(
            format_version=METADATA_FORMAT_VERSION,
            appliance_version=_package_version("appliance"),
            run_id=self.run_id,
            trained_by=cfg.trained_by,
            base_model=BaseModelRef(path=str(cfg.base.resolve()), sha256=self.s.base_hash),
            dataset=DatasetRef(fingerprint=self.s.dataset.fingerprint, path=str(self.s.dataset.path)),
            dp=DPParameters(
                enabled=cfg.dp,
                epsilon=epsilon,
                delta=self.s.delta if cfg.dp else None,
                noise_multiplier=self.s.noise_multiplier if cfg.dp else None,
                sample_rate=self.s.sample_rate if cfg.dp else None,
                max_grad_norm=cfg.max_grad_norm if cfg.dp else None,
                privacy_unit=cfg.privacy_unit,
                accountant="rdp",
                **mechanics,
            ),
            lora={
                "r": cfg.lora_r,
                "alpha": cfg.lora_alpha,
                "dropout": cfg.lora_dropout,
                "target_modules": sorted(
                    {m.rsplit(".", 1)[-1] for m in self._model.peft_config["default"].target_modules}
                ),
            },
            quantization=QuantizationInfo.model_validate(quantization_metadata(cfg.quantize, cfg.serving_base)),
            hyperparameters={
                "learning_rate": cfg.learning_rate,
                "batch_size": cfg.batch_size,
                "max_length": cfg.max_length,
                "steps": cfg.steps,
                "seed": cfg.seed,
            },
            steps=self.s.step,
            metrics=self.s.metrics,
            evaluation=self.s.evaluation,
            canaries=CanaryReport(
                count=len(self.s.canaries),
                exposures=exposures,
                max_exposure=max((e["exposure"] for e in exposures), default=0.0),
                **sealed,
            ),
            privacy_audit=self._privacy_audit_claim(epsilon),
            packages={name: _package_version(name) for name in ("torch", "transformers", "peft", "opacus")},
            started_at=self.s.started_at,
            finished_at=_now(),
        )

    def _privacy_audit_claim(self, epsilon: float | None) -> PrivacyAuditReport | None:
        """metadata.privacy_audit: the audit's counts and bound beside the epsilon the accountant claims."""
        if self.s.privacy_audit is None:
            return None
        claim = {**self.s.privacy_audit, "claimed_epsilon": epsilon}
        if epsilon is not None and claim["epsilon_lower_bound"] > epsilon:
            log.warning("training.privacy_audit_exceeds_claim", run_id=self.run_id, **claim)
        return PrivacyAuditReport.model_validate(claim)

    def _dp_mechanics(self) -> dict[str, Any]:
        """How the DP noise and sampling were drawn and the per-unit gradients computed (metadata.dp)."""
        cfg = self.config
        return {
            "noise_seeding": NOISE_SEEDING,
            "sampling_seeding": SAMPLING_SEEDING,
            "grad_sample_mode": cfg.grad_sample_mode,
            "noise_per_coordinate": (self.s.noise_multiplier or 0.0) * cfg.max_grad_norm / cfg.batch_size,
        }

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
            if self._resumable(exc):  # the run stays open in the ledger with everything it charged
                code = exc.code if isinstance(exc, ApplianceError) else "INTERRUPTED"
                self._audit.record(
                    "training.finish", status="error", details={"run_id": self.run_id, "resumable": True}, error=code
                )
                raise
            reason = exc.code if isinstance(exc, ApplianceError) else type(exc).__name__
            try:
                self.ledger.close(self.run_id, status="failed", reason=reason)
            finally:  # not resumable (or already abandoned); its checkpoint holds canary secrets
                shutil.rmtree(self.run_dir, ignore_errors=True)
            self._audit.record(
                "training.finish", status="error", details={"run_id": self.run_id, "resumable": False}, error=reason
            )
            if isinstance(exc, ApplianceError):
                raise
            raise TrainingFailed(f"training run {self.run_id} failed: {type(exc).__name__}: {exc}") from exc
        canaries = result.metadata["canaries"]
        exposure = canaries["max_exposure"] if canaries["exposures"] else None  # what the registry will check
        entry = self.ledger.close(
            self.run_id,
            status="finished",
            max_exposure=exposure,
            weights_sha256=self.s.weights_sha256,
            config_sha256=self.s.config_sha256,
            evaluation=json.dumps(result.metadata["evaluation"], sort_keys=True),
            privacy_audit=_json_or_none(result.metadata["privacy_audit"]),
        )
        evaluation = result.metadata["evaluation"] or {}
        self._audit.record(
            "training.finish",
            status="success",
            details={
                "run_id": self.run_id,
                "steps": self.s.step,
                "steps_charged": entry.steps_taken,
                "epsilon": entry.epsilon,
                "eval_loss": round(self.s.metrics["eval_loss"], 4),
                "eval_loss_delta": evaluation.get("delta", {}).get("loss"),
                "exact_match_delta": evaluation.get("delta", {}).get("exact_match"),
                "epsilon_lower_bound": (result.metadata["privacy_audit"] or {}).get("epsilon_lower_bound"),
            },
        )
        shutil.rmtree(self.run_dir, ignore_errors=True)  # checkpoints hold canary secrets; the adapter is final
        return result


def _audit_canaries_from(state: dict[str, Any]) -> list[AuditCanary]:
    """The audit canaries of a checkpoint (none in one written before --audit-canaries existed)."""
    return [AuditCanary(str(code), str(secret), bool(inc)) for code, secret, inc in state.get("audit_canaries", [])]


def _json_or_none(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


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
