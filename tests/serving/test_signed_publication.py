"""Signed publications: the engine and the TGI/vLLM launchers check the registry's signature before any fingerprint,
so a serving host that edits both an adapter's weights and the list's digests is refused."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.errors import IntegrityViolation
from appliance.serving._launch import plan_launch
from appliance.serving._published import published_embedded_source, read_published_embedded
from tests.serving.conftest import (
    config_digest,
    pin_publication_keys,
    publication_keys,
    sign_list,
    write_adapter_list,
)

pytestmark = pytest.mark.timeout(300)

Adapters = dict[str, tuple[Path, str]]


def _swap_weights(listing: Path, adapter_id: str, other: tuple[Path, str], out: Path) -> None:
    """What an attacker on the serving host does: other weights under the adapter's id, digests edited to match."""
    data = json.loads(listing.read_text())
    for entry in data["adapters"]:
        if entry["id"] == adapter_id:
            shutil.copytree(Path(entry["path"]), out)
            shutil.copy(other[0] / "adapter_model.safetensors", out / "adapter_model.safetensors")
            entry.update(path=str(out), fingerprint=other[1], config_sha256=config_digest(out))
    listing.write_text(json.dumps(data))  # the signature beside it is left as it was


def test_untampered_signed_list_reads(lora_adapters: Adapters, tmp_path: Path) -> None:
    """A list the registry signed reads with the registry's public key."""
    listing = write_adapter_list(tmp_path / "adapters.json", {"triage-v1": lora_adapters["triage-v1"]})
    [spec] = read_published_embedded(listing, publication_keys())
    assert (spec.id, spec.fingerprint) == ("triage-v1", lora_adapters["triage-v1"][1])


def test_tampered_list_is_refused_before_any_fingerprint(lora_adapters: Adapters, tmp_path: Path) -> None:
    """Weights and digests both edited: the digests agree with the weights, but the signature does not verify."""
    listing = write_adapter_list(tmp_path / "adapters.json", {"triage-v1": lora_adapters["triage-v1"]})
    _swap_weights(listing, "triage-v1", lora_adapters["notes-v1"], tmp_path / "evil")
    with pytest.raises(IntegrityViolation, match="not the one the registry signed"):
        read_published_embedded(listing, publication_keys())


def test_unsigned_or_foreign_signed_list_is_refused(lora_adapters: Adapters, tmp_path: Path) -> None:
    """No signature, or a signature by another key (re-signed on the serving host), is refused."""
    from appliance.keys import LocalKeyService
    from appliance.serving import PUBLICATION_KEY, sign_publication, signature_path

    listing = write_adapter_list(tmp_path / "adapters.json", {"triage-v1": lora_adapters["triage-v1"]}, signed=False)
    with pytest.raises(IntegrityViolation, match="has no signature"):
        read_published_embedded(listing, publication_keys())
    forger = LocalKeyService(tmp_path / "forger-keystore")
    signature_path(listing).write_bytes(
        sign_publication(lambda m: forger.sign(PUBLICATION_KEY, m), "embedded", listing.read_bytes(), {})
    )
    with pytest.raises(IntegrityViolation, match="does not verify"):
        read_published_embedded(listing, publication_keys())


@pytest.mark.parametrize("content", ["", "[]", '{"adapters": []}\n'])
def test_unsigned_empty_list_is_nothing_published(content: str, tmp_path: Path) -> None:
    """The empty list provisioning writes before the first publish serves no adapter; it is not refused."""
    listing = tmp_path / "adapters.json"
    listing.write_text(content)
    assert read_published_embedded(listing, publication_keys()) == []


def test_unsigned_list_naming_an_adapter_is_refused_even_when_tiny(tmp_path: Path) -> None:
    """Only a list that names no adapter passes unsigned: one entry, however small, needs the signature."""
    listing = tmp_path / "adapters.json"
    listing.write_text(json.dumps({"adapters": [{"id": "x", "path": str(tmp_path)}]}))
    with pytest.raises(IntegrityViolation, match="has no signature"):
        read_published_embedded(listing, publication_keys())


