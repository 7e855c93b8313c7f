"""Phase 4: the steps, and what a checkpoint keeps of them (phase 3 restores it).

Each step is charged to the ledger *before* it runs (``charge``); ``after_step`` records its loss, epsilon and
progress and checkpoints. With DP, logical batches are split into physical ones by Opacus's
``BatchMemoryManager``; an empty Poisson batch still takes a noisy step, and the noise generator is reseeded from
the OS CSPRNG before every optimizer step.
"""

from __future__ import annotations

import random
import secrets
import warnings
from collections.abc import Callable
from typing import Any

from appliance.training._audit import AuditCanary
from appliance.training._canaries import Canary
from appliance.training._config import TrainConfig
from appliance.training._loss import unit_losses
from appliance.training._phases import Built, Progress

__all__ = [
    "audit_canaries_from",
    "backward",
    "canaries_of",
    "checkpoint_state",
    "fit_dp",
    "fit_plain",
    "restore_state",
    "took_step",
]


def took_step(optimizer: Any) -> bool:
    """Whether the DP optimizer's last ``step()`` was a real (noisy) step rather than one of the
    ``BatchMemoryManager``'s skipped physical batches. Opacus 1.6 has no public API for this (``step()``
    returns the same None either way, and the accountant's step hook is its own); the private flag below is
    what its own ``zero_grad`` reads, so it is read here, in this one place."""
    return not optimizer._is_last_step_skipped


def reseed_noise(built: Built) -> None:
    """A fresh 64-bit seed from the OS CSPRNG for the noise of the coming step (Opacus's secure_mode needs
    torchcsprng, which has no wheel): no noise can be predicted from the published --seed or an earlier step."""
    built.noise_generator.manual_seed(secrets.randbits(64))


def backward(losses: Any, optimizer: Any, ghost_hooks: Any) -> None:
    """Per-unit gradients for the DP optimizer: Opacus hooks, or ghost clipping's two backward passes."""
    if ghost_hooks is None:
        losses.mean().backward()
        return
    from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

    DPTensorFastGradientClipping(ghost_hooks, optimizer, losses, loss_reduction="mean").backward()


def fit_dp(
    cfg: TrainConfig,
    built: Built,
    progress: Progress,
    *,
    charge: Callable[[], None],
    after_step: Callable[[float], None],
) -> None:
    """DP-SGD until ``cfg.steps``: Poisson batches, per-unit clipping, noise; each step charged before it runs."""
    import torch
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    model, optimizer = built.model, built.optimizer
    model.train()
    # the embeddings are frozen, so Opacus's full backward hooks see no input gradients: expected, not a fault
    warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
    charge_due = True
    step_loss, step_rows = 0.0, 0
    while progress.step < cfg.steps:
        with BatchMemoryManager(
            data_loader=built.loader, max_physical_batch_size=cfg.physical_batch_size, optimizer=optimizer
        ) as batches:
            for input_ids, mask, weights in batches:
                if charge_due:
                    charge()
                    charge_due = False
                rows = int(input_ids.shape[0])
                if rows == 0:  # an empty Poisson batch still takes a noisy step
                    for p in optimizer.params:
                        if built.ghost_hooks is not None:
                            p.grad = torch.zeros_like(p)
                        else:
                            p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
                else:
                    input_ids, mask, weights = (t.to(built.device) for t in (input_ids, mask, weights))
                    logits = model(input_ids=input_ids, attention_mask=mask).logits
                    losses = unit_losses(logits, input_ids, weights)
                    backward(losses, optimizer, built.ghost_hooks)
                    step_loss += float(losses.detach().sum())
                    step_rows += rows
                reseed_noise(built)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if took_step(optimizer):
                    after_step(step_loss / max(1, step_rows))
                    step_loss, step_rows = 0.0, 0
                    charge_due = True
                    if progress.step >= cfg.steps:
                        break


def fit_plain(
    cfg: TrainConfig,
    built: Built,
    progress: Progress,
    *,
    charge: Callable[[], None],
    after_step: Callable[[float], None],
) -> None:
    """Plain SGD (``--no-dp``, a baseline): shuffled batches, physical splits by gradient accumulation."""
    model, optimizer = built.model, built.optimizer
    model.train()
    while progress.step < cfg.steps:
        for input_ids, mask, weights in built.loader:
            charge()
            rows = int(input_ids.shape[0])
            total = 0.0
            for start in range(0, rows, cfg.physical_batch_size):
                part = slice(start, start + cfg.physical_batch_size)
                ids, m, w = (t[part].to(built.device) for t in (input_ids, mask, weights))
                losses = unit_losses(model(input_ids=ids, attention_mask=m).logits, ids, w)
                (losses.sum() / rows).backward()
                total += float(losses.detach().sum())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            after_step(total / rows)
            if progress.step >= cfg.steps:
                break


def checkpoint_state(
    built: Built, progress: Progress, canaries: list[Canary], audit_canaries: list[AuditCanary]
) -> dict[str, Any]:
    """What a checkpoint keeps: trainable LoRA tensors, optimizer, the accountant's own ``state_dict``, RNG
    states, curves and the canaries (the checkpoint is sealed: see _checkpoint.py)."""
    import torch

    return {
        "step": progress.step,
        "lora": {n: p.detach().cpu() for n, p in built.model.named_parameters() if p.requires_grad},
        "optimizer": built.optimizer.state_dict(),
        "accountant": dict(built.engine.accountant.state_dict()) if built.engine is not None else {},
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        "losses": list(progress.losses),
        "epsilons": [-1.0 if e is None else e for e in progress.epsilons],
        "canaries": [{"code": c.code, "secret": c.secret, "repetitions": c.repetitions} for c in canaries],
        "audit_canaries": [[c.code, c.secret, c.included] for c in audit_canaries],
    }


def restore_state(built: Built, state: dict[str, Any]) -> Progress:
    """Load a checkpoint into the built run: weights, optimizer, accountant, RNG; returns the progress it kept."""
    import torch

    named = dict(built.model.named_parameters())
    with torch.no_grad():
        for name, value in state["lora"].items():
            named[name].copy_(value.to(built.device))
    built.optimizer.load_state_dict(state["optimizer"])
    if built.engine is not None:
        accountant = built.engine.accountant
        stored = state["accountant"]
        if isinstance(stored, list):  # a checkpoint from before the accountant's state_dict: its history alone
            stored = {"history": stored, "mechanism": accountant.mechanism()}
        accountant.load_state_dict({**stored, "history": [tuple(h) for h in stored["history"]]})
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    return Progress(
        step=int(state["step"]),
        losses=list(state["losses"]),
        epsilons=[None if e < 0 else e for e in state["epsilons"]],
    )


def audit_canaries_from(state: dict[str, Any]) -> list[AuditCanary]:
    """The audit canaries of a checkpoint (none in one written before --audit-canaries existed)."""
    return [AuditCanary(str(code), str(secret), bool(inc)) for code, secret, inc in state.get("audit_canaries", [])]


def canaries_of(state: dict[str, Any]) -> tuple[list[Canary], list[AuditCanary]]:
    """The canaries and audit canaries a checkpoint keeps."""
    canaries = [Canary(c["code"], c["secret"], int(c["repetitions"])) for c in state["canaries"]]
    return canaries, audit_canaries_from(state)
