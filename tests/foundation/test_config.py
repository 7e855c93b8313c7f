"""Settings: TOML file + APPLIANCE_* environment, one data directory, secrets redacted."""

from __future__ import annotations

import json
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


def _sections() -> list[tuple[str, ...]]:
    """The path of every settings section (nested models), found from the models, not listed by hand."""
    from pydantic import BaseModel

    from appliance.config import Settings

    found: list[tuple[str, ...]] = []

    def walk(model: type[BaseModel], path: tuple[str, ...]) -> None:
        for name, field in model.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                found.append((*path, name))
                walk(field.annotation, (*path, name))

    walk(Settings, ())
    return found


def test_every_section_refuses_unknown_keys_by_itself() -> None:
    """Every nested settings model forbids extra keys (so no source, file, variable or keyword, can slip one in)."""
    from appliance.config import Settings

    sections = _sections()
    assert {s[0] for s in sections} >= {"keys", "registry", "audit", "serving", "gateway", "training", "intake"}
    for section in sections:
        model = Settings
        for name in section:
            model = model.model_fields[name].annotation  # type: ignore[assignment]
        assert model.model_config.get("extra") == "forbid", section
    with pytest.raises(ConfigError, match=r"gateway\.secure_cookie"):
        load_settings(gateway={"secure_cookie": True})


@pytest.mark.parametrize("section", ["keys", "registry", "audit", "serving", "gateway", "training", "intake"])
def test_unknown_key_in_a_toml_section_names_file_section_and_key(tmp_path: Path, section: str) -> None:
    """An unknown key in any section of appliance.toml is refused, naming the file, the section and the key."""
    toml = tmp_path / "appliance.toml"
    toml.write_text(f"[{section}]\nnot_a_setting_xq = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_settings(toml)
    assert str(toml) in str(refused.value)
    assert f'section [{section}] has no key "not_a_setting_xq"' in str(refused.value)


def test_misspelt_keys_are_refused_with_the_nearest_known_key(tmp_path: Path) -> None:
    """A misspelt control is never dropped: every problem of the file is listed, each with the nearest known key."""
    toml = tmp_path / "appliance.toml"
    toml.write_text(
        'enviroment = "production"\n[gateway]\nsecure_cookie = true\nsecure_cookies = false\n'
        "[serving]\nmax_batch = 4\n[gatway]\nport = 1\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as refused:
        load_settings(toml)
    message = str(refused.value)
    assert 'unknown top-level key "enviroment" (did you mean "environment"?)' in message
    assert 'section [gateway] has no key "secure_cookie" (did you mean "secure_cookies"?)' in message
    assert 'section [serving] has no key "max_batch" (did you mean "max_batch_size"?)' in message
    assert "unknown section [gatway] (did you mean [gateway]?)" in message


def test_unknown_key_of_a_subtable_is_refused(tmp_path: Path) -> None:
    """A dotted key below a section is checked too; a mapping setting (audit.extra_fields) keeps its own keys."""
    toml = tmp_path / "appliance.toml"
    toml.write_text('[audit.extra_fields]\nward = "identifier"\n', encoding="utf-8")
    assert load_settings(toml).audit.extra_fields == {"ward": "identifier"}
    toml.write_text("[gateway]\nport = 9000\n[gateway.tls]\ncert = 'x'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r'section \[gateway\] has no key "tls"'):
        load_settings(toml)


def test_unknown_environment_variables_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """APPLIANCE_* variables that name no setting are refused, naming the variable and the nearest known one."""
    monkeypatch.setenv("APPLIANCE_GATEWAY__SECURE_COOKIE", "true")
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert (
        'environment variable APPLIANCE_GATEWAY__SECURE_COOKIE: section [gateway] has no key "secure_cookie" '
        "(did you mean APPLIANCE_GATEWAY__SECURE_COOKIES?)"
    ) in str(refused.value)
    monkeypatch.delenv("APPLIANCE_GATEWAY__SECURE_COOKIE")
    for name, expected in [
        ("APPLIANCE_ENVIROMENT", "did you mean APPLIANCE_ENVIRONMENT?"),
        ("APPLIANCE_SERVNG__URL", "did you mean APPLIANCE_SERVING?"),
        ("APPLIANCE_SERVING__MAX_BATCH", "did you mean APPLIANCE_SERVING__MAX_BATCH_SIZE?"),
        ("appliance_serving__max_batch", "did you mean APPLIANCE_SERVING__MAX_BATCH_SIZE?"),
        ("APPLIANCE_DATA_DIR__X", "APPLIANCE_DATA_DIR is a value, not a section"),
    ]:
        monkeypatch.setenv(name, "1")
        with pytest.raises(ConfigError, match=rf"environment variable {name}: .*{expected}"):
            load_settings()
        monkeypatch.delenv(name)
    monkeypatch.setenv("APPLIANCE_GATEWAY", '{"port": 9000, "secure_cookie": true}')
    with pytest.raises(ConfigError, match=r"APPLIANCE_GATEWAY: no such settings in its JSON: gateway\.secure_cookie"):
        load_settings()


def test_known_keys_and_variables_still_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that sets every setting of every section (at its default), and valid variables, load unchanged."""
    from appliance.config import Settings

    defaults = Settings().model_dump(mode="json", exclude_none=True)
    lines = [f"{k} = {json.dumps(v)}" for k, v in defaults.items() if not isinstance(v, dict)]
    for section, values in defaults.items():
        if isinstance(values, dict):
            lines += [f"[{section}]", *(f"{k} = {json.dumps(v)}" for k, v in values.items() if not isinstance(v, dict))]
    toml = tmp_path / "appliance.toml"
    toml.write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setenv("APPLIANCE_CONFIG", str(toml))
    monkeypatch.setenv("APPLIANCE_GATEWAY__SECURE_COOKIES", "false")
    monkeypatch.setenv("APPLIANCE_AUDIT__EXTRA_FIELDS", '{"ward": "identifier"}')
    loaded = load_settings()
    assert loaded.gateway.secure_cookies is False and loaded.audit.extra_fields == {"ward": "identifier"}
    assert loaded.serving == Settings().serving
