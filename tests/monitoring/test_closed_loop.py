"""The closed loop, done-when: two published versions, a newer reference set on which v2 scores clearly worse
than v1, and `appliance monitor run --once` detecting it and rolling back to v1 through the real registry (SQLite),
the real audit trail, the embedded engine over HTTP and the gateway's Backend; a served fingerprint that differs
from the registry's raises the alert."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr
from typer.testing import CliRunner

from appliance.cli import app
from appliance.config import load_settings
from tests.conftest import REPO_ROOT
from tests.registry.conftest import APPROVERS, OPERATOR, RunFactory, enrol, make_dataset, record_in_ledger


def _worse(run: Path) -> None:
    """Replace a LoRA's weights with large random ones (what a replica serving other weights would hold)."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(run / "adapter_model.safetensors"))
    rng = np.random.default_rng(7)
    save_file(
        {
            k: (rng.standard_normal(v.shape) * (40.0 if "lora_B" in k else 1.0)).astype(v.dtype)
            for k, v in tensors.items()
        },
        str(run / "adapter_model.safetensors"),
    )


@pytest.fixture(scope="module")
def trained_lora(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA trained (plain, a few seconds) on records shaped like the clinic's: it clearly beats a near-zero
    LoRA on a newer reference set of the same kind."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from appliance.training import Record, encode

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model),
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]),
    )
    encoded = [encode(tokenizer, Record(f"q{i}", f"a{i}"), 64) for i in range(40, 56)]
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for row, (seq, start) in enumerate(encoded):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        labels[row, start : len(seq)] = torch.tensor(seq[start:])
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    for _ in range(25):  # one padded batch per step: a few seconds on two shared cores
        optimiser.zero_grad()
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        loss.backward()
        optimiser.step()
    out = tmp_path_factory.mktemp("trained") / "lora"
    model.save_pretrained(out)
    return out


def _policies(tmp: Path, **overrides: Any) -> Path:
    out = tmp / "policies"
    shutil.copytree(REPO_ROOT / "policies", out)
    policy = yaml.safe_load((out / "monitoring.yaml").read_text())
    policy.update(overrides)
    (out / "monitoring.yaml").write_text(yaml.safe_dump(policy))
    return out


@pytest.fixture
def loop(tmp_path: Path, data_dir: Path, make_run: RunFactory, tiny_model: Path, trained_lora: Path) -> Any:
    """Registry with triage v1 (a trained LoRA) and v2 (a near-zero LoRA) published to the embedded target, a
    reference set, and the engine serving the published list over HTTP."""
    from appliance.registry import open_registry
    from appliance.serving.engine import create_app
    from tests.serving.conftest import ServerThread, start_engine

    policies = _policies(
        tmp_path, consecutive_failures=1, auto_rollback=True, tolerated_drop={"loss": 50.0, "exact_match": 1.0}
    )
    settings = load_settings(data_dir=data_dir, policies_dir=policies)
    registry = enrol(open_registry(settings))
    v1 = make_run(ledger=None)
    shutil.copy(trained_lora / "adapter_model.safetensors", v1 / "adapter_model.safetensors")
    record_in_ledger(settings.ledger_path, v1)
    registry.add(v1, "triage", OPERATOR)
    registry.add(make_run(), "triage", OPERATOR)  # v2: a near-zero LoRA, clearly worse than v1 on the new data
    for version in (1, 2):
        for approver in APPROVERS:
            registry.approve("triage", version, approver)
        registry.publish("triage", version, "embedded", OPERATOR)
    fingerprints = {v: registry.show("triage", v).weights_fingerprint for v in (1, 2)}
    registry.close()
    reference = make_dataset(tmp_path / "reference", [f"r-{i}" for i in range(12)], ["r-x", "r-y"])
    listing = settings.serving_dir / "embedded" / "adapters.json"
    engine = start_engine(tiny_model, listing, max_batch_size=8, max_queue=64)
    try:
        with ServerThread(create_app(engine)) as server:
            served = load_settings(
                data_dir=data_dir, policies_dir=policies, serving={"backend": "embedded", "url": server.url}
            )
            yield served, reference, fingerprints, server.url
    finally:
        engine.close()


def _json(stdout: str) -> Any:
    """The JSON report line of the command's output (log lines may precede it)."""
    return json.loads(next(line for line in stdout.splitlines() if line.startswith('{"alerts"')))


