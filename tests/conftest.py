"""Shared fixtures. Stage-specific servers (OpenBao, PostgreSQL, Redis, the OIDC provider) live in tests/fixtures/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import Settings, load_settings

pytest_plugins = [
    "tests.fixtures.openbao",
    "tests.fixtures.postgres",
    "tests.fixtures.oidc",
    "tests.fixtures.redisd",
    "tests.fixtures.cli",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts"  # screenshots and reports kept by tests


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's APPLIANCE_* variables or an appliance.toml in the working directory."""
    for name in list(os.environ):
        if name.startswith("APPLIANCE_"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An empty data directory for one test."""
    path = tmp_path / "var"
    path.mkdir()
    return path


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    """Development settings rooted at a fresh data directory, policies from the repository."""
    return load_settings(data_dir=data_dir, policies_dir=REPO_ROOT / "policies")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with its BPE tokenizer, built once per test session (read-only for tests)."""
    from appliance.models import bootstrap_tiny

    return bootstrap_tiny(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def artifacts_dir() -> Iterator[Path]:
    """Where tests keep artifacts a person may want to look at (screenshots, reports)."""
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    yield ARTIFACTS_DIR
