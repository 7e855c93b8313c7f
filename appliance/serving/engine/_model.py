"""The base model, its tokenizer and the LoRA adapters loaded on it (peft multi-adapter).

Adapters load from the registry's published list. Each adapter's weights file and adapter_config.json are read
once into memory, their SHA-256 compared (constant time) with the published fingerprint and config digest, and
the adapter is built from those same bytes, so neither file can change between the check and the load (the
config sets rank, scaling and target modules: it changes what the model computes as much as the weights do). A
reload is rehearsed first: every new adapter is read and checked before anything changes; if one fails, nothing
changes.

Mixed-adapter batches: peft's ``adapter_names=`` loops over the adapters of a batch in every LoRA layer, which
costs one pair of small matmuls per adapter. When every loaded adapter is plain LoRA, the runner instead keeps
each layer's adapters stacked (``A`` [n+1, r, in], ``B`` [n+1, out, r] with the scaling folded in, slot 0 zeros for
the base model) and computes the whole batch with one gather and two batched matmuls, whatever the number of
adapters (the BGMV idea of Punica/S-LoRA). peft's path stays the fall-back (e.g. DoRA adapters).

Used from the scheduler's thread only (forward passes and adapter changes never overlap).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch

from appliance.errors import ApplianceError, ConfigError, IntegrityViolation
from appliance.serving._published import AdapterSpec

log = structlog.get_logger(__name__)

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is a ConfigError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("serving.device = cuda but no CUDA device is available")
    return torch.device(device)


@dataclass(frozen=True)
class PreparedAdapter:
    """An adapter read from disk and checked, ready to be put on the model."""

    spec: AdapterSpec
    fingerprint: str
    config: Any  # peft.LoraConfig
    state: dict[str, torch.Tensor]
    config_sha256: str | None = None  # of the adapter_config.json bytes the config was parsed from


def prepare_adapter(spec: AdapterSpec) -> PreparedAdapter:
    """Read and check one adapter: weights fingerprint and config digest (when published with them), peft type,
    weights format. Each file is read once; what is checked is what is parsed."""
    from peft import LoraConfig, PeftType
    from safetensors.torch import load as load_safetensors

    try:
        data = (spec.path / WEIGHTS).read_bytes()
        config_bytes = (spec.path / CONFIG).read_bytes()
    except OSError as exc:
        raise ConfigError(f"adapter {spec.id!r}: cannot read {spec.path} ({type(exc).__name__})") from exc
    digest = hashlib.sha256(data).hexdigest()
    if spec.fingerprint is not None and not hmac.compare_digest(digest, spec.fingerprint.lower()):
        raise IntegrityViolation(f"adapter {spec.id!r}: weights fingerprint does not match the published one")
    config_digest = hashlib.sha256(config_bytes).hexdigest()
    if spec.config_sha256 is not None and not hmac.compare_digest(config_digest, spec.config_sha256.lower()):
        raise IntegrityViolation(f"adapter {spec.id!r}: {CONFIG} does not match the published config digest")
    try:
        raw_config = json.loads(config_bytes)
        if not isinstance(raw_config, dict):
            raise TypeError("not a JSON object")
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"adapter {spec.id!r}: unreadable {CONFIG} ({type(exc).__name__})") from exc
    if raw_config.get("peft_type") != PeftType.LORA.value:
        raise ConfigError(f"adapter {spec.id!r}: only LoRA adapters are served (got {raw_config.get('peft_type')})")
    raw_config.pop("runtime_config", None)  # as peft's from_pretrained: runtime-only, never from a file
    try:
        config = LoraConfig.from_peft_type(**LoraConfig.check_kwargs(**raw_config))
        state = load_safetensors(data)
    except Exception as exc:
        raise ConfigError(f"adapter {spec.id!r}: unreadable adapter files ({type(exc).__name__})") from exc
    config.inference_mode = True
    config.task_type = "CAUSAL_LM"
    return PreparedAdapter(spec=spec, fingerprint=digest, config=config, state=state, config_sha256=config_digest)


def _digests(item: Any) -> tuple[str, str | None]:
    return (item.fingerprint, getattr(item, "config_sha256", None))


class _Routing:
    """Which stacked slot each row of the current forward pass uses (None: peft's own forward)."""

    def __init__(self) -> None:
        self.slots: tuple[int, ...] | None = None
        self.index: torch.Tensor | None = None


def _gathered_forward(module: Any, routing: _Routing) -> Any:
    """A LoRA Linear forward that serves rows of different adapters with one gather and two batched matmuls."""
    peft_forward = type(module).forward

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if routing.index is None or x.dim() != 3:
            return peft_forward(module, x, *args, **kwargs)
        result = module.base_layer(x, *args, **kwargs)
        cache = module._appliance_cache
        if cache is None or cache[0] != routing.slots:
            stack_a, stack_b = module._appliance_stacks
            a = stack_a.index_select(0, routing.index).transpose(1, 2)  # [B, in, r]
            b = stack_b.index_select(0, routing.index).transpose(1, 2)  # [B, r, out]
            cache = module._appliance_cache = (routing.slots, a, b)
        _, a, b = cache
        return result + torch.bmm(torch.bmm(x.to(a.dtype), a), b).to(result.dtype)

    return forward


class ModelRunner:
    """Runs forward passes of the base model with any mix of its loaded adapters."""

    def __init__(self, base_dir: Path, *, device: str = "auto", dtype: torch.dtype | None = None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not (Path(base_dir) / "config.json").is_file():
            raise ConfigError(f"{base_dir} is not a Hugging Face model directory (no config.json)")
        self.device = resolve_device(device)
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.base_dir = Path(base_dir)
        self.model_id = self.base_dir.name
        self.tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
        model: Any = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=self.dtype)
        self.base: Any = model
        self.base.to(self.device)
        self.base.eval()
        self.peft: Any = None
        self._active: str | None = None
        self._routing = _Routing()
        self._slots: dict[str, int] = {}  # adapter id -> slot in the stacked weights (0 = base model)
        self._gathered = False  # the stacked fast path is ready for the loaded set
        self.fingerprints: dict[str, str] = {}
        self._loaded: dict[str, PreparedAdapter] = {}  # the checked weights of each loaded adapter (roll-back)
        eos = self.base.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        self.special_ids = frozenset(int(i) for i in self.tokenizer.all_special_ids)
        self.pad_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids))

    # --- adapters ----------------------------------------------------------------------------------------------
    def adapter_ids(self) -> set[str]:
        return set(self.fingerprints)

    def loaded_digests(self, adapter_id: str) -> tuple[str, str | None] | None:
        """The weights fingerprint and config digest an adapter was loaded with (None: not loaded)."""
        item = self._loaded.get(adapter_id)
        return None if item is None else (item.fingerprint, item.config_sha256)

    def apply(self, prepared: list[PreparedAdapter]) -> dict[str, list[str]]:
        """Make the loaded set exactly ``prepared``: unload the rest, replace changed ones (weights fingerprint or
        config digest), add new ones.

        An adapter can pass its rehearsal (fingerprint, format) and still not fit the model; then the set that
        was loaded is put back, from the checked weights kept for it, and the error raised."""
        previous = list(self._loaded.values())
        try:
            return self._apply(prepared)
        except Exception as exc:
            self._apply(previous)
            if isinstance(exc, ApplianceError):
                raise
            raise ConfigError(f"adapters do not fit the base model ({type(exc).__name__})") from exc

    def _apply(self, prepared: list[PreparedAdapter]) -> dict[str, list[str]]:
        from peft import get_peft_model, set_peft_model_state_dict

        wanted = {p.spec.id: p for p in prepared}
        removed = [a for a in self.fingerprints if a not in wanted or _digests(wanted[a]) != self.loaded_digests(a)]
        added = [a for a in wanted if a not in self.fingerprints or a in removed]
        for adapter_id in removed:
            self._delete(adapter_id)
        for adapter_id in added:
            item = wanted[adapter_id]
            if self.peft is None:
                self.peft = get_peft_model(self.base, item.config, adapter_name=adapter_id)
                self.peft.eval()
            else:
                self.peft.add_adapter(adapter_id, item.config)
            result = set_peft_model_state_dict(self.peft, item.state, adapter_name=adapter_id)
            unexpected = list(getattr(result, "unexpected_keys", []) or [])
            missing = [k for k in getattr(result, "missing_keys", []) or [] if f".{adapter_id}." in k and "lora_" in k]
            if unexpected or missing:
                self._delete(adapter_id)
                raise ConfigError(
                    f"adapter {adapter_id!r} does not fit the base model "
                    f"({len(unexpected)} unexpected, {len(missing)} missing weights)"
                )
            self.peft.eval()
            self.fingerprints[adapter_id] = item.fingerprint
            self._loaded[adapter_id] = item
            self._active = None
        self._restack()
        replaced = [a for a in removed if a in wanted]
        log.info(
            "engine.adapters_applied",
            added=sorted(set(added) - set(replaced)),
            removed=sorted(set(removed) - set(replaced)),
            replaced=sorted(replaced),
            loaded=sorted(self.fingerprints),
        )
        return {
            "added": sorted(set(added) - set(replaced)),
            "removed": sorted(set(removed) - set(replaced)),
            "replaced": sorted(replaced),
        }

    def _delete(self, adapter_id: str) -> None:
        self.fingerprints.pop(adapter_id, None)
        self._loaded.pop(adapter_id, None)
        self._active = None
        if self.peft is None:
            return
        if adapter_id not in self.peft.peft_config:
            return
        if len(self.peft.peft_config) == 1:
            self.base = self.peft.unload()  # removes the LoRA layers; the base weights were never merged
            self.base.eval()
            self.peft = None
            return
        remaining = [a for a in self.peft.peft_config if a != adapter_id]
        self.peft.set_adapter(remaining[0])
        self.peft.delete_adapter(adapter_id)

    def _restack(self) -> None:
        """Rebuild every LoRA layer's stacked weights for the loaded adapters (after any change)."""
        from peft.tuners.lora.layer import Linear as LoraLinear
        from peft.tuners.lora.layer import LoraLayer

        self._gathered = False
        self._slots = {a: i + 1 for i, a in enumerate(sorted(self.fingerprints))}
        if self.peft is None or not self._slots:
            return
        layers: list[Any] = [m for m in self.peft.modules() if isinstance(m, LoraLinear)]
        others = [m for m in self.peft.modules() if isinstance(m, LoraLayer) and not isinstance(m, LoraLinear)]
        if (
            others
            or any(getattr(m, "lora_variant", None) for m in layers)
            or any(getattr(m, "fan_in_fan_out", False) for m in layers)
        ):
            log.info("engine.mixed_batches", path="peft")  # variants (DoRA...) keep peft's own path
            return
        n = len(self._slots) + 1
        for module in layers:
            present = [a for a in self._slots if a in module.lora_A]
            rank = max((module.r[a] for a in present), default=1)
            weight = module.base_layer.weight
            stack_a = torch.zeros((n, rank, module.in_features), dtype=weight.dtype, device=weight.device)
            stack_b = torch.zeros((n, module.out_features, rank), dtype=weight.dtype, device=weight.device)
            with torch.no_grad():
                for adapter in present:
                    slot, r = self._slots[adapter], module.r[adapter]
                    stack_a[slot, :r] = module.lora_A[adapter].weight
                    stack_b[slot, :, :r] = module.lora_B[adapter].weight * module.scaling[adapter]
            module._appliance_stacks = (stack_a, stack_b)
            module._appliance_cache = None
            if not getattr(module, "_appliance_wrapped", False):
                module.forward = _gathered_forward(module, self._routing)
                module._appliance_wrapped = True
        self._gathered = True

    # --- forward -----------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: Any,
        adapters: list[str | None],
        *,
        all_logits: bool = False,
    ) -> torch.Tensor:
        """Logits [B, T or 1, V] for one step; rows may use different adapters (peft mixed batches)."""
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "past_key_values": cache,
            "use_cache": True,
            "logits_to_keep": 0 if all_logits else 1,
        }
        if self.peft is None:
            return self.base(**kwargs).logits
        unique = set(adapters)
        if unique == {None}:
            with self.peft.disable_adapter():
                return self.peft(**kwargs).logits
        if self._gathered:  # any mix of adapters, one adapter alone included: measured faster than peft's path
            slots = tuple(self._slots[a] if a is not None else 0 for a in adapters)
            self._routing.slots = slots
            self._routing.index = torch.tensor(slots, device=self.device)
            try:
                return self.peft(**kwargs).logits
            finally:
                self._routing.slots, self._routing.index = None, None
        if len(unique) == 1:
            (only,) = unique
            if self._active != only:
                self.peft.set_adapter(only)
                self._active = only
            return self.peft(**kwargs).logits
        return self.peft(**kwargs, adapter_names=[a if a is not None else "__base__" for a in adapters]).logits

    def decode(self, ids: list[int], *, skip_special: bool) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=skip_special))
