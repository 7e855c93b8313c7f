"""Serving: one Backend interface over the embedded engine, TGI and vLLM.

The engine itself (``appliance.serving.engine``) imports torch and is loaded only by ``appliance serve`` and the
benchmarks; this package's clients import only aiohttp.
"""

from appliance.serving._embedded import EmbeddedBackend
from appliance.serving._factory import open_backend
from appliance.serving._published import AdapterSpec, read_embedded_list, read_tgi_list, read_vllm_list
from appliance.serving._reload import ReplicaReload, reload_replicas, replica_list_path, replicas_of
from appliance.serving._replicas import ReplicaSet, ReplicaStatus, replica_name
from appliance.serving._routing import Routing, begin_routing, current_routing
from appliance.serving._signed import PUBLICATION_KEY, read_signed_list, sign_publication, signature_path
from appliance.serving._tgi import TGIBackend
from appliance.serving._vllm import VLLMBackend

__all__ = [
    "PUBLICATION_KEY",
    "AdapterSpec",
    "EmbeddedBackend",
    "ReplicaReload",
    "ReplicaSet",
    "ReplicaStatus",
    "Routing",
    "TGIBackend",
    "VLLMBackend",
    "begin_routing",
    "current_routing",
    "open_backend",
    "read_embedded_list",
    "read_signed_list",
    "read_tgi_list",
    "read_vllm_list",
    "reload_replicas",
    "replica_list_path",
    "replica_name",
    "replicas_of",
    "sign_publication",
    "signature_path",
]