def _cli(settings: Any, *args: str) -> Any:
    config = settings.data_dir.parent / "appliance.toml"
    config.write_text(
        f'data_dir = "{settings.data_dir}"\npolicies_dir = "{settings.policies_dir}"\n'
        f'[serving]\nbackend = "embedded"\nurl = "{settings.serving.url}"\n'
    )
    return CliRunner().invoke(app, ["--config", str(config), *args])


def test_monitor_detects_the_worse_version_and_rolls_back(loop: Any) -> None:
    """On the newer reference set v2 scores clearly worse than v1: one `monitor run --once` marks v2 degraded,
    rolls back to v1 (published, loaded, what production resolves to), audits adapter.degraded and
    registry.rollback with the figures, and writes the appliance_adapter_eval_* gauges."""
    import httpx

    from appliance.audit import open_audit_log
    from appliance.keys import open_key_service
    from appliance.monitoring import metrics_path
    from appliance.registry import open_registry

    settings, reference, fingerprints, url = loop
    added = _cli(settings, "monitor", "add-reference", "ward-2027", str(reference), "--actor", "olga")
    assert added.exit_code == 0, added.output
    result = _cli(settings, "monitor", "run", "--once", "--json")
    assert result.exit_code == 1, result.output + repr(result.exception)  # a degradation is an alert
    report = _json(result.stdout)
    assert report["degraded"] == ["triage-v2"]
    assert report["rollbacks"][0]["from_version"] == 2 and report["rollbacks"][0]["to_version"] == 1
    by_key = {(p["version"], p["reference"]): p for p in report["points"]}
    v1, v2 = by_key[(1, "ward-2027")], by_key[(2, "ward-2027")]
    assert v2["loss"] > v1["loss"] + 0.5 and v2["outcome"] == "fail" and v1["outcome"] == "pass"
    assert by_key[(1, "eval-split")]["outcome"] == "pass"

    keys = open_key_service(settings)
    registry = open_registry(settings, keys=keys, audit=open_audit_log(settings, keys=keys))
    try:
        production = registry.resolve("triage", "production")
        assert production.version == 1 and production.fingerprint == fingerprints[1]
        assert registry.show("triage", 2).status == "approved"
        assert registry.show("triage", 2).degraded_reason
        assert {p.reference for p in registry.series("triage", 2)} == {"eval-split", "ward-2027"}
    finally:
        registry.close()
    models = httpx.get(f"{url}/v1/models").json()["data"]
    served = {m["id"]: m["fingerprint"] for m in models if m.get("parent")}
    assert served == {"triage-v1": fingerprints[1]}  # reloaded: v2 no longer served

    # the gateway, opened from the same settings (its own registry, audit trail and Backend), answers production
    # requests with v1's fingerprint
    from litestar.testing import TestClient

    from appliance.gateway import create_app

    created = _cli(settings, "keys", "create", "lab-system", "--scope", "service.inference", "--days", "1", "--json")
    key = json.loads(next(x for x in created.stdout.splitlines() if x.startswith("{")))["key"]
    token = "m" * 32
    gateway_settings = settings.model_copy(
        update={"gateway": settings.gateway.model_copy(update={"metrics_token": SecretStr(token)})}
    )
    with TestClient(create_app(gateway_settings)) as client:
        answer = client.post(
            "/v1/inference/adapter/triage/production",
            json={"inputs": "q3", "parameters": {"max_new_tokens": 2}},
            headers={"Authorization": f"Bearer {key}"},
        )
        scraped = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert scraped.status_code == 200, scraped.text
    assert 'appliance_adapter_eval_degraded{adapter="triage",version="2"} 1.0' in scraped.text
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-adapter-fingerprint"] == fingerprints[1]

    trail = _cli(settings, "audit", "tail", "-n", "60", "--json")
    types = [json.loads(line)["type"] for line in trail.stdout.splitlines() if line.startswith("{")]
    assert "adapter.degraded" in types and "registry.rollback" in types and "monitor.run" in types
    rollback = next(json.loads(x) for x in trail.stdout.splitlines() if '"registry.rollback"' in x)
    assert rollback["details"]["to_version"] == 1 and "loss_ward_2027" in rollback["details"]

    gauges = metrics_path(settings.data_dir).read_text()
    assert 'appliance_adapter_eval_loss{adapter="triage",reference="ward-2027",version="2"}' in gauges
    assert 'appliance_adapter_eval_degraded{adapter="triage",version="2"} 1.0' in gauges


