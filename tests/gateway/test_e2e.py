"""End to end, with every real stage: the local key service, the audit trail on segment files, the registry
(SQLite; two approvals, publish to the embedded target), the embedded engine on the tiny model behind its HTTP
API, the gateway under uvicorn, a real OIDC provider (npm oidc-provider) and real headless Chromium.

Nothing is mocked. The gateway's and the stages' log lines (structlog and stdlib logging) are captured to a file
for the whole module and scanned at the end for tokens, keys, cookies and the prompt text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.config import Settings, load_settings
from tests.conftest import REPO_ROOT
from tests.fixtures.audit_trail import audit_records
from tests.fixtures.logs import logs_to_file
from tests.fixtures.oidc import WEB_CLIENT_ID, WEB_CLIENT_SECRET, OIDCProvider

IDLE_S = 6  # the session idle timeout for this module (seconds)
PROMPT_MARKER = "QUOKKA-PROMPT-7731"


@dataclass
class Stack:
    settings: Settings
    url: str
    provider: OIDCProvider
    log_path: Path
    secrets_seen: list[str]
    gateway: Any


class _Server:
    """uvicorn on a fixed loopback port in a thread."""

    def __init__(self, app: Any, port: int) -> None:
        import uvicorn

        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="info", lifespan="on", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def _run_dir(root: Path, lora: Path, tiny_model: Path, n: int, ledger: Path) -> Path:
    """A training-run directory per contracts.md (a peft LoRA on the tiny model, shifted to be unique), recorded
    as finished in the ``ledger``."""
    from safetensors.numpy import load_file, save_file

    from appliance.models import model_hash
    from tests.registry.conftest import make_dataset, record_in_ledger, run_metadata

    run = root / f"run-{n}"
    run.mkdir(parents=True)
    tensors = load_file(str(lora / "adapter_model.safetensors"))
    save_file({k: (v + n * 1e-2).astype(v.dtype) for k, v in tensors.items()}, str(run / "adapter_model.safetensors"))
    shutil.copy(lora / "adapter_config.json", run / "adapter_config.json")
    ds = make_dataset(root / f"dataset-{n}", ["p-1", "p-2", "p-3"], ["p-4"])
    metadata = run_metadata(n, tiny_model, model_hash(tiny_model), ds, trained_by="trainer-tom")
    (run / "metadata.json").write_text(json.dumps(metadata))
    record_in_ledger(ledger, run)
    return run


@pytest.fixture(scope="module")
def lora_template(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter on the tiny model written by peft's save_pretrained (the published runs' template)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    )
    out = tmp_path_factory.mktemp("lora") / "template"
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def stack(
    oidc_provider: OIDCProvider,
    tiny_model: Path,
    lora_template: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """Keys, audit, registry with two published adapters, the engine, the gateway; logs captured to a file."""
    from appliance.audit import open_audit_log
    from appliance.gateway import create_app
    from appliance.keys import open_key_service
    from appliance.registry import open_registry
    from appliance.serving import open_backend
    from appliance.serving.engine import create_app as engine_app
    from tests.registry.conftest import APPROVERS, OPERATOR, enrol
    from tests.serving.conftest import ServerThread, start_engine

    root = tmp_path_factory.mktemp("e2e")
    log_path = root / "logs.txt"
    with logs_to_file(log_path, logging.INFO):
        data_dir = root / "var"
        data_dir.mkdir()
        base = {"data_dir": data_dir, "policies_dir": REPO_ROOT / "policies"}
        settings = load_settings(**base)
        keys = open_key_service(settings)
        audit = open_audit_log(settings, keys=keys)
        registry = enrol(open_registry(settings, keys=keys, audit=audit))
        for n, name in enumerate(("triage", "oncology"), start=1):
            registry.add(_run_dir(root / "runs", lora_template, tiny_model, n, settings.ledger_path), name, OPERATOR)
            for approver in APPROVERS:
                registry.approve(name, 1, approver)
            registry.publish(name, 1, "embedded", OPERATOR)
        adapters_file = settings.serving_dir / "embedded" / "adapters.json"
        engine = start_engine(tiny_model, adapters_file, max_batch_size=4, max_queue=16)
        with ServerThread(engine_app(engine)) as engine_server:
            settings = load_settings(
                **base,
                serving={"backend": "embedded", "url": engine_server.url},
                gateway={
                    "oidc_issuer": oidc_provider.issuer,
                    "oidc_client_id": WEB_CLIENT_ID,
                    "oidc_client_secret": WEB_CLIENT_SECRET,
                    "public_url": oidc_provider.gateway_url,
                    "secure_cookies": False,
                    "session_idle_timeout_s": IDLE_S,
                    "catalog_ttl_s": 0.5,
                },
            )
            app = create_app(settings, backend=open_backend(settings), audit=audit, registry=registry, keys=keys)
            with _Server(app, oidc_provider.gateway_port):
                yield Stack(settings, oidc_provider.gateway_url, oidc_provider, log_path, [], app.state.gateway)
        engine.close()
        registry.close()


def _records(settings: Settings) -> list[dict[str, Any]]:
    return audit_records(settings.audit_dir)


# --- services: client-credentials JWTs from the real IdP ------------------------------------------------------------
def test_service_token_from_real_idp(stack: Stack) -> None:
    """A client-credentials JWT from the real IdP reaches its adapter (real engine) and is refused another."""
    token = stack.provider.client_credentials("svc-triage")
    stack.secrets_seen.append(token)
    headers = {"Authorization": f"Bearer {token}"}
    body = {"inputs": f"{PROMPT_MARKER} service", "parameters": {"max_new_tokens": 5}}
    r = httpx.post(f"{stack.url}/v1/inference/adapter/triage/production", json=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["generated_text"], str)
    served = stack.settings.serving_dir / "adapters" / "triage-v1" / "adapter_model.safetensors"
    assert r.headers["X-Adapter-Fingerprint"] == hashlib.sha256(served.read_bytes()).hexdigest()
    audit_id = r.headers["X-Audit-Id"]
    assert any(rec.get("event_id") == audit_id for rec in _records(stack.settings))
    r = httpx.post(f"{stack.url}/v1/inference/adapter/oncology/production", json=body, headers=headers, timeout=60)
    assert r.status_code == 403
    models = httpx.get(f"{stack.url}/v1/models", headers=headers, timeout=10).json()["data"]
    assert {m["id"] for m in models} == {"triage@1", "triage@production"}
    stream = httpx.post(
        f"{stack.url}/v1/chat/completions",
        json={
            "model": "triage@1",
            "messages": [{"role": "user", "content": PROMPT_MARKER}],
            "max_tokens": 4,
            "stream": True,
        },
        headers=headers,
        timeout=60,
    )
    assert stream.status_code == 200 and stream.text.rstrip().endswith("data: [DONE]")


def test_readyz_checks_real_stages(stack: Stack) -> None:
    """readyz reports the real engine, audit writer and key service as ready."""
    r = httpx.get(f"{stack.url}/readyz", timeout=10)
    assert r.status_code == 200 and r.json()["checks"] == {"backend": True, "keys": True, "audit": True, "state": True}


# --- browser ----------------------------------------------------------------------------------------------------------
def _login(page: Any, stack: Stack, user: str) -> str:
    """Sign in through the IdP's own login page; returns the pre-login session id the gateway had issued."""
    page.goto(f"{stack.url}/login")
    page.get_by_test_id("login").click()
    page.wait_for_selector("input[name=login]")  # the IdP's own login page
    pre_login = {c["name"]: c["value"] for c in page.context.cookies(stack.url)}.get("appliance_session", "")
    page.fill("input[name=login]", user)
    page.fill("input[name=password]", "any-password-demo-idp")
    page.click("button[type=submit]")
    page.wait_for_url(f"{stack.url}/**")
    return str(pre_login)


