"""The access policy (``policies/access.yaml``): IdP groups and scopes -> roles -> routes, adapters and limits.

The file is validated with pydantic when loaded. :class:`PolicyStore` keeps the last good policy: a reload that
fails validation raises :class:`~appliance.errors.ConfigError` naming the file and field, and the previous policy
keeps serving (the caller writes a ``policy.reload`` audit event either way).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from appliance.errors import ConfigError
from appliance.policy_files import parse_yaml_mapping, validation_problems

ADAPTER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Role names are written into every audit record (actor.roles): the trail's identifier (appliance/audit/_schema.py).
ROLE_NAME = re.compile(r"^[A-Za-z0-9_.:@/+=|#~-]{1,128}$")

# Routes a role may be granted. The gateway checks every request against one of these names.
Route = Literal[
    "inference",  # POST /v1/inference/adapter/{name}/{version} (+ stream)
    "openai",  # POST /v1/chat/completions, /v1/completions
    "models",  # GET /v1/models
    "console",  # the analyst web console
    "audit.search",  # compliance pages: search
    "audit.export",  # compliance pages: export
    "audit.verify",  # compliance pages: verify the hash chain
    "admin.keys",  # create / list / revoke API keys
    "admin.breakglass",  # grant / revoke emergency access
    "admin.policy",  # reload the access policy
    "metrics",  # GET /metrics
]
ALL_ROUTES: tuple[str, ...] = Route.__args__  # type: ignore[attr-defined]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Entitlement(IntEnum):
    """What the grants say about a requested adapter version before the catalog is read."""

    NONE = 0  # no grant covers it
    IF_PRODUCTION = 1  # only if it is the production version: a number under 'production', or the reverse
    FULL = 2  # a grant names it: '*', its number, or 'production' asked as 'production'


class AdapterGrant(_Strict):
    """One adapter a role may use: a name (or ``*``) and the versions (numbers, ``production`` or ``*``)."""

    name: str
    versions: list[int | Literal["production", "*"]] = Field(
        default_factory=lambda: list[int | Literal["production", "*"]](["production"])
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if value != "*" and not ADAPTER_NAME.match(value):
            raise ValueError(f"adapter name {value!r} must match {ADAPTER_NAME.pattern} or be '*'")
        return value

    @field_validator("versions")
    @classmethod
    def _versions(cls, value: list[int | str]) -> list[int | str]:
        if not value:
            raise ValueError("versions must name at least one version, 'production' or '*'")
        for v in value:
            if isinstance(v, int) and v < 1:
                raise ValueError(f"version {v} must be >= 1")
        return value

    def allows(self, name: str, version: int, *, is_production: bool) -> bool:
        if self.name not in ("*", name):
            return False
        return any(v == "*" or v == version or (v == "production" and is_production) for v in self.versions)

    def entitlement(self, name: str, version: int | None) -> Entitlement:
        """For a requested ``version`` (None: 'production'), without knowing what is published."""
        if self.name not in ("*", name):
            return Entitlement.NONE
        if "*" in self.versions or (version if version is not None else "production") in self.versions:
            return Entitlement.FULL
        if version is None or "production" in self.versions:  # the production version may be a granted one
            return Entitlement.IF_PRODUCTION
        return Entitlement.NONE


class RoleRule(_Strict):
    """A role: who holds it (IdP groups or OAuth scopes, any match) and what it may do."""

    description: str = ""
    groups: list[str] = Field(default_factory=list)  # IdP `groups` claim values that grant the role
    scopes: list[str] = Field(default_factory=list)  # OAuth scopes / API-key scopes that grant the role
    routes: list[Route] = Field(default_factory=list)
    adapters: list[AdapterGrant] = Field(default_factory=list)
    logprobs: bool = False  # details / top_n_tokens / decoder_input_details / logprobs
    limits: str = "default"  # name of a limit profile


class LimitProfile(_Strict):
    """Per-principal limits (per minute)."""

    requests_per_minute: int = Field(default=60, ge=1)
    tokens_per_minute: int = Field(default=20_000, ge=1)  # prompt + generated


class AdapterLimits(_Strict):
    """Limits shared by all principals on one adapter (per minute)."""

    requests_per_minute: int = Field(default=600, ge=1)
    tokens_per_minute: int = Field(default=200_000, ge=1)


class ExtractionRules(_Strict):
    """A simple model-extraction detector: bursts, and very many distinct prompts from one principal."""

    burst_window_s: float = Field(default=10.0, gt=0)
    burst_max_requests: int = Field(default=30, ge=1)
    distinct_window_s: float = Field(default=600.0, gt=0)
    distinct_max_prompts: int = Field(default=200, ge=1)
    throttle_s: float = Field(default=300.0, gt=0)  # how long a flagged principal is refused


class BreakGlassRules(_Strict):
    """Emergency access: which roles an admin may grant and for how long at most."""

    grantable_roles: list[str] = Field(default_factory=list)
    max_duration_s: int = Field(default=14_400, ge=60)
    min_reason_chars: int = Field(default=20, ge=1)


class Limits(_Strict):
    profiles: dict[str, LimitProfile] = Field(default_factory=lambda: {"default": LimitProfile()})
    adapter: AdapterLimits = Field(default_factory=lambda: AdapterLimits())
    extraction: ExtractionRules = Field(default_factory=lambda: ExtractionRules())


@dataclass(frozen=True)
class AdmissionDecision:
    """The policy's one answer for one request (:meth:`AccessPolicy.decide`): admission and the routes read this
    object and never ask the policy again, so every part of the request is decided under the same rules."""

    entitlement: Entitlement  # to the requested version, before the catalog is read
    grants: tuple[AdapterGrant, ...]  # the roles' adapter grants, for the version the request resolves to
    logprobs: bool  # details / top_n_tokens / logprobs may be asked for and are returned
    profile: LimitProfile  # the principal's buckets
    adapter_limits: AdapterLimits  # the adapter's buckets, shared by all principals
    extraction: ExtractionRules  # the extraction detector's rules

    def allows(self, name: str, version: int, *, is_production: bool) -> bool:
        """Whether a grant covers this published version (``production``: if it is the production one)."""
        return any(grant.allows(name, version, is_production=is_production) for grant in self.grants)


class AccessPolicy(_Strict):
    """The whole access policy file."""

    version: Literal[1] = 1
    roles: dict[str, RoleRule]
    limits: Limits = Field(default_factory=lambda: Limits())
    breakglass: BreakGlassRules = Field(default_factory=lambda: BreakGlassRules())

    @field_validator("roles")
    @classmethod
    def _role_names(cls, value: dict[str, RoleRule]) -> dict[str, RoleRule]:
        bad = sorted(name for name in value if not ROLE_NAME.match(name))
        if bad:
            raise ValueError(f"role name(s) {bad} must be 1-128 letters, digits or _ . : @ / + = | # ~ -")
        return value

    @model_validator(mode="after")
    def _references(self) -> AccessPolicy:
        for name, role in self.roles.items():
            if role.limits not in self.limits.profiles:
                raise ValueError(f"role {name!r} uses unknown limit profile {role.limits!r}")
        for role_name in self.breakglass.grantable_roles:
            if role_name not in self.roles:
                raise ValueError(f"breakglass.grantable_roles names unknown role {role_name!r}")
        for name, role in self.roles.items():
            if not role.groups and not role.scopes and name not in self.breakglass.grantable_roles:
                raise ValueError(f"role {name!r} has no groups or scopes and is not grantable by break-glass")
        return self

    # --- queries -------------------------------------------------------------------------------------------
    def roles_for(self, groups: Iterable[str], scopes: Iterable[str]) -> frozenset[str]:
        """The roles a principal with these IdP groups and scopes holds."""
        g, s = set(groups), set(scopes)
        return frozenset(name for name, r in self.roles.items() if g & set(r.groups) or s & set(r.scopes))

    def may_route(self, roles: Iterable[str], route: str) -> bool:
        return any(route in self.roles[r].routes for r in roles if r in self.roles)

    def may_adapter(self, roles: Iterable[str], name: str, version: int, *, is_production: bool) -> bool:
        return any(
            grant.allows(name, version, is_production=is_production)
            for r in roles
            if r in self.roles
            for grant in self.roles[r].adapters
        )

    def decide(self, roles: Iterable[str], name: str, version: int | None) -> AdmissionDecision:
        """Everything admission asks about one request, in one answer: the entitlement to the requested adapter
        version (None: 'production'), the grants that check the version it resolves to, logprob rights, the most
        generous limit profile among the roles (the default profile when they have none) and the shared limits."""
        rules = [self.roles[r] for r in roles if r in self.roles]
        grants = tuple(grant for rule in rules for grant in rule.adapters)
        profiles = [self.limits.profiles[rule.limits] for rule in rules]
        return AdmissionDecision(
            entitlement=max((grant.entitlement(name, version) for grant in grants), default=Entitlement.NONE),
            grants=grants,
            logprobs=any(rule.logprobs for rule in rules),
            profile=(
                max(profiles, key=lambda p: (p.requests_per_minute, p.tokens_per_minute))
                if profiles
                else self.limits.profiles.get("default", LimitProfile())
            ),
            adapter_limits=self.limits.adapter,
            extraction=self.limits.extraction,
        )


def parse_policy(text: str, source: str = "<policy>") -> AccessPolicy:
    """Parse and validate a policy document; every problem is listed in one ConfigError."""
    raw = parse_yaml_mapping(text, source)
    try:
        return AccessPolicy.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid access policy: {validation_problems(exc)}") from exc


@dataclass(frozen=True)
class LoadedPolicy:
    policy: AccessPolicy
    sha256: str
    path: Path | None


class PolicyStore:
    """Holds the policy in force; :meth:`reload` swaps it only when the new file validates."""

    def __init__(self, path: Path | None, policy: AccessPolicy | None = None) -> None:
        self.path = path
        if policy is not None:
            self._current = LoadedPolicy(policy, hashlib.sha256(policy.model_dump_json().encode()).hexdigest(), None)
        else:
            if path is None:
                raise ConfigError("no access policy: give a path or a policy")
            self._current = self._load(path)
        self._previous = self._current

    @staticmethod
    def _load(path: Path) -> LoadedPolicy:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read access policy {path}: {exc.strerror}") from exc
        policy = parse_policy(data.decode("utf-8", errors="replace"), str(path))
        return LoadedPolicy(policy, hashlib.sha256(data).hexdigest(), path)

    @property
    def current(self) -> AccessPolicy:
        return self._current.policy

    @property
    def sha256(self) -> str:
        return self._current.sha256

    def reload(self) -> tuple[str, str]:
        """Re-read the file; returns (old sha256, new sha256). On error the old policy stays and this raises."""
        if self.path is None:
            raise ConfigError("this policy was not loaded from a file")
        old = self._current.sha256
        self._previous = self._current
        self._current = self._load(self.path)
        return old, self._current.sha256

    def undo_reload(self) -> None:
        """Put back the policy the last :meth:`reload` replaced (its audit record could not be written)."""
        self._current = self._previous


def policy_path(policies_dir: Path) -> Path:
    return policies_dir / "access.yaml"
