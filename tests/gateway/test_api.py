"""The API flow: auth -> policy -> limits -> audit -> backend -> outcome, headers and error mapping."""

from __future__ import annotations

import json

from tests.gateway.conftest import Harness

BODY = {"inputs": "synthetic prompt for the test", "parameters": {"max_new_tokens": 4}}


def test_inference_answers_with_audit_and_fingerprint_headers(h: Harness) -> None:
    """A permitted request is answered with X-Audit-Id and X-Adapter-Fingerprint, on the gateway's adapter id."""
    r = h.client.post("/v1/inference/adapter/triage/production", json=BODY, headers=h.bearer())
    assert r.status_code == 200, r.text
    assert r.json()["generated_text"] == "ok ok ok ok"
    assert r.headers["X-Adapter-Fingerprint"] == "b" * 64
    req = h.audit.of_type("gateway.request")[-1]
    resp = h.audit.of_type("gateway.response")[-1]
    assert r.headers["X-Audit-Id"] == req["event_id"]
    assert h.backend.calls[-1][0] == "triage-v2"
    assert resp["outcome"]["status"] == "success" and resp["tokens"] == {"prompt": 5, "generated": 4}
    assert len(resp["digests"]["prompt"]) == 64 and "synthetic" not in json.dumps(h.audit.events)


def test_client_cannot_choose_adapter_id(h: Harness) -> None:
    """A body that tries to set adapter_id is refused before the backend is called."""
    body = {"inputs": "x", "parameters": {"adapter_id": "oncology-v1"}}
    r = h.client.post("/v1/inference/adapter/triage/production", json=body, headers=h.bearer())
    assert r.status_code == 422 and r.json()["error_type"] == "VALIDATION_FAILED"
    assert h.backend.calls == []


def test_audit_failure_is_503_and_backend_not_called(h: Harness) -> None:
    """When the request cannot be recorded the answer is 503 and nothing reaches the backend."""
    h.audit.fail = True
    r = h.client.post("/v1/inference/adapter/triage/production", json=BODY, headers=h.bearer())
    assert r.status_code == 503 and r.json()["error_type"] == "AUDIT_UNAVAILABLE"
    assert h.backend.calls == []


def test_request_record_that_does_not_become_durable_withholds_the_answer(h: Harness) -> None:
    """The backend may run while the request record syncs; if the sync fails, the answer is 503 (and no text)."""
    import asyncio

    from appliance.errors import AuditUnavailable
    from appliance.protocols import WrittenRecord

    gw = h.gateway
    real = gw.audit.record_ahead

    async def sync_fails(event):  # type: ignore[no-untyped-def]
        written = await real(event)
        failed = asyncio.get_running_loop().create_future()
        failed.set_exception(AuditUnavailable("fdatasync failed (test)"))
        return WrittenRecord(written.receipt, failed)

    gw.audit.record_ahead = sync_fails
    r = h.client.post("/v1/inference/adapter/triage/production", json=BODY, headers=h.bearer())
    assert r.status_code == 503 and r.json()["error_type"] == "AUDIT_UNAVAILABLE"
    assert "ok" not in r.text and len(h.backend.calls) == 1  # it ran; nothing of it was answered
    streams = {
        "/v1/inference/adapter/triage/production/stream": BODY,
        "/v1/completions": {"model": "triage@production", "prompt": "hi", "stream": True},
        "/v1/chat/completions": {
            "model": "triage@production",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
        },
    }
    for path, body in streams.items():
        r = h.client.post(path, json=body, headers=h.bearer())
        # no status line of 200 before the request record is durable (issue 15 #2): 503, and no event at all
        assert r.status_code == 503 and r.json()["error_type"] == "AUDIT_UNAVAILABLE", (path, r.text)
        assert "data:" not in r.text


def test_adapter_outside_role_is_403_and_audited(h: Harness) -> None:
    """An analyst asking for an adapter its role does not grant gets 403 and a gateway.denied record."""
    r = h.client.post("/v1/inference/adapter/oncology/production", json=BODY, headers=h.bearer())
    assert r.status_code == 403 and r.json()["error_type"] == "POLICY_VIOLATION"
    denied = h.audit.of_type("gateway.denied")[-1]
    assert r.headers["X-Audit-Id"] == denied["event_id"] and denied["outcome"]["status"] == "denied"


def test_unpublished_version_is_404_with_reason(h: Harness) -> None:
    """A version that is not published is a 404 that says so."""
    r = h.client.post("/v1/inference/adapter/triage/7", json=BODY, headers=h.bearer(scope="research"))
    assert r.status_code == 404 and "not published" in r.json()["error"]


