"""Bearer JWT validation with joserfc against the IdP's JWKS.

Checks, in order: the compact form, the header's ``alg`` against an allow-list (``none`` and every HMAC
algorithm are refused outright, so a token "signed" with the public key as an HMAC secret never reaches a
verifier), a ``kid``, the key (from a JWKS cached for a TTL and refreshed once on an unknown ``kid``, at most
once per ``min_refresh_s``), the signature, then ``iss``, ``aud``, ``exp`` and ``nbf``. Every refusal is
:class:`~appliance.errors.Unauthenticated` with a short reason; the token itself is never logged or echoed.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from appliance.errors import Unauthenticated

ALLOWED_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"})
JWKSFetcher = Callable[[], Awaitable[dict[str, Any]]]


def http_jwks_fetcher(url: str, *, timeout_s: float = 5.0, verify: bool | str = True) -> JWKSFetcher:
    """A fetcher that GETs the JWKS document at ``url``."""

    async def fetch() -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=timeout_s, verify=verify) as client:
            resp = await client.get(url)
            resp.raise_for_status()
            data = resp.json()
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError("JWKS document has no 'keys' list")
        return data

    return fetch


class JWKSCache:
    """The IdP's public keys, cached for ``ttl_s`` and refreshed on an unknown ``kid`` (rate-limited)."""

    def __init__(
        self,
        fetch: JWKSFetcher,
        *,
        ttl_s: float = 300.0,
        min_refresh_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._ttl = ttl_s
        self._min_refresh = min_refresh_s
        self._clock = clock
        self._keys: KeySet | None = None
        self._fetched_at = float("-inf")
        self.fetches = 0

    async def _refresh(self) -> None:
        try:
            doc = await self._fetch()
            keys = KeySet.import_key_set(doc)  # type: ignore[arg-type]
        except Exception as exc:  # network, JSON, malformed keys: fail closed
            raise Unauthenticated("identity provider keys are unavailable") from exc
        self._keys = keys
        self._fetched_at = self._clock()
        self.fetches += 1

    async def key_for(self, kid: str) -> Any:
        now = self._clock()
        if self._keys is None or now - self._fetched_at > self._ttl:
            await self._refresh()
        key = self._find(kid)
        if key is None and now - self._fetched_at >= self._min_refresh:
            await self._refresh()
            key = self._find(kid)
        if key is None:
            raise Unauthenticated("token signed by an unknown key")
        return key

    def _find(self, kid: str) -> Any:
        assert self._keys is not None
        for key in self._keys.keys:
            if key.kid == kid:
                return key
        return None


def _b64json(part: str) -> dict[str, Any]:
    padded = part + "=" * (-len(part) % 4)
    value = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value


class JWTValidator:
    """Validates IdP-issued bearer tokens and returns their claims."""

    def __init__(
        self,
        jwks: JWKSCache,
        *,
        issuer: str,
        audience: str,
        algorithms: Collection[str] = ("RS256", "ES256", "EdDSA"),
        leeway_s: int = 30,
        clock: Callable[[], float] = time.time,
    ) -> None:
        bad = set(algorithms) - ALLOWED_ALGORITHMS
        if bad:
            raise ValueError(f"algorithms not allowed for bearer tokens: {sorted(bad)}")
        self.jwks = jwks
        self.issuer = issuer
        self.audience = audience
        self.algorithms = frozenset(algorithms)
        self.leeway_s = leeway_s
        self._clock = clock

    async def validate(self, token: str, *, audience: str | None = None, nonce: str | None = None) -> dict[str, Any]:
        parts = token.split(".")
        if len(parts) != 3 or not all(parts[:2]):
            raise Unauthenticated("malformed bearer token")
        try:
            header = _b64json(parts[0])
        except (ValueError, RecursionError) as exc:  # RecursionError: a deeply nested header (json.loads)
            raise Unauthenticated("malformed bearer token") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise Unauthenticated("token algorithm not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("token has no key id")
        key = await self.jwks.key_for(kid)
        try:
            decoded = jwt.decode(token, key, algorithms=sorted(self.algorithms))
        except (JoseError, ValueError) as exc:
            raise Unauthenticated("token signature is invalid") from exc
        claims = dict(decoded.claims)
        options: dict[str, Any] = {
            "iss": {"essential": True, "value": self.issuer},
            "aud": {"essential": True, "value": audience or self.audience},
            "exp": {"essential": True},
            "sub": {"essential": True},
        }
        if nonce is not None:
            options["nonce"] = {"essential": True, "value": nonce}
        registry = jwt.JWTClaimsRegistry(now=int(self._clock()), leeway=self.leeway_s, **options)
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise Unauthenticated(f"token rejected: {_reason(exc)}") from exc
        return claims


def _reason(exc: JoseError) -> str:
    name, claim = type(exc).__name__, str(getattr(exc, "claim", "") or "")
    if name == "ExpiredTokenError":
        return "expired"
    if claim == "nbf" or name == "InvalidTokenError":
        return "not yet valid"
    if name == "MissingClaimError":
        return f"missing claim {claim}".strip()
    return f"invalid claim {claim}".strip()
