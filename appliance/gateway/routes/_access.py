"""Who may call a handler, declared once on the handler (its ``opt``): a policy route for an API caller or a web
page, or nobody in particular (public). ``routes/_deps.py`` turns the declaration into the handler's ``ctx``
dependency when the app is built; a handler that declares nothing stops start-up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from appliance.gateway.policy import Route

ACCESS = "access"  # the key of the declaration in a handler's opt


@dataclass(frozen=True)
class Access:
    """A handler's declaration: how it is authorised and under which policy route (None: any signed-in principal)."""

    kind: Literal["api", "page", "public"]
    route: Route | None = None


def api(route: Route) -> dict[str, Access]:
    """An API handler: a request without a valid credential, or whose roles lack ``route``, is an audited error."""
    return {ACCESS: Access("api", route)}


def page(route: Route | None) -> dict[str, Access]:
    """A web page: without a session (or with one that ended) the browser goes to the login page; roles that lack
    ``route`` see an HTML refusal. None: any signed-in user."""
    return {ACCESS: Access("page", route)}


def public() -> dict[str, Access]:
    """No authorisation before the handler (health, readiness, sign-in, docs; ``/metrics`` checks its own)."""
    return {ACCESS: Access("public")}