def test_published_but_not_loaded_adapter_is_refused(h: Harness) -> None:
    """An adapter the backend does not serve is refused (TGI would silently run the base model)."""
    h.backend.served.discard("triage-v2")
    r = h.client.post("/v1/inference/adapter/triage/production", json=BODY, headers=h.bearer())
    assert r.status_code == 422 and r.json()["error_type"] == "BACKEND_VALIDATION"
    assert h.backend.calls == []


def test_models_lists_only_permitted(h: Harness) -> None:
    """GET /v1/models lists what the caller may use and nothing else."""
    ids = {m["id"] for m in h.client.get("/v1/models", headers=h.bearer()).json()["data"]}
    assert ids == {"triage@2", "triage@production", "discharge-summary@1", "discharge-summary@production"}
    research = {m["id"] for m in h.client.get("/v1/models", headers=h.bearer(scope="research")).json()["data"]}
    assert "oncology@1" in research and "triage@1" in research


def test_chat_completions_openai_shape(h: Harness) -> None:
    """/v1/chat/completions with model name@version answers in the OpenAI shape with usage."""
    body = {"model": "triage@production", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}
    r = h.client.post("/v1/chat/completions", json=body, headers=h.bearer())
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["object"] == "chat.completion" and data["choices"][0]["message"]["content"] == "ok ok ok"
    assert data["usage"]["completion_tokens"] == 3 and r.headers["X-Adapter-Fingerprint"] == "b" * 64


def test_completions_stream_ends_with_done(h: Harness) -> None:
    """/v1/completions with stream=true sends chunks and ends with [DONE]."""
    body = {"model": "triage@2", "prompt": "hello", "max_tokens": 2, "stream": True}
    r = h.client.post("/v1/completions", json=body, headers=h.bearer())
    assert r.status_code == 200
    assert r.text.rstrip().endswith("data: [DONE]") and r.text.count("data:") == 3


def test_stream_records_outcome_before_final_event(h: Harness) -> None:
    """The SSE stream's final event carries generated_text, and the outcome record exists once it is sent."""
    r = h.client.post("/v1/inference/adapter/triage/production/stream", json=BODY, headers=h.bearer())
    events = [json.loads(line[5:]) for line in r.text.split("\n\n") if line.startswith("data:")]
    assert events[-1]["generated_text"] == "ok ok ok ok" and events[0]["token"]["logprob"] is None
    assert h.audit.of_type("gateway.response")[-1]["tokens"]["generated"] == 4


def _leave_after_first_chunk(h: Harness, path: str, payload: dict[str, object]) -> int:
    """POST over raw ASGI and disconnect once the first body chunk arrives (a client closing the stream)."""
    import asyncio

    body = json.dumps(payload).encode()
    chunks: list[bytes] = []

    async def run() -> None:
        first, asked = asyncio.Event(), [False]

        async def receive() -> dict[str, object]:
            if not asked[0]:
                asked[0] = True
                return {"type": "http.request", "body": body, "more_body": False}
            await first.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, object]) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                chunks.append(message["body"])  # type: ignore[arg-type]
                first.set()

        headers = [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {h.idp.token()}".encode()),
        ]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80),
        }
        await h.app(scope, receive, send)  # type: ignore[arg-type]
        for _ in range(200):  # the outcome of a stream its client left is recorded by a task
            if h.audit.of_type("gateway.response"):
                break
            await asyncio.sleep(0.01)

    h.client.blocking_portal.call(run)
    return len(chunks)


def test_stream_the_client_leaves_still_has_an_outcome_and_is_charged(h: Harness) -> None:
    """A client that closes a stream before its final event cannot skip the outcome record or the token budget."""
    h.backend.delay_s = 0.02
    payload = {"inputs": "hello", "parameters": {"max_new_tokens": 40}}
    sent = _leave_after_first_chunk(h, "/v1/inference/adapter/triage/production/stream", payload)
    assert 1 <= sent < 40
    request, responses = h.audit.of_type("gateway.request")[-1], h.audit.of_type("gateway.response")
    assert len(responses) == 1 and responses[0]["details"]["request_event"] == request["event_id"]
    outcome = responses[0]["outcome"]
    assert outcome == {"status": "error", "http_status": 499, "error_class": "CLIENT_CLOSED"}
    assert 1 <= responses[0]["tokens"]["generated"] < 40 and len(responses[0]["digests"]["output"]) == 64
    bucket = h.gateway.limits.limiter._buckets[("pt", "svc-1")]
    assert bucket.level < bucket.capacity  # the tokens it was sent are charged


