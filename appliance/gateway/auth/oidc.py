"""Browser login against the hospital's IdP: OpenID Connect authorization code + PKCE (authlib), ID token
validated with joserfc (:mod:`appliance.gateway.auth.jwt`) including its ``nonce``.

The flow's state (``state``, ``nonce``, PKCE ``code_verifier``) lives in the pre-login server-side session; the
callback checks ``state`` in constant time, exchanges the code, validates the ID token and hands back its claims.
The caller then rotates the session id (fixation defence).
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
from authlib.integrations.httpx_client import AsyncOAuth2Client

from appliance.errors import Unauthenticated
from appliance.gateway.auth.jwt import JWKSCache, JWTValidator, http_jwks_fetcher


@dataclass(frozen=True)
class LoginStart:
    url: str
    state: str
    nonce: str
    code_verifier: str


@dataclass(frozen=True)
class LoginResult:
    """A validated login: the ID token's claims, and the token itself (kept server-side as the ``id_token_hint``
    of RP-initiated logout; never logged)."""

    claims: dict[str, Any]
    id_token: str


# prompt=none answers that say the IdP holds no session for this browser (OIDC Core 3.1.2.6)
NO_IDP_SESSION = frozenset({"login_required", "interaction_required", "account_selection_required"})


class OIDCClient:
    """The relying party: discovery (cached), the authorization URL, the code exchange and ID-token checks."""

    def __init__(
        self,
        issuer: str,
        client_id: str,
        client_secret: str | None,
        redirect_uri: str,
        *,
        scope: str = "openid profile groups",
        algorithms: list[str] | None = None,
        jwks_ttl_s: float = 300.0,
        timeout_s: float = 5.0,
        verify: bool | str = True,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.scope = scope
        self.algorithms = algorithms or ["RS256", "ES256", "EdDSA"]
        self.jwks_ttl_s = jwks_ttl_s
        self.timeout_s = timeout_s
        self.verify = verify
        self._meta: dict[str, Any] | None = None
        self._meta_at = 0.0
        self._validator: JWTValidator | None = None

    async def metadata(self) -> dict[str, Any]:
        if self._meta is None or time.monotonic() - self._meta_at > self.jwks_ttl_s:
            url = f"{self.issuer}/.well-known/openid-configuration"
            try:
                async with httpx.AsyncClient(timeout=self.timeout_s, verify=self.verify) as client:
                    resp = await client.get(url)
                    resp.raise_for_status()
                    meta = resp.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise Unauthenticated("the identity provider is unreachable") from exc
            if meta.get("issuer", "").rstrip("/") != self.issuer:
                raise Unauthenticated("identity provider metadata names another issuer")
            self._meta, self._meta_at = meta, time.monotonic()
            jwks = JWKSCache(http_jwks_fetcher(meta["jwks_uri"], verify=self.verify), ttl_s=self.jwks_ttl_s)
            self._validator = JWTValidator(
                jwks, issuer=meta["issuer"], audience=self.client_id, algorithms=self.algorithms
            )
        return self._meta

    def _client(self) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=self.client_id,
            client_secret=self.client_secret,
            scope=self.scope,
            redirect_uri=self.redirect_uri,
            code_challenge_method="S256",
            token_endpoint_auth_method="client_secret_basic" if self.client_secret else "none",
            timeout=self.timeout_s,
            verify=self.verify,
        )

    async def begin(self, *, prompt: str | None = None) -> LoginStart:
        """The authorization request. ``prompt="login"`` makes the IdP ask for credentials even when it holds a
        session; ``prompt="none"`` asks it, without any page, whether it still holds one."""
        meta = await self.metadata()
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)
        extra = {"prompt": prompt} if prompt else {}
        async with self._client() as client:
            url, _ = client.create_authorization_url(
                meta["authorization_endpoint"], state=state, nonce=nonce, code_verifier=verifier, **extra
            )
        return LoginStart(url, state, nonce, verifier)

    async def finish(
        self, *, code: str, state: str, expected_state: str, code_verifier: str, nonce: str
    ) -> LoginResult:
        if not same_state(state, expected_state):
            raise Unauthenticated("login state mismatch (start the login again)")
        meta = await self.metadata()
        try:
            async with self._client() as client:
                token = await client.fetch_token(
                    meta["token_endpoint"], grant_type="authorization_code", code=code, code_verifier=code_verifier
                )
        except Exception as exc:  # authlib raises OAuthError or httpx errors
            raise Unauthenticated("the identity provider refused the login") from exc
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise Unauthenticated("the identity provider returned no ID token")
        assert self._validator is not None
        claims = await self._validator.validate(id_token, audience=self.client_id, nonce=nonce)
        return LoginResult(claims, id_token)

    def end_session_url(self, post_logout_redirect_uri: str, *, id_token_hint: str | None, state: str) -> str | None:
        """RP-initiated logout 1.0: the IdP's end-session URL with the session's ID token as ``id_token_hint``,
        our ``client_id``, the registered ``post_logout_redirect_uri`` and a ``state`` the IdP sends back (None when
        the IdP has no end_session_endpoint or discovery has not run)."""
        if not (self._meta and self._meta.get("end_session_endpoint")):
            return None
        endpoint = str(self._meta["end_session_endpoint"])
        params = {"client_id": self.client_id, "post_logout_redirect_uri": post_logout_redirect_uri, "state": state}
        if id_token_hint:
            params = {"id_token_hint": id_token_hint, **params}
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(params)}"


def same_state(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison of an OAuth ``state`` that came back with the one we sent."""
    return bool(given) and bool(expected) and hmac.compare_digest(str(given).encode(), str(expected).encode())
