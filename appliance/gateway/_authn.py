"""Authentication: one strategy per scheme, each turning a credential (or the session cookie) into a Principal or
refusing with Unauthenticated. :class:`Authenticator` reads the ``Authorization`` header and picks the strategy."""

from __future__ import annotations

from typing import Any

from litestar import Request

from appliance.errors import Unauthenticated
from appliance.gateway._logoff import SessionLogoffs
from appliance.gateway.auth.apikeys import ApiKeyStore, key_subject
from appliance.gateway.auth.jwt import JWTValidator
from appliance.gateway.auth.principal import Principal
from appliance.gateway.auth.sessions import Session

MAX_CREDENTIAL_CHARS = 8192
API_KEY_PREFIX = "apk_"


class ApiKeyAuth:
    """``Authorization: Bearer apk_<id>_<secret>``: a key from the gateway's own store."""

    def __init__(self, apikeys: ApiKeyStore) -> None:
        self.apikeys = apikeys

    async def authenticate(self, credential: str) -> Principal:
        info = self.apikeys.verify(credential)
        return Principal(
            subject=key_subject(info.id),
            auth_method="api_key",
            scopes=frozenset(info.scopes),
            client_id=info.name,
            key_id=info.id,
        )


class BearerJWTAuth:
    """``Authorization: Bearer <JWT>`` from the identity provider (refused when none is configured)."""

    def __init__(self, jwt: JWTValidator | None) -> None:
        self.jwt = jwt

    async def authenticate(self, credential: str) -> Principal:
        if self.jwt is None:
            raise Unauthenticated("bearer JWTs are not accepted here (no identity provider configured)")
        claims = await self.jwt.validate(credential)
        scope = claims.get("scope", "")
        # a space-separated string (RFC 8693) or a list; any other shape grants no scope
        scopes = frozenset(
            scope.split() if isinstance(scope, str) else [str(s) for s in scope] if isinstance(scope, list) else ()
        )
        groups = claims.get("groups") or []
        return Principal(
            subject=str(claims["sub"]),
            auth_method="jwt",
            groups=frozenset(str(g) for g in groups) if isinstance(groups, list) else frozenset(),
            scopes=scopes,
            client_id=str(claims.get("client_id") or claims.get("azp") or "") or None,
        )


class SessionAuth:
    """The browser's session cookie, signed in through OIDC."""

    def __init__(self, logoffs: SessionLogoffs, client_id: str | None) -> None:
        self.logoffs = logoffs
        self.client_id = client_id

    async def authenticate(self, request: Request[Any, Any, Any]) -> tuple[Principal, Session]:
        session = await self.logoffs.session_of(request)
        if session is None or not session.authenticated:
            raise Unauthenticated("sign in, or send a bearer token or API key")
        d = session.data
        principal = Principal(
            subject=d["subject"],
            auth_method="oidc",
            groups=frozenset(d.get("groups", [])),
            scopes=frozenset(),
            client_id=self.client_id,
            session_id=session.handle,
            display_name=d.get("name"),
        )
        return principal, session


class Authenticator:
    """Picks the strategy from the request: an API key, a bearer JWT, or else the session cookie."""

    def __init__(self, api_key: ApiKeyAuth, jwt: BearerJWTAuth, session: SessionAuth) -> None:
        self.api_key = api_key
        self.jwt = jwt
        self.session = session

    async def authenticate(self, request: Request[Any, Any, Any]) -> tuple[Principal, Session | None]:
        header = request.headers.get("authorization")
        if header is None:
            return await self.session.authenticate(request)
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential or len(credential) > MAX_CREDENTIAL_CHARS:
            raise Unauthenticated("use 'Authorization: Bearer <token or API key>'")
        strategy = self.api_key if credential.startswith(API_KEY_PREFIX) else self.jwt
        return await strategy.authenticate(credential), None