def test_stream_audit_failure_replaces_final_event(h: Harness) -> None:
    """If the outcome cannot be recorded, the final event is replaced by an AUDIT_UNAVAILABLE error event."""
    gw = h.gateway
    real = gw.audit.record

    async def fail_on_response(event):  # type: ignore[no-untyped-def]
        if event["type"] == "gateway.response":
            from appliance.errors import AuditUnavailable

            raise AuditUnavailable("disk full (test)")
        return await real(event)

    gw.audit.record = fail_on_response
    r = h.client.post("/v1/inference/adapter/triage/production/stream", json=BODY, headers=h.bearer())
    last = json.loads([p for p in r.text.split("\n\n") if p.startswith("data:")][-1][5:])
    assert last["error_type"] == "AUDIT_UNAVAILABLE" and "generated_text" not in last


def test_logprobs_only_for_allowed_roles(h: Harness) -> None:
    """details/top_n_tokens are refused for analysts and allowed for researchers."""
    body = {"inputs": "x", "parameters": {"details": True}}
    r = h.client.post("/v1/inference/adapter/triage/production", json=body, headers=h.bearer())
    assert r.status_code == 403 and "logprob" in r.json()["error"]
    r = h.client.post("/v1/inference/adapter/triage/production", json=body, headers=h.bearer(scope="research"))
    assert r.status_code == 200 and r.json()["details"]["tokens"]


