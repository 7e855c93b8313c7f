"""The error model: unique stable codes, and both edge mappings (exit code, HTTP status)."""

from __future__ import annotations

import subprocess
import sys

from appliance.errors import ApplianceError, ConfigError, all_error_types


def test_codes_unique_and_mapped() -> None:
    """Every ApplianceError subclass has its own code, an HTTP status and a non-zero exit code."""
    types = all_error_types()
    codes = [t.code for t in types]
    assert len(codes) == len(set(codes)), codes
    for t in types:
        assert 400 <= t.http_status < 600, t
        assert t.exit_code != 0, t
        assert t.__doc__, f"{t.__name__} needs a one-line docstring"


def test_cli_maps_error_to_code_and_exit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A domain error in a command becomes 'CODE: message' on stderr and the error's exit code."""
    missing = tmp_path / "nope.toml"
    proc = subprocess.run(
        [sys.executable, "-m", "appliance", "--config", str(missing), "config", "show"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == ConfigError.exit_code
    assert "CONFIG_INVALID" in proc.stderr
    assert issubclass(ConfigError, ApplianceError)
