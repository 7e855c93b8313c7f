"""Gateway test fixtures: an RSA signing key with its JWKS, a token minter, and an app over the shipped fakes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from litestar import Litestar
from litestar.testing import TestClient

from appliance.config import Settings
from appliance.gateway import AdapterRef, create_app
from appliance.testing import FakeBackend, FakeKeyService, MemoryAuditLog, StaticCatalog

ISSUER = "https://idp.test.invalid"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
AUDIENCE = "appliance"
ADAPTERS = [
    AdapterRef("triage", 1, "a" * 64, is_production=False),
    AdapterRef("triage", 2, "b" * 64, is_production=True),
    AdapterRef("discharge-summary", 1, "c" * 64, is_production=True),
    AdapterRef("oncology", 1, "d" * 64, is_production=True),
]


@dataclass
class IdP:
    """A signing key and its JWKS, standing in for the IdP in unit tests (the e2e tests use a real one)."""

    key: RSAKey
    jwks: dict[str, Any]
    fetches: int = 0

    def token(
        self, claims: dict[str, Any] | None = None, *, header: dict[str, Any] | None = None, key: Any = None
    ) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "svc-1", "iat": now, "exp": now + 300, "scope": "inference"}
        body.update(claims or {})
        hdr = {"alg": "RS256", "kid": self.key.kid}
        hdr.update(header or {})
        return jwt.encode(hdr, body, key or self.key)

    async def fetch(self) -> dict[str, Any]:
        self.fetches += 1
        return self.jwks


def new_idp(kid: str) -> IdP:
    """A test IdP with a fresh RSA signing key (slow: generate one per test at most)."""
    key = RSAKey.generate_key(2048, parameters={"kid": kid})
    return IdP(key, KeySet([key]).as_dict(private=False))


def gateway_app(settings: Settings, idp: IdP, **neighbours: Any) -> Litestar:
    """The gateway over the given neighbours (backend, audit, registry, keys, ...), trusting ``idp``'s tokens and
    asking the registry afresh on every request (catalog_ttl_s 0, unless given)."""
    neighbours.setdefault("catalog_ttl_s", 0.0)
    return create_app(settings, jwks_fetcher=idp.fetch, jwt_issuer=ISSUER, **neighbours)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright (the browser tests of a module share it)."""
    from playwright.sync_api import sync_playwright

    if not Path("/usr/bin/chromium").exists():
        pytest.fail("Debian chromium is not installed (scripts/system-deps.sh installs it)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def rsa_key() -> RSAKey:
    """One RSA key for the session (generating keys is slow)."""
    return RSAKey.generate_key(2048, parameters={"kid": "test-key-1"})


@pytest.fixture
def idp(rsa_key: RSAKey) -> IdP:
    """The test IdP: its JWKS holds only the public half."""
    return IdP(rsa_key, KeySet([rsa_key]).as_dict(private=False))


@dataclass
class Harness:
    app: Litestar
    client: TestClient[Litestar]
    backend: FakeBackend
    audit: MemoryAuditLog
    catalog: StaticCatalog
    keys: FakeKeyService
    idp: IdP

    def bearer(self, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.idp.token(claims)}"}

    @property
    def gateway(self) -> Any:
        return self.app.state.gateway


@pytest.fixture
def make_harness(settings: Settings, idp: IdP) -> Iterator[Callable[..., Harness]]:
    """Build an app over the fakes (optionally with other settings); clients are closed at the end."""
    clients: list[TestClient[Litestar]] = []

    def make(s: Settings | None = None, **kwargs: Any) -> Harness:
        s = s or settings
        backend = FakeBackend({a.served_id for a in ADAPTERS})
        audit, catalog, keys = MemoryAuditLog(), StaticCatalog(ADAPTERS), FakeKeyService()
        app = gateway_app(s, idp, backend=backend, audit=audit, registry=catalog, keys=keys, **kwargs)
        client = TestClient(app, base_url="http://127.0.0.1")
        client.__enter__()
        clients.append(client)
        return Harness(app, client, backend, audit, catalog, keys, idp)

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def h(make_harness: Callable[..., Harness]) -> Harness:
    """The default harness."""
    return make_harness()
