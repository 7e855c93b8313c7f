"""Monitoring fixtures: the registry's run-directory factory (real peft LoRAs on the tiny model)."""

from tests.registry.conftest import lora_template, make_run  # noqa: F401
