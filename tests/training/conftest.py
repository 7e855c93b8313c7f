"""Fixtures for the training tests: prepared datasets in the contracts.md format, policies, settings."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.config import Settings, load_settings
from appliance.contracts import subject_digest

SALT = "5a17" * 8
_WORDS = ["fever", "cough", "rash", "headache", "fatigue", "nausea", "chest pain", "dizziness"]
_ACTIONS = ["follow-up", "assessment", "review", "observation", "discharge planning"]


def write_prepared(path: Path, *, train: int = 48, evals: int = 8, subjects: int = 12, seed: int = 0) -> Path:
    """A prepared dataset exactly as contracts.md describes it (what `appliance data prepare` writes)."""
    rng = random.Random(seed)
    path.mkdir(parents=True, exist_ok=True)
    digests = [subject_digest(bytes.fromhex(SALT), f"P{i:04d}") for i in range(subjects)]

    def record(i: int) -> dict[str, str]:
        return {
            "instruction": f"Summarise visit {i} for a patient presenting with {rng.choice(_WORDS)}.",
            "response": f"Seen for {rng.choice(_ACTIONS)}; {rng.choice(_WORDS)} improved by day {i % 7 + 1}.",
            "subject": digests[i % subjects],
        }

    train_bytes = "".join(json.dumps(record(i)) + "\n" for i in range(train)).encode()
    eval_bytes = "".join(json.dumps(record(train + i)) + "\n" for i in range(evals)).encode()
    (path / "train.jsonl").write_bytes(train_bytes)
    (path / "eval.jsonl").write_bytes(eval_bytes)
    manifest = {
        "format_version": 1,
        "fingerprint": hashlib.sha256(train_bytes + eval_bytes).hexdigest(),
        "counts": {"input": train + evals, "invalid": 0, "exact_duplicates": 0, "near_duplicates": 0},
        "scrub_report": {},
        "subjects": {"salt": SALT, "digests": digests},
        "source": {"sha256": hashlib.sha256(train_bytes).hexdigest(), "records": train + evals},
        "created_at": "2026-11-23T00:00:00+00:00",
    }
    manifest["counts"] |= {"train": train, "eval": evals}
    (path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return path


def fingerprint_of(path: Path) -> str:
    """The fingerprint recorded in a prepared dataset's manifest."""
    return str(json.loads((path / "manifest.json").read_text())["fingerprint"])


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    """A small prepared dataset (48 train records of 12 subjects, 8 eval records)."""
    return write_prepared(tmp_path / "prepared")


@pytest.fixture
def make_policy(tmp_path: Path) -> Callable[..., Path]:
    """Write a privacy policy (the repository's, with overrides) into a policies directory; returns the dir."""
    repo = Path(__file__).resolve().parents[2] / "policies" / "privacy.yaml"

    def _make(**overrides: Any) -> Path:
        data = yaml.safe_load(repo.read_text())
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        directory = tmp_path / "policies"
        directory.mkdir(exist_ok=True)
        (directory / "privacy.yaml").write_text(yaml.safe_dump(data))
        return directory

    return _make


@pytest.fixture
def train_settings(data_dir: Path, make_policy: Callable[..., Path]) -> Settings:
    """Settings on a fresh data directory with the repository's privacy policy."""
    return load_settings(data_dir=data_dir, policies_dir=make_policy())


def tiny_options(prepared: Path, base: Path, out: Path, **overrides: Any) -> dict[str, Any]:
    """Options for a run on the tiny model that takes a few seconds."""
    options: dict[str, Any] = {
        "dataset": prepared,
        "base": base,
        "out": out,
        "epsilon": 4.0,
        "steps": 4,
        "batch_size": 8,
        "physical_batch_size": 4,
        "max_length": 48,
        "lora_r": 4,
        "lora_alpha": 8,
        "checkpoint_every": 50,
        "canary_candidates": 16,
        "device": "cpu",
    }
    options.update(overrides)
    return options
