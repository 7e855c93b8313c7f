"""QLoRA: the base model in 4-bit NF4 (bitsandbytes) under a float32 LoRA adapter; what the metadata records.

``--quantize nf4`` loads every linear layer of the base except the output layer as NF4 with double quantisation
(QLoRA, Dettmers et al. 2023), the rest (embeddings, norms, output layer) in bfloat16, and computes in bfloat16.
The LoRA matrices stay float32 (peft's default over a quantised base): their per-sample gradients, the clipping,
the clipped sum and the DP noise are then computed in full precision; in bfloat16 the rounding of a logical batch's
clipped sum (about ``B*C/256``) would be as large as the noise itself. Opacus sees only those float32 LoRA layers.

bitsandbytes' NF4 kernels need CUDA: without a CUDA device, or without the ``bitsandbytes`` package
(``pip install 'appliance[gpu]'``), a run with ``--quantize nf4`` is refused with ``ConfigError`` before anything
is charged. ``--plan-only`` still estimates its memory (a plan is often made on another machine than the GPU's).

The adapter is served on the **unquantised** base its ``base_model.sha256`` names (``serving: "unquantised"``),
or, with ``--serving-base engine``, on the serving engine's own quantisation of that base (TGI ``--quantize``,
vLLM ``--quantization``): ``metadata.quantization`` records which, so a reviewer knows the adapter was trained
against a 4-bit approximation of the weights it will run with.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any, Literal

from appliance.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["load_base_model", "quantization_metadata", "quantization_unavailable", "require_quantization"]

Quantize = Literal["none", "nf4"]
ServingBase = Literal["unquantised", "engine"]

NF4_COMPUTE_DTYPE = "bfloat16"
ADAPTER_DTYPE = "float32"
DOUBLE_QUANT = True


def quantization_unavailable(quantize: Quantize) -> str | None:
    """Why ``quantize`` cannot run on this machine, or None when it can (``none`` always can)."""
    if quantize == "none":
        return None
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device is available (bitsandbytes' NF4 kernels need one)"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "the bitsandbytes package is not installed (pip install 'appliance[gpu]')"
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # a broken CUDA install fails here with anything from OSError to RuntimeError
        return f"bitsandbytes cannot be imported ({type(exc).__name__}: {exc})"
    return None


def require_quantization(quantize: Quantize) -> None:
    """Refuse, with the reason, a quantisation this machine cannot run (before anything is charged)."""
    reason = quantization_unavailable(quantize)
    if reason is not None:
        raise ConfigError(
            f"--quantize {quantize} cannot run here: {reason}; train without --quantize, or on a CUDA machine "
            "with bitsandbytes"
        )


def load_base_model(base: Path, quantize: Quantize, device: Any) -> Any:
    """The base causal LM on ``device``: float32, or NF4 linear layers with bfloat16 elsewhere."""
    import torch
    from transformers import AutoModelForCausalLM

    if quantize == "none":
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, local_files_only=True)
        return model.to(device)
    require_quantization(quantize)
    if device.type != "cuda":
        raise ConfigError(f"--quantize {quantize} needs a CUDA device; this run's device is {device.type}")
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=getattr(torch, NF4_COMPUTE_DTYPE),
        bnb_4bit_use_double_quant=DOUBLE_QUANT,
    )
    index = device.index if device.index is not None else torch.cuda.current_device()
    return AutoModelForCausalLM.from_pretrained(
        str(base),
        quantization_config=config,
        dtype=getattr(torch, NF4_COMPUTE_DTYPE),
        device_map={"": index},  # placed at load: a 4-bit model is not moved afterwards
        local_files_only=True,
    )


def quantization_metadata(quantize: Quantize, serving_base: ServingBase) -> dict[str, Any]:
    """``metadata.quantization`` (contracts.md): how the base was held in training and how it is to be served."""
    nf4 = quantize == "nf4"
    return {
        "method": quantize,
        "compute_dtype": NF4_COMPUTE_DTYPE if nf4 else "float32",
        "adapter_dtype": ADAPTER_DTYPE,
        "double_quant": DOUBLE_QUANT if nf4 else None,
        "serving": serving_base,
    }
