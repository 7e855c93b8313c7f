"""schemathesis against the gateway's own OpenAPI schema: generated requests never cause a 5xx."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.gateway.conftest import Harness


@pytest.fixture
def harness(make_harness: Callable[..., Harness]) -> Harness:
    """A gateway over the fakes, with a researcher token (the widest non-admin role)."""
    return make_harness()


@pytest.fixture
def api_schema(harness: Harness) -> Any:
    """The schema the app serves, bound to the app over ASGI."""
    return schemathesis.openapi.from_asgi("/schema/openapi.json", harness.app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: Any, harness: Harness) -> None:
    """No generated request (with a valid researcher or admin token, or none) gets a 5xx answer."""
    token = harness.idp.token({"scope": "research admin"})
    for headers in ({"Authorization": f"Bearer {token}"}, {}):
        response = case.call(headers=headers)
        assert response.status_code < 500, (case.method, case.path, response.status_code)
