"""Peak accelerator memory of one training run, itemised, and the largest physical batch that fits a card.

Parts (bytes), from the base model's shape (read on torch's meta device: no weights are loaded):

* **weights**: every base parameter at its load dtype (float32 unquantised; with ``nf4`` the linear layers other
  than the output layer take 0.5 byte/param and the rest, embeddings, norms and the output layer, bfloat16);
* **quantization constants**: nf4 stores one absmax per 64-weight block; double quantisation keeps it as 1 byte
  plus one float32 per 256 blocks (QLoRA, Dettmers et al. 2023): ``1/64 + 4/(64*256)`` byte/param;
* **LoRA**: ``r*(in+out)`` per targeted linear layer, float32 (DP noise and clipping in full precision);
* **optimizer**: AdamW's two moments at the adapter's dtype (``2 x LoRA``);
* **gradients**: the accumulated gradient plus, with DP, Opacus's ``summed_grad`` (``1 or 2 x LoRA``);
* **per-sample gradients**: Opacus hooks keep one gradient per row of the physical batch (``batch x LoRA``);
  ghost clipping keeps none, but builds a ``batch x T x T`` Gram matrix per layer, one layer at a time;
* **activations**: what autograd keeps for the backward pass, per layer and token ``ACT_HIDDEN*h + ACT_FFN*i``
  elements at the compute dtype (norm inputs and outputs, q/k/v, rotary, attention output, gate/up/SiLU/product);
  attention is fused (PyTorch's scaled-dot-product kernels, on CUDA and CPU), so no ``T x T`` probabilities;
* **logits**: ``batch x T x vocab`` at the compute dtype, and the float32 copy, log-softmax and its gradient the
  per-unit loss keeps (``LOGIT_FP32_COPIES``);
* **runtime**: the CUDA context and allocator slack (``CUDA_RUNTIME_BYTES``); none on CPU.

``bench/memory_estimate.py`` and ``tests/training/test_memory.py`` measure a run against this estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from appliance.errors import ValidationFailed
from appliance.training._quantization import ADAPTER_DTYPE, NF4_COMPUTE_DTYPE

if TYPE_CHECKING:
    from appliance.training._config import TrainConfig

__all__ = [
    "MemoryEstimate",
    "ModelShape",
    "estimate_memory",
    "fit_physical_batch",
    "model_shape",
    "size_run",
]

Quantization = Literal["none", "nf4"]
DPMode = Literal["none", "hooks", "ghost"]
Device = Literal["cuda", "cpu"]

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
NF4_BYTES = 0.5  # 4 bits per quantised weight
NF4_BLOCK = 64  # weights per absmax block (bitsandbytes' default for nf4)
NF4_DOUBLE_QUANT_BYTES = 1 / NF4_BLOCK + 4 / (NF4_BLOCK * 256)  # 8-bit absmax + a float32 per 256 blocks
ACT_HIDDEN = 10  # saved elements per token and layer, in units of the hidden size ...
ACT_FFN = 4  # ... and of the MLP's intermediate size
LOGIT_FP32_COPIES = 3  # float32 logits, log-softmax output, its gradient (besides the model's own logits)
CUDA_RUNTIME_BYTES = 768 << 20  # CUDA context, cuBLAS workspace and allocator slack on the card
SAFETY_MARGIN = 0.10  # --gpu-memory keeps this fraction of the card free


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a base model: parameter counts and the linear layers LoRA may target."""

    params: int  # all base parameters
    quantizable: int  # parameters of the linear layers nf4 quantises (all but the output layer)
    linears: tuple[tuple[str, int, int], ...]  # (qualified name, in_features, out_features), output layer excluded
    layers: int
    hidden: int
    intermediate: int
    vocab: int

    def lora_params(self, rank: int, targets: Sequence[str]) -> int:
        """Trainable LoRA parameters: ``rank*(in+out)`` per targeted layer (peft's matching: name suffix)."""
        every = list(targets) == ["all-linear"]
        return sum(
            rank * (fan_in + fan_out)
            for name, fan_in, fan_out in self.linears
            if every or any(name == t or name.endswith("." + t) for t in targets)
        )


