"""Authentication: OIDC browser login, bearer JWTs, API keys, server-side sessions."""
