"""Settings: TOML file + APPLIANCE_* environment, one data directory, secrets redacted."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import load_settings
from appliance.errors import ConfigError


def test_toml_and_env_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Environment variables override the TOML file, which overrides the defaults."""
    toml = tmp_path / "appliance.toml"
    toml.write_text('data_dir = "/srv/a"\n[keys]\nbackend = "vault"\nvault_token = "s3cr3t"\n', encoding="utf-8")
    monkeypatch.setenv("APPLIANCE_DATA_DIR", "/srv/b")
    s = load_settings(toml)
    assert s.data_dir == Path("/srv/b")
    assert s.keys.backend == "vault"
    assert s.audit_dir == Path("/srv/b/audit")
    assert "s3cr3t" not in str(s.redacted())


def test_invalid_value_is_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """An invalid variable is a ConfigError that names the field."""
    monkeypatch.setenv("APPLIANCE_KEYS__BACKEND", "plaintext")
    with pytest.raises(ConfigError, match=r"keys\.backend"):
        load_settings()
