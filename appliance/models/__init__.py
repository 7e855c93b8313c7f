"""Base models: bootstrap without a hub, identify any local Hugging Face model directory by content hash, and
score a peft model with its adapter and as its base."""

from appliance.models._adapter import adapter_and_base
from appliance.models._bootstrap import bootstrap_smollm2, bootstrap_tiny, model_hash, smollm2_gguf_path

__all__ = ["adapter_and_base", "bootstrap_smollm2", "bootstrap_tiny", "model_hash", "smollm2_gguf_path"]
