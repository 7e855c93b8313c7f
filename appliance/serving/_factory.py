"""``open_backend(settings)``: a ReplicaSet over the servers the settings name (``serving.replicas``, or
``serving.url`` as the one replica), each client with the adapter list the registry published to it."""

from __future__ import annotations

from typing import Any

from appliance.config import ReplicaSettings, Settings
from appliance.errors import ConfigError
from appliance.serving._embedded import EmbeddedBackend
from appliance.serving._published import read_tgi_list, tgi_list_path, vllm_list_path
from appliance.serving._replicas import Replica, ReplicaSet, replica_name
from appliance.serving._tgi import PublishedList, TGIBackend
from appliance.serving._vllm import VLLMBackend


def open_client(settings: Settings, replica: ReplicaSettings) -> TGIBackend:
    """The client for one server (no network traffic until the first call)."""
    cfg = settings.serving
    kind = replica.kind or cfg.backend
    common: dict[str, Any] = {
        "timeout_s": cfg.timeout_s,
        "connect_timeout_s": cfg.connect_timeout_s,
        "max_connections": cfg.max_concurrent,
        "retries": cfg.connect_retries,
    }
    if kind == "embedded":
        return EmbeddedBackend(replica.url, **common)
    if kind == "tgi":
        published = PublishedList(tgi_list_path(settings.serving_dir), read_tgi_list)
        return TGIBackend(replica.url, published=published, **common)
    if kind == "vllm":
        return VLLMBackend(
            replica.url,
            published_file=vllm_list_path(settings.serving_dir),
            base_model_name=cfg.vllm_base_model_name,
            allow_runtime_updates=cfg.allow_runtime_lora_updates,
            **common,
        )
    raise ConfigError(f"unknown serving backend {kind!r}; valid: embedded, tgi, vllm")


def open_backend(settings: Settings) -> ReplicaSet:
    """The configured replicas behind one Backend (no network traffic until the first call)."""
    cfg = settings.serving
    replicas = [
        Replica(name=r.name or replica_name(r.url), client=open_client(settings, r), weight=r.weight)
        for r in cfg.replica_list()
    ]
    try:
        return ReplicaSet(
            replicas,
            probe_initial_s=cfg.replica_probe_initial_s,
            probe_max_s=cfg.replica_probe_max_s,
            refresh_s=cfg.replica_refresh_s,
            probe_timeout_s=cfg.connect_timeout_s,
        )
    except ValueError as exc:
        raise ConfigError(f"serving.replicas: {exc}") from exc
