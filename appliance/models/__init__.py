"""Base models: bootstrap without a hub, and identify any local Hugging Face model directory by content hash."""

from appliance.models._bootstrap import bootstrap_smollm2, bootstrap_tiny, model_hash, smollm2_gguf_path

__all__ = ["bootstrap_smollm2", "bootstrap_tiny", "model_hash", "smollm2_gguf_path"]