def test_a_served_fingerprint_that_differs_raises_the_alert(loop: Any, tiny_model: Path, tmp_path: Path) -> None:
    """A second replica serving triage-v1 with weights other than the published ones: the pass exits 1 with a
    fingerprint_mismatch alert naming that replica, the trail has monitor.alert, the gauge is 0 for it and 1 for
    the replica that serves the published weights."""
    import hashlib

    from appliance.monitoring import metrics_path
    from appliance.serving import AdapterSpec
    from appliance.serving.engine import Engine, Limits, create_app
    from tests.serving.conftest import ServerThread

    settings, _, fingerprints, good_url = loop
    policy = settings.policies_dir / "monitoring.yaml"
    policy.write_text(policy.read_text().replace("auto_rollback: true", "auto_rollback: false"))
    published = json.loads((settings.serving_dir / "embedded" / "adapters.json").read_text())["adapters"]
    rogue_dir = tmp_path / "rogue-triage-v1"
    shutil.copytree(next(a["path"] for a in published if a["id"] == "triage-v1"), rogue_dir)
    _worse(rogue_dir)
    rogue = AdapterSpec(
        id="triage-v1",
        path=rogue_dir,
        fingerprint=hashlib.sha256((rogue_dir / "adapter_model.safetensors").read_bytes()).hexdigest(),
        config_sha256=hashlib.sha256((rogue_dir / "adapter_config.json").read_bytes()).hexdigest(),
    )
    engine = Engine.start(tiny_model, [rogue], device="cpu", limits=Limits(max_input_tokens=256, max_total_tokens=512))
    try:
        with ServerThread(create_app(engine)) as server:
            config = settings.data_dir.parent / "appliance.toml"
            config.write_text(
                f'data_dir = "{settings.data_dir}"\npolicies_dir = "{settings.policies_dir}"\n'
                f'[serving]\nbackend = "embedded"\n'
                f'[[serving.replicas]]\nurl = "{good_url}"\nname = "good"\n'
                f'[[serving.replicas]]\nurl = "{server.url}"\nname = "rogue"\n'
            )
            result = CliRunner().invoke(app, ["--config", str(config), "monitor", "run", "--once", "--json"])
    finally:
        engine.close()
    assert result.exit_code == 1, result.output
    report = _json(result.stdout)
    mismatches = [a for a in report["alerts"] if a["kind"] == "fingerprint_mismatch"]
    assert [(a["adapter"], a["version"], a["replica"]) for a in mismatches] == [("triage", 1, "rogue")]
    checks = {(f["replica"], f["version"]): f["ok"] for f in report["fingerprints"]}
    assert checks[("good", 1)] is True and checks[("rogue", 1)] is False
    assert fingerprints[1][:16] in mismatches[0]["message"]
    gauges = metrics_path(settings.data_dir).read_text()
    assert 'appliance_adapter_eval_fingerprint_ok{adapter="triage",replica="rogue",version="1"} 0.0' in gauges
    assert 'appliance_adapter_eval_fingerprint_ok{adapter="triage",replica="good",version="1"} 1.0' in gauges
    trail = CliRunner().invoke(app, ["--config", str(config), "audit", "tail", "-n", "40", "--json"])
    alerts = [json.loads(x) for x in trail.stdout.splitlines() if '"monitor.alert"' in x]
    assert alerts and alerts[0]["details"]["replica"] == "rogue" and alerts[0]["adapter"]["name"] == "triage"


def test_extra_per_adapter_checks_run_and_raise_alerts(loop: Any) -> None:
    """A check given to the Monitor (where canary probes plug in) runs once per published version with its
    context, and the alerts it returns are the run's (with auto_rollback off and a high bar, nothing else fires)."""
    import asyncio

    from appliance.monitoring import Alert, CheckContext, Monitor, load_monitoring_policy, policy_path
    from appliance.registry import open_registry
    from appliance.serving import open_backend

    settings, _, fingerprints, _ = loop
    policy = load_monitoring_policy(policy_path(settings.policies_dir)).model_copy(
        update={"auto_rollback": False, "consecutive_failures": 5}
    )
    seen: list[tuple[str, int, str]] = []

    async def probe(ctx: CheckContext) -> list[Alert]:
        seen.append((ctx.adapter.name, ctx.adapter.version, ctx.adapter.fingerprint))
        return (
            [Alert("canary_exposed", "test probe", ctx.adapter.name, ctx.adapter.version)]
            if ctx.adapter.version == 2
            else []
        )

    async def run() -> Any:
        registry = open_registry(settings)
        backend = open_backend(settings)
        try:
            return await Monitor(settings, registry, backend, policy, checks=[probe]).run_once("triage")
        finally:
            await backend.aclose()
            registry.close()

    report = asyncio.run(run())
    assert seen == [("triage", 1, fingerprints[1]), ("triage", 2, fingerprints[2])]
    assert [(a.kind, a.version) for a in report.alerts] == [("canary_exposed", 2)] and not report.ok
    assert report.rollbacks == [] and report.degraded == []


