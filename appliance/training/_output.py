"""The run's output directory: written in a hidden temporary sibling, checked, then renamed into place.

A reader never sees a half-written adapter: until the final ``rename`` the directory is ``.<name>.partial-<run>``,
and a failure removes it. The adapter is checked before commit: peft's own key names (no Opacus ``_module.``
prefix), every trainable tensor present, every LoRA tensor changed by training (Opacus #820).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance._fs import fsync_dir
from appliance.errors import TrainingFailed, ValidationFailed
from appliance.training._fs import storage_errors

if TYPE_CHECKING:
    import torch

__all__ = ["check_adapter", "check_out_dir", "commit_dir", "partial_dir", "weights_changed"]


def check_out_dir(out: Path) -> None:
    """Refuse an output directory that already has content (a finished adapter is never overwritten)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValidationFailed(f"output directory {out} exists and is not empty")


def partial_dir(out: Path, run_id: str) -> Path:
    """A fresh hidden sibling of ``out`` to write into."""
    tmp = out.parent / f".{out.name}.partial-{run_id}"
    with storage_errors(str(tmp)):
        out.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(mode=0o700)
    return tmp


def commit_dir(tmp: Path, out: Path) -> None:
    """fsync every file of ``tmp`` and rename it to ``out`` (which must be absent or empty)."""
    with storage_errors(str(out)):
        for child in tmp.iterdir():
            fd = os.open(child, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        check_out_dir(out)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
        fsync_dir(out.parent)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write one JSON file (sorted keys, trailing newline)."""
    with storage_errors(str(path)):
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def weights_changed(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of LoRA tensors that training left exactly as they were initialised."""
    import torch

    return [name for name, value in before.items() if torch.equal(value, after[name].detach().cpu())]


def check_adapter(directory: Path, trainable: Mapping[str, torch.Tensor]) -> None:
    """The saved adapter uses peft's key names, holds every trained tensor and matches the model's weights."""
    import torch
    from safetensors.torch import load_file

    path = directory / "adapter_model.safetensors"
    if not path.is_file() or not (directory / "adapter_config.json").is_file():
        raise TrainingFailed("peft did not write adapter_config.json and adapter_model.safetensors")
    saved = load_file(str(path))
    prefixed = [k for k in saved if "_module." in k]
    if prefixed:
        raise TrainingFailed(f"adapter keys carry the Opacus '_module.' prefix (e.g. {prefixed[0]})")
    if not all(k.startswith("base_model.model.") for k in saved):
        raise TrainingFailed("adapter keys do not follow peft's 'base_model.model.' naming")
    # peft drops the adapter name ('.default') from saved keys
    expected = {name.replace(".default.", ".") for name in trainable}
    if set(saved) != expected:
        missing = sorted(expected - set(saved))[:3]
        raise TrainingFailed(f"saved adapter does not hold every trained tensor (missing e.g. {missing})")
    for name, value in trainable.items():
        if not torch.equal(
            saved[name.replace(".default.", ".")], value.detach().cpu().to(saved[name.replace(".default.", ".")].dtype)
        ):
            raise TrainingFailed(f"saved tensor {name} differs from the trained one")