@pytest.mark.browser
def test_browser_analyst_login_query_refusal_and_idle_logoff(stack: Stack, browser: Any, artifacts_dir: Path) -> None:
    """Alice signs in at the IdP, gets a new session id, queries triage, is refused oncology and is logged off idle."""
    from playwright.sync_api import expect

    context = browser.new_context()
    page = context.new_page()
    pre_login = _login(page, stack, "alice")
    assert pre_login and page.url.endswith("/console")
    session_cookie = {c["name"]: c for c in context.cookies()}["appliance_session"]
    assert session_cookie["value"] != pre_login and session_cookie["httpOnly"]  # session fixation defence
    stack.secrets_seen.append(session_cookie["value"])
    r = httpx.get(f"{stack.url}/console", cookies={"appliance_session": pre_login}, follow_redirects=False)
    assert r.status_code in (302, 303, 307)  # the pre-login id is dead

    options = page.locator("#model option").all_inner_texts()
    assert any("triage" in o for o in options) and not any("oncology" in o for o in options)
    page.fill("#prompt", f"{PROMPT_MARKER} summarise the triage note")
    page.fill("#max_new_tokens", "8")
    page.click("#ask button[type=submit]")
    expect(page.get_by_test_id("status")).to_contain_text("Done", timeout=60_000)
    assert page.get_by_test_id("answer").inner_text().strip()
    audit_id = page.get_by_test_id("audit-id").inner_text()
    page.screenshot(path=str(artifacts_dir / "gateway-console-answer.png"), full_page=True)
    assert any(rec.get("event_id") == audit_id for rec in _records(stack.settings)), audit_id

    refused = page.evaluate(
        """async () => {
            const csrf = document.getElementById('ask').dataset.csrf;
            const r = await fetch('/console/generate', {method: 'POST', headers: {'Content-Type': 'application/json',
                'X-CSRF-Token': csrf}, body: JSON.stringify({model: 'oncology@production', prompt: 'hello'})});
            return [r.status, (await r.json()).error];
        }"""
    )
    assert refused[0] == 403 and "oncology" in refused[1]
    page.goto(f"{stack.url}/compliance")
    assert page.locator("h1").inner_text() == "Not allowed"
    page.screenshot(path=str(artifacts_dir / "gateway-refused-compliance.png"), full_page=True)

    # idle: the server ends the session; the page's timer (idle.js, on the refusal page too, which now has the
    # signed-in header) then reloads it, and the gateway sends it to the login page saying why
    page.wait_for_url(f"{stack.url}/login?m=idle", timeout=(IDLE_S + 10) * 1000)
    assert "inactivity" in page.get_by_test_id("login-message").inner_text()
    page.screenshot(path=str(artifacts_dir / "gateway-idle-logoff.png"), full_page=True)
    logouts = [r for r in _records(stack.settings) if r["type"] == "auth.logout"]
    assert logouts and logouts[-1]["details"]["reason"] == "idle" and logouts[-1]["actor"]["subject"] == "alice"
    context.close()


