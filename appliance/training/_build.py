"""Phase 2: the base model on its device, LoRA, the optimizer and the loader; with DP, Opacus around them.

Opacus 1.6 with ``wrap_model=False`` (hooks attach to the peft model itself, so ``save_pretrained`` writes peft's
own key names), Poisson sampling, hooks or ghost clipping. The model is on its device before ``get_peft_model``
and ``make_private`` (Opacus #820). The caller supplies the module handed to ``make_private`` (one process: the
model; several: Opacus's DPDDP) and the loader the steps draw from.
"""

from __future__ import annotations

import math
import random
import secrets
import warnings
from collections.abc import Callable
from typing import Any

from appliance.config import Settings
from appliance.errors import TrainingFailed, ValidationFailed
from appliance.training._config import TrainConfig
from appliance.training._data import UnitDataset, collate
from appliance.training._phases import Built, Prepared
from appliance.training._quantization import load_base_model

__all__ = ["build", "dp_loader"]


def _device(config: TrainConfig, settings: Settings) -> Any:
    import torch

    name = config.device if config.device != "auto" else settings.training.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValidationFailed("device 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def _lora_model(cfg: TrainConfig, device: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    try:  # on its device before peft and Opacus (Opacus #820)
        model: Any = load_base_model(cfg.base, cfg.quantize, device)
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
        raise ValidationFailed(f"LoRA target modules {cfg.target_modules} do not fit the base model: {exc}") from exc
    model.base_model.model.name_or_path = str(cfg.base.resolve())
    return model


def dp_loader(loader: Any, pad_token_id: int) -> Any:
    """The Poisson loader the steps draw from: Opacus's sampler with our collate for every draw. Ours gives an
    empty draw the batch's three zero-row tensors; Opacus's wrapper gives an empty *first* draw the dataset's
    two (ids, weights), which no step can unpack."""
    from torch.utils.data import DataLoader

    return DataLoader(
        loader.dataset,
        batch_sampler=loader.batch_sampler,
        collate_fn=collate(pad_token_id),
        generator=loader.generator,
    )


def build(
    cfg: TrainConfig,
    settings: Settings,
    prepared: Prepared,
    *,
    dp_module: Callable[[Any], Any],
    dp_loader: Callable[[Any], Any],
) -> Built:
    """Load the base, add LoRA, make the optimizer; with DP, attach Opacus (hooks, Poisson sampling)."""
    import torch
    from torch.utils.data import DataLoader

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    device = _device(cfg, settings)
    model = _lora_model(cfg, device)
    initial = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer: Any = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    pad = int(prepared.tokenizer.pad_token_id)
    # DP: Poisson sampling must be secret (the amplification by subsampling assumes it), so its generator is
    # seeded from the OS CSPRNG, not from the published --seed
    generator = torch.Generator().manual_seed(secrets.randbits(64) if cfg.dp else cfg.seed)
    loader: Any = DataLoader(
        UnitDataset(prepared.units),  # type: ignore[arg-type]
        batch_size=cfg.batch_size,
        shuffle=not cfg.dp,
        collate_fn=collate(pad),
        generator=generator,
        drop_last=False,
    )
    if not cfg.dp:
        return Built(model, optimizer, loader, device, initial)
    if prepared.noise_multiplier is None:  # never train a DP run without its noise
        raise TrainingFailed("a DP run reached build without a noise multiplier")
    from opacus import PrivacyEngine

    # "Secure RNG turned off": torchcsprng has no wheel; the noise generator is reseeded from the OS CSPRNG
    warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)
    engine = PrivacyEngine(accountant="rdp")
    noise_generator = torch.Generator(device=device)
    private = engine.make_private(
        module=dp_module(model),  # several processes: Opacus's DPDDP (see _distributed.py)
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=prepared.noise_multiplier,
        max_grad_norm=cfg.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode=cfg.grad_sample_mode,
        wrap_model=False,
        loss_reduction="mean",
        noise_generator=noise_generator,
        criterion=torch.nn.CrossEntropyLoss(),  # ghost mode wraps it; the loss is unit_losses all the same
    )
    ghost_hooks: Any = None
    if cfg.grad_sample_mode == "ghost":
        _, optimizer, criterion, loader = private
        ghost_hooks = criterion.module
    else:
        _, optimizer, loader = private
    actual_rate = loader.batch_sampler.sample_rate
    if not math.isclose(actual_rate, prepared.sample_rate, rel_tol=1e-9):
        raise TrainingFailed(f"Opacus sample rate {actual_rate} differs from the accounted {prepared.sample_rate}")
    return Built(model, optimizer, dp_loader(loader), device, initial, engine, noise_generator, ghost_hooks)