def _seal_canaries(run: Path, settings: Any, tiny_model: Path) -> None:
    """Seal four canaries beside ``run`` as training does (the registry opens them at add), with the tiny model's
    chat-templated prompts."""
    from transformers import AutoTokenizer

    from appliance.canaries import SEALED_FILE, Canary, ProbeCanary, random_secret, render_document, seal_document
    from appliance.keys import open_key_service
    from appliance.training.data import prompt_text

    run_id = json.loads((run / "metadata.json").read_text())["run_id"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    canaries = [Canary(f"REG-{i}", random_secret(), 16) for i in range(4)]  # all four ranked last: p = 17^-4
    probes = [ProbeCanary(c, prompt_text(tokenizer, c.instruction)) for c in canaries]
    sealed = seal_document(open_key_service(settings), run_id, render_document(run_id, 16, probes))
    (run / SEALED_FILE).write_bytes(sealed)


def test_canary_exposure_through_serving_degrades_and_rolls_back(
    tmp_path: Path, data_dir: Path, make_run: RunFactory, tiny_model: Path
) -> None:
    """Production (v2) carries sealed canaries; measured through the embedded engine they exceed the approval limit
    (lowered after approval, as a tightened policy would, but not below v1's): one `monitor run --once` probes
    them, audits adapter.canary_probe and adapter.canary_alert, marks v2 degraded at once (no second run needed)
    and rolls back to v1; the gauge carries the exposure. v1, without sealed canaries, is not probed."""
    from appliance.registry import open_registry
    from appliance.serving.engine import create_app
    from tests.serving.conftest import ServerThread, start_engine

    policies = _policies(
        tmp_path, consecutive_failures=5, auto_rollback=True, tolerated_drop={"loss": 50.0, "exact_match": 1.0}
    )
    settings = load_settings(data_dir=data_dir, policies_dir=policies)
    registry = enrol(open_registry(settings))
    registry.add(make_run(max_exposure=0.0), "triage", OPERATOR)  # v1 stays within the tightened limit
    canaries = {"count": 4, "exposures": [{"repetitions": 16, "exposure": 1.0}], "max_exposure": 1.0, "sealed": True}
    v2 = make_run(canaries=canaries)
    _seal_canaries(v2, settings, tiny_model)
    registry.add(v2, "triage", OPERATOR)
    for version in (1, 2):
        for approver in APPROVERS:
            registry.approve("triage", version, approver)
        registry.publish("triage", version, "embedded", OPERATOR)
    registry.close()
    privacy = policies / "privacy.yaml"  # tightened after approval: the served exposure is now above the limit
    privacy.write_text(privacy.read_text().replace("max_canary_exposure: 12.0", "max_canary_exposure: 0.000001"))
    listing = settings.serving_dir / "embedded" / "adapters.json"
    engine = start_engine(tiny_model, listing)
    try:
        with ServerThread(create_app(engine)) as server:
            served = load_settings(
                data_dir=data_dir, policies_dir=policies, serving={"backend": "embedded", "url": server.url}
            )
            result = _cli(served, "monitor", "run", "--once", "--json")
    finally:
        engine.close()
    assert result.exit_code == 1, result.output + repr(result.exception)
    report = _json(result.stdout)
    assert [(a["kind"], a["version"]) for a in report["alerts"] if a["kind"].startswith("canary")] == [
        ("canary_exposure", 2)
    ]
    assert list(report["canary_exposures"]) == ["triage-v2"] and report["canary_exposures"]["triage-v2"] > 0
    assert report["degraded"] == ["triage-v2"]
    assert [(r["from_version"], r["to_version"]) for r in report["rollbacks"]] == [(2, 1)], report["alerts"]
    trail = _cli(served, "audit", "tail", "-n", "80", "--json")
    events = [json.loads(line) for line in trail.stdout.splitlines() if line.startswith("{")]
    types = [e["type"] for e in events]
    assert {"adapter.canary_probe", "adapter.canary_alert", "adapter.degraded", "registry.rollback"} <= set(types)
    rollback = next(e for e in events if e["type"] == "registry.rollback")
    assert rollback["details"]["max_canary_exposure"] > 0
    from appliance.monitoring import metrics_path

    assert 'appliance_adapter_canary_exposure{adapter="triage",version="2"}' in metrics_path(data_dir).read_text()
