"""Evaluation fixtures: the serving tests' tiny adapters and the embedded engine on a loopback port."""

from tests.serving.conftest import adapter_list, engine, engine_url, lora_adapters  # noqa: F401
