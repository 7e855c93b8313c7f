"""Fixtures of the audit tests: the real local key service and a writer on segment files in a fresh data dir."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from appliance.audit import AuditWriter, open_audit_log
from appliance.config import Settings
from appliance.keys import LocalKeyService


def make_event(**overrides: Any) -> dict[str, Any]:
    """A complete, valid gateway request event (AU-3 fields, no text)."""
    event: dict[str, Any] = {
        "type": "gateway.request",
        "actor": {
            "subject": "alice",
            "client_id": "web",
            "auth_method": "oidc",
            "session_id": "s-1",
            "roles": ["analyst"],
        },
        "source": {"ip": "10.1.2.3", "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"},
        "action": "generate",
        "route": "/v1/adapters/{name}/generate",
        "adapter": {"name": "triage", "version": 2, "fingerprint": "ab" * 32},
        "outcome": {"status": "success", "http_status": 200, "error_class": None},
        "tokens": {"prompt": 12, "generated": 34},
        "latency_ms": 41.5,
        "request_id": "req-0001",
        "digests": None,
        "details": {"stream": False},
    }
    event.update(overrides)
    return event


@pytest.fixture
def keys(settings: Settings) -> LocalKeyService:
    """The real local key service (keystore file under the test's data dir)."""
    return LocalKeyService(settings.keystore_path)


@pytest.fixture
def audit_log(settings: Settings, keys: LocalKeyService) -> Iterator[AuditWriter]:
    """A started writer on segment files; closed after the test."""
    writer = open_audit_log(settings, keys)
    yield writer
    writer.close_sync()