def test_engine_refuses_a_tampered_list_at_start(
    tiny_model: Path, lora_adapters: Adapters, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`appliance serve --adapters LIST` stops with IntegrityViolation and never serves; the signed list serves."""
    import uvicorn
    from typer.testing import CliRunner

    from appliance.cli import app

    served: list[int] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: served.append(1))
    monkeypatch.setenv("APPLIANCE_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("APPLIANCE_SERVING__PUBLICATION_PUBLIC_KEYS", str(pin_publication_keys(tmp_path / "pub.json")))
    listing = write_adapter_list(tmp_path / "adapters.json", {"triage-v1": lora_adapters["triage-v1"]})
    serve = ["serve", "--base", str(tiny_model), "--adapters", str(listing), "--threads", "1"]
    result = CliRunner().invoke(app, serve)
    assert result.exit_code == 0, result.output
    assert served == [1]
    _swap_weights(listing, "triage-v1", lora_adapters["notes-v1"], tmp_path / "evil")
    result = CliRunner().invoke(app, serve)
    assert isinstance(result.exception, IntegrityViolation), result.output  # exit 65 through appliance's main
    assert served == [1]


def test_engine_refuses_a_tampered_list_at_reload(tiny_model: Path, lora_adapters: Adapters, tmp_path: Path) -> None:
    """A reload from a tampered list fails and keeps the adapters loaded as they were."""
    from appliance.serving.engine import Engine

    listing = write_adapter_list(tmp_path / "adapters.json", {"triage-v1": lora_adapters["triage-v1"]})
    source = published_embedded_source(listing, publication_keys)
    engine = Engine.start(tiny_model, source(), device="cpu", adapter_source=source)
    try:
        before = engine.runner.loaded_digests("triage-v1")
        _swap_weights(listing, "triage-v1", lora_adapters["notes-v1"], tmp_path / "evil")
        with pytest.raises(IntegrityViolation):
            asyncio.run(engine.reload())
        assert engine.runner.loaded_digests("triage-v1") == before == (lora_adapters["triage-v1"][1], before[1])
        write_adapter_list(listing, {"triage-v1": lora_adapters["triage-v1"], "notes-v1": lora_adapters["notes-v1"]})
        assert asyncio.run(engine.reload())["adapters"] == ["notes-v1", "triage-v1"]
    finally:
        engine.close()


def _backend_list(target: str, tmp_path: Path, adapters: dict[str, tuple[Path, str]]) -> Path:
    """A TGI env file or vLLM JSON list with its signature, as the registry writes them."""
    path = tmp_path / target / ("lora_adapters.env" if target == "tgi" else "lora_modules.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    if target == "tgi":
        path.write_text("LORA_ADAPTERS=" + ",".join(f"{i}={p}" for i, (p, _) in adapters.items()) + "\n")
    else:
        modules = [{"name": i, "path": str(p), "base_model_name": "/models/base"} for i, (p, _) in adapters.items()]
        path.write_text(json.dumps(modules))
    digests = {
        i: {"fingerprint": f, "config_sha256": config_digest(p), "path": str(p)} for i, (p, f) in adapters.items()
    }
    sign_list(path, target, digests)
    return path


@pytest.mark.parametrize("target", ["tgi", "vllm"])
def test_launchers_start_only_a_signed_untampered_list(target: str, lora_adapters: Adapters, tmp_path: Path) -> None:
    """The TGI/vLLM launcher passes the adapters on when the list verifies; refuses a list edited with the weights
    and a copy whose weights were swapped under the signed digests."""
    chosen = {"triage-v1": lora_adapters["triage-v1"]}
    path = _backend_list(target, tmp_path, chosen)
    plan = plan_launch(target, path, publication_keys(), ["server"])  # type: ignore[arg-type]
    triage = str(lora_adapters["triage-v1"][0])
    if target == "tgi":
        assert plan.env == {"LORA_ADAPTERS": f"triage-v1={triage}"} and plan.argv == ["server"]
    else:
        assert plan.argv[:3] == ["server", "--enable-lora", "--lora-modules"]
        assert json.loads(plan.argv[3])["path"] == triage

    evil = tmp_path / "evil"
    shutil.copytree(lora_adapters["triage-v1"][0], evil)
    shutil.copy(lora_adapters["notes-v1"][0] / "adapter_model.safetensors", evil / "adapter_model.safetensors")
    text = path.read_text().replace(triage, str(evil))
    path.write_text(text)  # list edited to the swapped copy (a TGI/vLLM list carries no digest of its own)
    with pytest.raises(IntegrityViolation, match="not the one the registry signed"):
        plan_launch(target, path, publication_keys(), ["server"])  # type: ignore[arg-type]

    copy = tmp_path / "copy"
    shutil.copytree(lora_adapters["triage-v1"][0], copy)
    path = _backend_list(target, tmp_path / "again", {"triage-v1": (copy, lora_adapters["triage-v1"][1])})
    shutil.copy(evil / "adapter_model.safetensors", copy / "adapter_model.safetensors")  # list untouched
    with pytest.raises(IntegrityViolation, match=r"adapter_model\.safetensors does not match"):
        plan_launch(target, path, publication_keys(), ["server"])  # type: ignore[arg-type]


@pytest.mark.parametrize("tampered", [False, True])
def test_serve_launch_command_execs_only_after_verifying(
    tampered: bool, lora_adapters: Adapters, tmp_path: Path
) -> None:
    """`appliance serve-launch tgi -- CMD` execs CMD with LORA_ADAPTERS, or exits 65 without running it."""
    path = _backend_list("tgi", tmp_path, {"triage-v1": lora_adapters["triage-v1"]})
    if tampered:
        path.write_text(path.read_text().replace("triage-v1=", "notes-v1="))
    out = tmp_path / "started"
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env["APPLIANCE_DATA_DIR"] = str(tmp_path / "var")
    env["APPLIANCE_SERVING__PUBLICATION_PUBLIC_KEYS"] = str(pin_publication_keys(tmp_path / "pub.json"))
    script = f'printf %s "$LORA_ADAPTERS" > {out}'
    command = [sys.executable, "-m", "appliance", "serve-launch", "tgi", "--list", str(path), "--", "sh", "-c", script]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    if tampered:
        assert done.returncode == 65, done.stderr
        assert "INTEGRITY_VIOLATION" in done.stderr
        assert not out.exists()
    else:
        assert done.returncode == 0, done.stderr
        assert out.read_text() == f"triage-v1={lora_adapters['triage-v1'][0]}"


def test_engine_takes_the_key_from_the_key_service_when_none_is_pinned(
    tiny_model: Path, lora_adapters: Adapters, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make demo`'s path: no pinned key file, so the engine asks the key service (the data dir's keystore, where
    the registry signed); a list signed by any other key is refused."""
    import uvicorn
    from typer.testing import CliRunner

    from appliance.cli import app
    from appliance.keys import LocalKeyService
    from appliance.serving import PUBLICATION_KEY, sign_publication, signature_path

    data_dir = tmp_path / "var"
    registry_keys = LocalKeyService(data_dir / "keystore")
    served: list[int] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: served.append(1))
    monkeypatch.setenv("APPLIANCE_DATA_DIR", str(data_dir))
    monkeypatch.delenv("APPLIANCE_SERVING__PUBLICATION_PUBLIC_KEYS", raising=False)
    listing = write_adapter_list(
        data_dir / "serving" / "embedded" / "adapters.json", {"triage-v1": lora_adapters["triage-v1"]}
    )
    serve = ["serve", "--base", str(tiny_model), "--threads", "1"]  # the list the registry writes in the data dir
    result = CliRunner().invoke(app, serve)  # signed by the test registry's key, not this data dir's key service
    assert isinstance(result.exception, IntegrityViolation) and served == []
    digests = {
        "triage-v1": {
            "fingerprint": lora_adapters["triage-v1"][1],
            "config_sha256": config_digest(lora_adapters["triage-v1"][0]),
            "path": str(lora_adapters["triage-v1"][0]),
        }
    }
    signature_path(listing).write_bytes(
        sign_publication(lambda m: registry_keys.sign(PUBLICATION_KEY, m), "embedded", listing.read_bytes(), digests)
    )
    result = CliRunner().invoke(app, serve)
    assert result.exit_code == 0, result.output
    assert served == [1]
