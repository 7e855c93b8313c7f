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

    async def begin(self) -> LoginStart:
        meta = await self.metadata()
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)
        async with self._client() as client:
            url, _ = client.create_authorization_url(
                meta["authorization_endpoint"], state=state, nonce=nonce, code_verifier=verifier
            )
        return LoginStart(url, state, nonce, verifier)

    async def finish(
        self, *, code: str, state: str, expected_state: str, code_verifier: str, nonce: str
    ) -> dict[str, Any]:
        if not hmac.compare_digest(state.encode(), expected_state.encode()):
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
        return await self._validator.validate(id_token, audience=self.client_id, nonce=nonce)

    def end_session_url(self, post_logout_redirect_uri: str) -> str | None:
        """RP-initiated logout: the IdP's end-session URL sending the browser back to ``post_logout_redirect_uri``
        (None when the IdP has no end_session_endpoint or discovery has not run)."""
        if self._meta and self._meta.get("end_session_endpoint"):
            endpoint = str(self._meta["end_session_endpoint"])
            query = urlencode({"client_id": self.client_id, "post_logout_redirect_uri": post_logout_redirect_uri})
            return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"
        return None
