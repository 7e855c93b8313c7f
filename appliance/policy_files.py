"""Reading the YAML policy files under ``policies/``: one way to report where a file is wrong.

Each stage validates its own policy model; this module only reads the file, parses the YAML and words the
errors (file, line, field) so every policy loader fails the same way with a ConfigError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from appliance.errors import ConfigError


def parse_yaml_mapping(text: str, source: str) -> dict[str, Any]:
    """The top-level mapping of a YAML document; invalid YAML names the line, anything else is refused."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{where}: invalid YAML: {getattr(exc, 'problem', None) or 'parse error'}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    return data


def read_yaml_mapping(path: Path, label: str, *, missing_hint: str = "") -> dict[str, Any]:
    """Read and parse a policy file; a missing, unreadable or malformed file is a ConfigError naming it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{label} not found: {path}{missing_hint}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{label} unreadable: {path}: {exc}") from exc
    return parse_yaml_mapping(text, f"{label} {path}")


def validation_problems(exc: ValidationError, prefix: str = "") -> str:
    """Every problem of a pydantic validation error as 'field.path: message', joined by '; '."""
    return "; ".join(f"{prefix}{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors())