def model_shape(base: Path) -> ModelShape:
    """The shape of the model in ``base`` (its config.json), built on torch's meta device: nothing is allocated."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(base), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValidationFailed(f"base model {base} has no usable config.json: {exc}") from exc
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    output = model.get_output_embeddings()
    linears = tuple(
        (name, module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not output
    )
    params = sum(p.numel() for p in model.parameters())  # a tied output layer is counted once
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(getattr(text, "hidden_size", 0) or getattr(text, "n_embd", 0))
    return ModelShape(
        params=params,
        quantizable=sum(i * o for _, i, o in linears),
        linears=linears,
        layers=int(getattr(text, "num_hidden_layers", 0) or getattr(text, "n_layer", 0)),
        hidden=hidden,
        intermediate=int(getattr(text, "intermediate_size", 0) or getattr(text, "n_inner", 0) or 4 * hidden),
        vocab=int(text.vocab_size),
    )


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of one physical batch's forward and backward pass, by part (bytes)."""

    physical_batch: int
    max_length: int
    quantization: Quantization
    dp_mode: DPMode
    device: Device
    compute_dtype: str
    parts: tuple[tuple[str, int], ...]  # (part, bytes), in the module docstring's order

    @property
    def total(self) -> int:
        return sum(b for _, b in self.parts)

    @property
    def allocated(self) -> int:
        """What the framework allocates (``torch.cuda.max_memory_allocated``): the total without the runtime."""
        return self.total - dict(self.parts).get("runtime", 0)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready (``--plan-only --json``)."""
        return {
            "physical_batch": self.physical_batch,
            "max_length": self.max_length,
            "quantization": self.quantization,
            "dp_mode": self.dp_mode,
            "device": self.device,
            "compute_dtype": self.compute_dtype,
            "parts_bytes": dict(self.parts),
            "total_bytes": self.total,
        }


def estimate_memory(
    shape: ModelShape,
    *,
    lora_rank: int,
    target_modules: Sequence[str],
    max_length: int,
    physical_batch: int,
    quantization: Quantization = "none",
    dp_mode: DPMode = "hooks",
    device: Device = "cuda",
) -> MemoryEstimate:
    """The itemised peak memory of a run with these settings (see the module docstring for each part)."""
    compute = NF4_COMPUTE_DTYPE if quantization == "nf4" else "float32"
    cbytes = DTYPE_BYTES[compute]
    abytes = DTYPE_BYTES[ADAPTER_DTYPE]
    b, t = physical_batch, max_length
    if quantization == "nf4":
        weights = shape.quantizable * NF4_BYTES + (shape.params - shape.quantizable) * cbytes
        constants = shape.quantizable * NF4_DOUBLE_QUANT_BYTES
    else:
        weights, constants = shape.params * cbytes, 0.0
    lora = shape.lora_params(lora_rank, target_modules)
    per_token_layer = ACT_HIDDEN * shape.hidden + ACT_FFN * shape.intermediate
    activations = shape.layers * b * t * per_token_layer * cbytes
    logits = b * t * shape.vocab * (cbytes + 4 * LOGIT_FP32_COPIES)
    if dp_mode == "hooks":
        per_sample = b * lora * abytes
    elif dp_mode == "ghost":
        per_sample = 2 * b * t * t * 4  # one layer's activation and gradient Gram matrices, float32
    else:
        per_sample = 0
    parts = (
        ("weights", weights),
        ("quantization constants", constants),
        ("LoRA", lora * abytes),
        ("optimizer (AdamW)", 2 * lora * abytes),
        ("gradients", (2 if dp_mode != "none" else 1) * lora * abytes),
        ("per-sample gradients", per_sample),
        ("activations", activations),
        ("logits and loss", logits),
        ("runtime", CUDA_RUNTIME_BYTES if device == "cuda" else 0),
    )
    return MemoryEstimate(
        physical_batch=b,
        max_length=t,
        quantization=quantization,
        dp_mode=dp_mode,
        device=device,
        compute_dtype=compute,
        parts=tuple((name, math.ceil(value)) for name, value in parts),
    )


def fit_physical_batch(
    capacity_bytes: int, estimate_for: Callable[[int], MemoryEstimate], *, upper: int, margin: float = SAFETY_MARGIN
) -> MemoryEstimate:
    """The estimate for the largest physical batch (at most ``upper``) within ``capacity*(1-margin)``.

    The estimate grows with the batch, so a binary search finds it; when even one row does not fit, the refusal
    names the parts that take the room.
    """
    usable = capacity_bytes * (1 - margin)
    one = estimate_for(1)
    if one.total > usable:
        biggest = sorted(one.parts, key=lambda part: -part[1])[:3]
        named = ", ".join(f"{name} {_gib(size)}" for name, size in biggest)
        remedies = "a shorter --max-length, a lower --lora-r or a larger card"
        if one.quantization == "none":
            remedies = f"--quantize nf4, {remedies}"
        raise ValidationFailed(
            f"even a physical batch of 1 needs about {_gib(one.total)}, more than {_gib(int(usable))} usable of "
            f"{_gib(capacity_bytes)} ({100 * margin:.0f}% kept free); largest parts: {named}. Use {remedies}"
        )
    low, high = 1, max(1, upper)
    while low < high:
        middle = (low + high + 1) // 2
        if estimate_for(middle).total <= usable:
            low = middle
        else:
            high = middle - 1
    return estimate_for(low)


def _gib(size: int) -> str:
    return f"{size / (1 << 30):.2f} GiB"


def size_run(config: TrainConfig, *, choose_batch: bool) -> MemoryEstimate:
    """The estimate for a run's settings on its base; ``choose_batch``: the largest physical batch that fits
    ``--gpu-memory`` (up to the logical batch). A given physical batch that does not fit is refused."""
    shape = model_shape(config.base)
    device: Device = "cpu" if config.device == "cpu" else "cuda"

    def estimate_for(batch: int) -> MemoryEstimate:
        return estimate_memory(
            shape,
            lora_rank=config.lora_r,
            target_modules=config.target_modules,
            max_length=config.max_length,
            physical_batch=batch,
            quantization=config.quantize,
            dp_mode="none" if config.no_dp else config.grad_sample_mode,
            device=device,
        )

    if config.gpu_memory_gb is None:
        return estimate_for(config.physical_batch_size)
    capacity = int(config.gpu_memory_gb * (1 << 30))
    if choose_batch:
        return fit_physical_batch(capacity, estimate_for, upper=config.batch_size)
    given = estimate_for(config.physical_batch_size)
    usable = capacity * (1 - SAFETY_MARGIN)
    if given.total > usable:
        raise ValidationFailed(
            f"physical batch {config.physical_batch_size} needs about {_gib(given.total)}, more than "
            f"{_gib(int(usable))} usable of --gpu-memory {config.gpu_memory_gb:g} GiB; leave --physical-batch-size "
            "out to have the largest batch that fits chosen"
        )
    return given