@pytest.mark.browser
def test_browser_admin_creates_key_and_grants_breakglass(stack: Stack, browser: Any, artifacts_dir: Path) -> None:
    """Adam creates an API key on the admin page (shown once, works at once) and grants time-boxed emergency access."""
    context = browser.new_context()
    page = context.new_page()
    _login(page, stack, "adam")
    assert page.url.endswith("/admin")
    page.fill("#key-name", "lab-system")
    page.fill("#key-scopes", "admin")
    page.click("form[action='/admin/keys'] button[type=submit]")
    key = page.get_by_test_id("new-key").inner_text().strip()
    stack.secrets_seen.append(key)
    assert key.startswith("apk_")
    r = httpx.get(f"{stack.url}/v1/admin/keys", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 200 and key not in r.text
    page.fill("#bg-subject", "alice")
    page.fill("#bg-reason", "Mass casualty incident: ED needs oncology history now")
    page.fill("#bg-duration", "5")
    page.click("form[action='/admin/breakglass'] button[type=submit]")
    assert "Emergency access" in page.locator("[role=status]").first.inner_text()
    page.screenshot(path=str(artifacts_dir / "gateway-admin.png"), full_page=True)
    grant = next(g for g in stack.gateway.breakglass.list() if g.subject == "alice")
    assert 0 < grant.expires_at - time.time() <= 300
    stack.gateway.breakglass.revoke(grant.id, revoked_by="test")
    context.close()


@pytest.mark.browser
def test_browser_compliance_search_export_verify(stack: Stack, browser: Any, artifacts_dir: Path) -> None:
    """Carol searches the real audit trail by actor and outcome, exports it as JSON lines and verifies the chain."""
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    _login(page, stack, "carol")
    assert page.url.endswith("/compliance")
    page.fill("#actor", "svc-triage")
    page.select_option("#outcome", "denied")
    page.click("form.filters button[type=submit]")
    rows = page.locator("[data-testid=results] tbody tr")
    assert rows.count() >= 1 and "svc-triage" in rows.first.inner_text()
    page.screenshot(path=str(artifacts_dir / "gateway-compliance-search.png"), full_page=True)
    with page.expect_download() as info:
        page.get_by_test_id("export-jsonl").click()
    exported = Path(info.value.path()).read_text()
    lines = [json.loads(line) for line in exported.splitlines() if line.strip()]
    records = [r for r in lines if r["type"] != "audit.checkpoint"]  # signed checkpoints travel with an export
    assert records and all(r["actor"]["subject"] == "svc-triage" for r in records)
    assert all(r["outcome"]["status"] == "denied" for r in records) and PROMPT_MARKER not in exported
    (artifacts_dir / "gateway-audit-export.jsonl").write_text(exported)
    page.click("form[action='/compliance/verify'] button[type=submit]")
    assert "Chain intact" in page.get_by_test_id("verify-result").inner_text()
    page.screenshot(path=str(artifacts_dir / "gateway-compliance-verify.png"), full_page=True)
    types = {r["type"] for r in _records(stack.settings)}
    assert {"audit.search", "audit.export", "audit.verify"} <= types
    context.close()


def test_logs_hold_no_tokens_keys_or_prompts(stack: Stack) -> None:
    """Across the whole module, no log line carries a token, a key, a session cookie or the prompt text."""
    text = stack.log_path.read_text(encoding="utf-8", errors="replace")
    tokens = [*stack.provider.tokens_issued, *stack.secrets_seen]
    assert tokens, "the e2e tests should have issued credentials"
    for secret in tokens:
        assert secret not in text
        assert secret.split(".")[-1] not in text  # not even a JWT's signature part
    assert PROMPT_MARKER not in text
    audit_blob = "".join(p.read_text() for p in stack.settings.audit_dir.rglob("*.jsonl"))
    assert PROMPT_MARKER not in audit_blob and all(t not in audit_blob for t in tokens)
