"""Adapter integrity and reload: fingerprints checked at load, reload without restart (admin route, SIGHUP)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.errors import ConfigError, IntegrityViolation
from appliance.serving import AdapterSpec, read_embedded_list
from tests.fixtures.engines import EngineProcess
from tests.serving.conftest import (
    ServerThread,
    config_digest,
    free_port,
    pin_publication_keys,
    start_engine,
    write_adapter_list,
)

pytestmark = pytest.mark.timeout(300)

Adapters = dict[str, tuple[Path, str]]


def test_start_refuses_an_adapter_whose_fingerprint_differs(tiny_model: Path, lora_adapters: Adapters) -> None:
    """A published fingerprint that does not match the weights stops the engine from starting."""
    from appliance.serving.engine import Engine

    path, fingerprint = lora_adapters["triage-v1"]
    wrong = ("0" if fingerprint[0] != "0" else "1") + fingerprint[1:]
    with pytest.raises(IntegrityViolation, match="triage-v1"):
        Engine.start(tiny_model, [AdapterSpec(id="triage-v1", path=path, fingerprint=wrong)], device="cpu")


def _edited_copy(source: Path, out: Path, **changes: Any) -> Path:
    """A copy of an adapter directory whose adapter_config.json was then edited (weights untouched)."""
    import json
    import shutil

    shutil.copytree(source, out)
    config = json.loads((out / "adapter_config.json").read_text())
    config.update(changes)
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def test_start_refuses_an_adapter_whose_config_was_edited(
    tiny_model: Path, lora_adapters: Adapters, tmp_path: Path
) -> None:
    """Same weights, edited adapter_config.json (scaling): the published config digest no longer matches, the
    start fails; the unedited config loads."""
    from appliance.serving.engine import Engine

    path, fingerprint = lora_adapters["triage-v1"]
    published = config_digest(path)
    edited = _edited_copy(path, tmp_path / "triage-v1", lora_alpha=512)
    spec = AdapterSpec(id="triage-v1", path=edited, fingerprint=fingerprint, config_sha256=published)
    with pytest.raises(IntegrityViolation, match=r"triage-v1.*adapter_config\.json"):
        Engine.start(tiny_model, [spec], device="cpu")
    engine = Engine.start(
        tiny_model, [AdapterSpec("triage-v1", path, fingerprint=fingerprint, config_sha256=published)], device="cpu"
    )
    try:
        assert engine.adapters() == {"triage-v1"}
    finally:
        engine.close()


def test_a_list_without_config_digest_is_refused(lora_adapters: Adapters, tmp_path: Path) -> None:
    """An entry published before config digests were recorded is not loaded unchecked: the list is refused."""
    import json

    path, fingerprint = lora_adapters["triage-v1"]
    listing = tmp_path / "adapters.json"
    entry = {"id": "triage-v1", "name": "triage", "version": 1, "path": str(path), "fingerprint": fingerprint}
    listing.write_text(json.dumps({"adapters": [entry]}))
    with pytest.raises(ConfigError, match=r"no config_sha256.*publish it again"):
        read_embedded_list(listing)


def _models(url: str) -> set[str]:
    data = httpx.get(url + "/v1/models", timeout=30).json()["data"]
    return {m["id"] for m in data if m["parent"] is not None}


@pytest.fixture
def reloadable(tiny_model: Path, lora_adapters: Adapters, tmp_path: Path) -> Iterator[tuple[Any, str, Path]]:
    """An engine started from a list with one adapter, with an admin token, served on loopback."""
    from appliance.serving.engine import create_app

    listing = write_adapter_list(tmp_path / "adapters.json", {"triage-v1": lora_adapters["triage-v1"]})
    engine = start_engine(tiny_model, listing, max_tokens=None)
    with ServerThread(create_app(engine, admin_token="s3cret-admin")) as server:
        yield engine, server.url, listing
    engine.close()


def test_admin_reload_adds_removes_and_checks_fingerprints(reloadable: Any, lora_adapters: Adapters) -> None:
    """POST /admin/reload swaps in the published set; a bad fingerprint changes nothing (409)."""
    _engine, url, listing = reloadable
    auth = {"authorization": "Bearer s3cret-admin"}
    assert _models(url) == {"triage-v1"}
    assert httpx.post(url + "/admin/reload", timeout=30).status_code == 401
    assert httpx.post(url + "/admin/reload", headers={"authorization": "Bearer nope"}, timeout=30).status_code == 401

    write_adapter_list(listing, {"notes-v1": lora_adapters["notes-v1"], "coding-v1": lora_adapters["coding-v1"]})
    answer = httpx.post(url + "/admin/reload", headers=auth, timeout=60)
    assert answer.status_code == 200
    assert answer.json()["added"] == ["coding-v1", "notes-v1"] and answer.json()["removed"] == ["triage-v1"]
    assert _models(url) == {"notes-v1", "coding-v1"}
    gone = httpx.post(url + "/generate", json={"inputs": "x", "parameters": {"adapter_id": "triage-v1"}}, timeout=30)
    assert gone.status_code == 422  # unloaded means refused, not served by the base model

    path, _fingerprint = lora_adapters["triage-v1"]
    tampered = {"triage-v1": (path, "f" * 64), "notes-v1": lora_adapters["notes-v1"]}
    write_adapter_list(listing, tampered)
    refused = httpx.post(url + "/admin/reload", headers=auth, timeout=60)
    assert refused.status_code == 409 and refused.json()["error_type"] == "integrity"
    assert _models(url) == {"notes-v1", "coding-v1"}  # rehearsed first: nothing changed
    ok = httpx.post(url + "/generate", json={"inputs": "x", "parameters": {"adapter_id": "coding-v1"}}, timeout=30)
    assert ok.status_code == 200


def test_reload_checks_adapter_configs(reloadable: Any, lora_adapters: Adapters, tmp_path: Path) -> None:
    """A reload refuses an adapter whose adapter_config.json was edited after publishing (nothing changes); a
    newly published config for the same weights replaces the loaded adapter, it is not kept as it was."""
    engine, url, listing = reloadable
    auth = {"authorization": "Bearer s3cret-admin"}
    path, fingerprint = lora_adapters["notes-v1"]
    published = config_digest(path)
    edited = _edited_copy(path, tmp_path / "notes-v1", lora_alpha=512)
    write_adapter_list(
        listing,
        {"triage-v1": lora_adapters["triage-v1"], "notes-v1": (edited, fingerprint)},
        configs={"notes-v1": published},
    )
    refused = httpx.post(url + "/admin/reload", headers=auth, timeout=60)
    assert refused.status_code == 409 and refused.json()["error_type"] == "integrity"
    assert _models(url) == {"triage-v1"}

    triage, triage_fingerprint = lora_adapters["triage-v1"]
    loaded = engine.runner.loaded_digests("triage-v1")
    assert loaded == (triage_fingerprint, config_digest(triage))
    rescaled = _edited_copy(triage, tmp_path / "triage-v1", lora_alpha=1)
    write_adapter_list(listing, {"triage-v1": (rescaled, triage_fingerprint)})  # published with its new digest
    answer = httpx.post(url + "/admin/reload", headers=auth, timeout=60)
    assert answer.status_code == 200 and answer.json()["replaced"] == ["triage-v1"]
    assert engine.runner.loaded_digests("triage-v1") == (triage_fingerprint, config_digest(rescaled))


@pytest.mark.slow
def test_cli_serve_reloads_on_sighup(tiny_model: Path, lora_adapters: Adapters, tmp_path: Path) -> None:
    """`appliance serve --base --adapters FILE` serves the list and re-reads it on SIGHUP without a restart."""
    listing = write_adapter_list(tmp_path / "adapters.json", {"triage-v1": lora_adapters["triage-v1"]})
    pinned = pin_publication_keys(tmp_path / "registry.pub.json")
    engine = EngineProcess(
        tiny_model,
        tmp_path / "var",
        free_port(),
        adapters=listing,
        env={"APPLIANCE_SERVING__PUBLICATION_PUBLIC_KEYS": str(pinned)},
    )
    url = engine.url
    try:
        engine.start()
        engine.wait_healthy(120)
        assert engine.proc is not None
        assert _models(url) == {"triage-v1"}
        write_adapter_list(listing, {"triage-v1": lora_adapters["triage-v1"], "notes-v1": lora_adapters["notes-v1"]})
        engine.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while _models(url) != {"triage-v1", "notes-v1"}:
            assert time.monotonic() < deadline, "SIGHUP did not reload the adapters"
            time.sleep(0.2)
        assert engine.proc.poll() is None  # same process: reloaded, not restarted
    finally:
        engine.stop()


def test_cli_serve_does_not_take_the_loopback_rule_from_forwarded_headers(
    tiny_model: Path, lora_adapters: Adapters, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an admin token /admin/reload is for loopback peers only: X-Forwarded-For must not make one."""
    import asyncio

    import uvicorn
    from typer.testing import CliRunner

    from appliance.cli import app

    listing = write_adapter_list(tmp_path / "adapters.json", {"triage-v1": lora_adapters["triage-v1"]})
    monkeypatch.setenv("APPLIANCE_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("APPLIANCE_SERVING__PUBLICATION_PUBLIC_KEYS", str(pin_publication_keys(tmp_path / "pub.json")))
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")  # common in container images; uvicorn reads it
    answers: list[int] = []

    async def from_a_remote_peer(asgi: Any) -> int:
        transport = httpx.ASGITransport(app=asgi, client=("10.20.30.40", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://engine") as client:
            reply = await client.post("/admin/reload", headers={"x-forwarded-for": "127.0.0.1"}, timeout=60)
        return reply.status_code

    def run(asgi: Any, **kwargs: Any) -> None:  # instead of serving: one request, as uvicorn would pass it on
        config = uvicorn.Config(asgi, **kwargs)
        config.load()
        answers.append(asyncio.run(from_a_remote_peer(config.loaded_app)))

    monkeypatch.setattr(uvicorn, "run", run)
    result = CliRunner().invoke(app, ["serve", "--base", str(tiny_model), "--adapters", str(listing)])
    assert result.exit_code == 0, result.output
    assert answers == [403]


def test_a_reload_that_fails_while_applying_changes_nothing(
    tiny_model: Path, lora_adapters: Adapters, tmp_path: Path
) -> None:
    """An adapter that passes the rehearsal (fingerprint) but does not fit the model leaves the set as it was."""
    import asyncio
    import json
    import shutil

    from appliance.contracts import GenerateParameters
    from appliance.errors import ApplianceError

    misfit = tmp_path / "misfit-v1"
    shutil.copytree(lora_adapters["coding-v1"][0], misfit)
    config = json.loads((misfit / "adapter_config.json").read_text())
    config["target_modules"] = ["k_proj"]  # the weights are for q_proj/v_proj: their fingerprint still matches
    (misfit / "adapter_config.json").write_text(json.dumps(config))
    misfit_fingerprint = lora_adapters["coding-v1"][1]
    before = {a: lora_adapters[a] for a in ("triage-v1", "notes-v1")}
    listing = write_adapter_list(tmp_path / "adapters.json", before)
    engine = start_engine(tiny_model, listing, max_tokens=None)

    async def tokens(adapter: str) -> list[int]:
        job = await engine.prepare(
            "the patient was", GenerateParameters(max_new_tokens=6), stream=False, adapter=adapter
        )
        return list((await engine.generate(job)).token_ids)

    async def scenario() -> None:
        served = await tokens("notes-v1")
        write_adapter_list(listing, {"triage-v1": before["triage-v1"], "misfit-v1": (misfit, misfit_fingerprint)})
        with pytest.raises(ApplianceError, match="misfit-v1"):
            await engine.reload()
        assert engine.adapters() == {"triage-v1", "notes-v1"} == engine.runner.adapter_ids()
        assert await tokens("notes-v1") == served  # still loaded, with its own weights

    try:
        asyncio.run(scenario())
    finally:
        engine.close()


def test_validation_workers_is_a_setting_and_a_serve_option(
    tiny_model: Path, lora_adapters: Adapters, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``[serving] validation_workers`` (default 2, at least 1) and ``serve --validation-workers`` reach /info."""
    import asyncio

    import pydantic
    import uvicorn
    from typer.testing import CliRunner

    from appliance.cli import app
    from appliance.config import ServingSettings
    from appliance.serving.engine import Engine

    assert ServingSettings().validation_workers == 2
    with pytest.raises(pydantic.ValidationError):
        ServingSettings(validation_workers=0)
    with pytest.raises(ValueError, match="validation_workers"):
        Engine.start(tiny_model, [], device="cpu", validation_workers=0)

    listing = write_adapter_list(tmp_path / "adapters.json", {"triage-v1": lora_adapters["triage-v1"]})
    monkeypatch.setenv("APPLIANCE_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("APPLIANCE_SERVING__PUBLICATION_PUBLIC_KEYS", str(pin_publication_keys(tmp_path / "pub.json")))
    reported: list[int] = []

    async def info(asgi: Any) -> int:
        transport = httpx.ASGITransport(app=asgi, client=("127.0.0.1", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://engine") as client:
            return int((await client.get("/info")).json()["validation_workers"])

    def run(asgi: Any, **kwargs: Any) -> None:  # instead of serving: ask /info once
        reported.append(asyncio.run(info(asgi)))

    monkeypatch.setattr(uvicorn, "run", run)
    serve = ["serve", "--base", str(tiny_model), "--adapters", str(listing)]
    monkeypatch.setenv("APPLIANCE_SERVING__VALIDATION_WORKERS", "3")
    assert CliRunner().invoke(app, serve).exit_code == 0
    assert CliRunner().invoke(app, [*serve, "--validation-workers", "1"]).exit_code == 0
    assert reported == [3, 1]
    refused = CliRunner().invoke(app, [*serve, "--validation-workers", "0"])
    assert refused.exit_code == 2, refused.output  # a usage error, before any model is loaded
    monkeypatch.setenv("APPLIANCE_SERVING__VALIDATION_WORKERS", "0")
    assert CliRunner().invoke(app, serve).exit_code != 0
    assert reported == [3, 1]
