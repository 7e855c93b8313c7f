"""One peft model scored twice: with its adapter, and as the base (the same model with its adapter disabled)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["adapter_and_base"]

T = TypeVar("T")


def adapter_and_base(model: Any, score: Callable[[], T]) -> tuple[T, T]:
    """``score()`` in eval mode with the adapter, then with it disabled; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        adapter = score()
        with model.disable_adapter():
            base = score()
    finally:
        model.train(was_training)
    return adapter, base