def test_rate_limit_429_with_retry_after(h: Harness, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Past the per-principal requests/min the answer is 429 with Retry-After."""
    gw = h.gateway
    from appliance.gateway.policy import LimitProfile

    profile = LimitProfile(requests_per_minute=2, tokens_per_minute=10_000)
    gw.policy.current.limits.profiles["analyst"] = profile  # frozen model, mutable dict: test-only tweak
    codes = [
        h.client.post("/v1/inference/adapter/triage/production", json=BODY, headers=h.bearer()).status_code
        for _ in range(3)
    ]
    assert codes == [200, 200, 429]
    r = h.client.post("/v1/inference/adapter/triage/production", json=BODY, headers=h.bearer())
    assert int(r.headers["Retry-After"]) >= 1 and r.json()["error_type"] == "RATE_LIMITED"
    assert r.headers["X-Audit-Id"] != "-"  # the refusal's audit record
    limited = gw.metrics.rate_limited.labels("principal requests")._value.get()
    assert limited == 2  # each refusal counted under its bucket, named as before


def test_health_and_ready(h: Harness) -> None:
    """healthz is up; readyz checks the backend and turns 503 when it is down."""
    assert h.client.get("/healthz").json() == {"status": "ok"}
    assert h.client.get("/readyz").status_code == 200
    h.backend.healthy = False
    r = h.client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["backend"] is False


def test_ready_asks_the_audit_log_itself(h: Harness) -> None:
    """readyz asks ``AuditLog.check_writable`` (declared on the protocol): a log that refuses writes is not ready
    before any request has failed on it, and is ready again once it takes writes."""
    assert h.client.get("/readyz").json()["checks"]["audit"] is True
    h.audit.fail = True
    r = h.client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["audit"] is False
    h.audit.fail = False
    assert h.client.get("/readyz").status_code == 200


def test_metrics_not_public(h: Harness) -> None:
    """/metrics refuses an anonymous non-loopback caller and an analyst, and serves an admin."""
    assert h.client.get("/metrics").status_code == 403
    assert h.client.get("/metrics", headers=h.bearer()).status_code == 403
    h.client.get("/healthz")
    r = h.client.get("/metrics", headers=h.bearer(scope="admin"))
    assert r.status_code == 200 and 'appliance_gateway_requests_total{route="/healthz",status="200"}' in r.text


def test_https_only_headers(make_harness, settings) -> None:  # type: ignore[no-untyped-def]
    """With secure cookies (HTTPS, required in production) every answer carries HSTS besides the other headers."""
    r = make_harness().client.get("/healthz")
    assert r.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert r.headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    plain = settings.model_copy(update={"gateway": settings.gateway.model_copy(update={"secure_cookies": False})})
    assert "Strict-Transport-Security" not in make_harness(plain).client.get("/healthz").headers


def test_openapi_schema_and_docs(h: Harness) -> None:
    """The OpenAPI schema lists the inference route and the docs page renders it."""
    schema = h.client.get("/schema/openapi.json").json()
    assert "/v1/inference/adapter/{name}/{version}" in schema["paths"]
    assert "/v1/chat/completions" in h.client.get("/docs").text


def test_compliance_export_links_keep_time_filters(h: Harness) -> None:
    """The page's export links carry its filters percent-encoded: a time's '+00:00' is not read back as a space."""
    import html
    import re

    from appliance.gateway._service import SESSION_COOKIE

    session = h.client.blocking_portal.call(
        h.gateway.sessions.create, {"subject": "carol", "name": "Carol", "groups": ["compliance"]}
    )
    h.client.cookies.set(SESSION_COOKIE, session.id)
    page = h.client.get("/compliance?search=1&since=2020-01-01&outcome=success")
    links = [html.unescape(u) for u in re.findall(r'href="(/compliance/export[^"]*)"', page.text)]
    assert len(links) == 2
    for link in links:
        r = h.client.get(link)
        assert r.status_code == 200, r.text
    exports = h.audit.of_type("audit.export")
    assert exports[-1]["details"]["since"] == "2020-01-01T00:00:00+00:00"


def test_api_key_whose_create_record_fails_is_revoked(h: Harness) -> None:
    """When the create record cannot be written (503), the key it would record does not stay in force."""
    h.audit.fail = True
    r = h.client.post("/v1/admin/keys", json={"name": "svc", "scopes": ["admin"]}, headers=h.bearer(scope="admin"))
    assert r.status_code == 503
    assert [k.state(0) for k in h.gateway.apikeys.list()] == ["revoked"]


def test_adapter_the_roles_do_not_allow_is_403_whether_or_not_it_exists(h: Harness) -> None:
    """A caller learns nothing about adapters or versions its roles do not allow: the same audited 403 for one
    that exists and one that does not. A caller allowed the name and version still gets a 404 that says why."""

    def refusal(path: str, **claims: str) -> tuple[int, str, str]:
        r = h.client.post(f"/v1/inference/adapter/{path}", json=BODY, headers=h.bearer(**claims))
        assert r.headers["X-Audit-Id"] == h.audit.of_type("gateway.denied")[-1]["event_id"]
        return r.status_code, r.json()["error_type"], r.json()["error"]

    status, kind, message = refusal("oncology/production")
    assert (status, kind) == (403, "POLICY_VIOLATION")
    for name, version in [("no-such-adapter", "production"), ("triage", "1"), ("triage", "7")]:
        same = message.replace("'oncology' version production", f"{name!r} version {version}")
        assert refusal(f"{name}/{version}") == (status, kind, same)
    status, kind, message = refusal("triage/7", scope="research")
    assert (status, kind) == (404, "NOT_FOUND") and "not published" in message
    assert refusal("no-such-adapter/1", scope="research")[:2] == (404, "NOT_FOUND")


def test_metrics_refusals_are_audited_once_a_minute_per_caller(h: Harness) -> None:
    """A refused /metrics scrape is a gateway.denied record, at most one a minute per source, subject and error (a
    scraper with a wrong token cannot flood the trail); the next record counts the refusals in between."""
    wrong = {"Authorization": "Bearer wrong-metrics-token"}
    responses = [h.client.get("/metrics", headers=wrong) for _ in range(3)] + [h.client.get("/metrics")]
    responses.append(h.client.get("/metrics", headers=h.bearer()))
    assert [r.status_code for r in responses] == [403] * 5
    denied = [e for e in h.audit.of_type("gateway.denied") if e["route"] == "/metrics"]
    assert [(e["actor"]["subject"], e["actor"]["auth_method"]) for e in denied] == [
        ("anonymous", "jwt"),
        ("svc-1", "jwt"),
    ]
    audit_ids = [r.headers.get("X-Audit-Id") for r in responses]
    assert audit_ids == [denied[0]["event_id"], "-", "-", "-", denied[1]["event_id"]]  # "-": not recorded
    h.gateway.bounded_denial_s = 0.0  # the minute has passed
    r = h.client.get("/metrics", headers=wrong)
    last = h.audit.of_type("gateway.denied")[-1]
    assert r.headers["X-Audit-Id"] == last["event_id"] and last["details"]["unrecorded"] == 3
    r = h.client.get("/metrics", headers=h.bearer(scope="admin"))
    assert 'appliance_gateway_denied_total{reason="PERMISSION_DENIED"} 6.0' in r.text  # recorded or not
