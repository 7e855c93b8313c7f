"""Base-model bootstrap: the directory appears whole, an empty one is filled, one with content is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import ValidationFailed
from appliance.models import bootstrap_tiny, model_hash


def test_bootstrap_fills_an_empty_directory_and_leaves_no_temporary(tmp_path: Path, tiny_model: Path) -> None:
    """Into an existing empty directory: a loadable model directory, the same content hash as the session's tiny
    model (same seed), and nothing else beside it."""
    out = tmp_path / "tiny"
    out.mkdir()
    assert bootstrap_tiny(out) == out
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert model_hash(out) == model_hash(tiny_model)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]


def test_bootstrap_refuses_a_directory_with_content(tmp_path: Path) -> None:
    """A directory that holds anything is refused before any work, and kept as it was."""
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(ValidationFailed, match="not empty"):
        bootstrap_tiny(out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]
