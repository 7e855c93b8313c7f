"""The embedded engine: a base model with several LoRA adapters behind TGI's HTTP API (imports torch)."""

from appliance.contracts import GenerateParameters
from appliance.serving.engine._app import create_app
from appliance.serving.engine._engine import Engine, Job
from appliance.serving.engine._local import LocalBackend
from appliance.serving.engine._model import ModelRunner, prepare_adapter
from appliance.serving.engine._protocol import Limits
from appliance.serving.engine._scheduler import Finished, TokenOut

__all__ = [
    "Engine",
    "Finished",
    "GenerateParameters",
    "Job",
    "Limits",
    "LocalBackend",
    "ModelRunner",
    "TokenOut",
    "create_app",
    "prepare_adapter",
]
