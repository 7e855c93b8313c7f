"""``open_backend(settings)``: the Backend the settings name, with the adapter list the registry published to it."""

from __future__ import annotations

from typing import Any

from appliance.config import Settings
from appliance.errors import ConfigError
from appliance.protocols import Backend
from appliance.serving._embedded import EmbeddedBackend
from appliance.serving._published import read_tgi_list, tgi_list_path, vllm_list_path
from appliance.serving._tgi import PublishedList, TGIBackend
from appliance.serving._vllm import VLLMBackend


def open_backend(settings: Settings) -> Backend:
    """The configured backend client (no network traffic until the first call)."""
    cfg = settings.serving
    common: dict[str, Any] = {
        "timeout_s": cfg.timeout_s,
        "connect_timeout_s": cfg.connect_timeout_s,
        "max_connections": cfg.max_concurrent,
        "retries": cfg.connect_retries,
    }
    if cfg.backend == "embedded":
        return EmbeddedBackend(cfg.url, **common)
    if cfg.backend == "tgi":
        published = PublishedList(tgi_list_path(settings.serving_dir), read_tgi_list)
        return TGIBackend(cfg.url, published=published, **common)
    if cfg.backend == "vllm":
        return VLLMBackend(
            cfg.url,
            published_file=vllm_list_path(settings.serving_dir),
            base_model_name=cfg.vllm_base_model_name,
            allow_runtime_updates=cfg.allow_runtime_lora_updates,
            **common,
        )
    raise ConfigError(f"unknown serving backend {cfg.backend!r}; valid: embedded, tgi, vllm")
