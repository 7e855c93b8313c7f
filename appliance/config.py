"""Typed settings: one TOML file plus ``APPLIANCE_*`` environment variables, loaded once by the entry point.

Precedence (highest first): explicit keyword arguments, environment (``APPLIANCE_KEYS__BACKEND=vault``), the TOML
file (``--config``, else ``$APPLIANCE_CONFIG``, else ``./appliance.toml`` when present), the defaults below.
Unknown keys are refused in every section, and so are ``APPLIANCE_*`` variables that name no setting (except
``APPLIANCE_CONFIG``), each named with its file or variable and the nearest known key: a misspelt control must
not be dropped while the operator believes it is on.
Every path is resolved from one data directory (``./var`` in development; the LUKS volumes on hospital hardware).
Nothing reads settings at import time.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import tomllib
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from appliance.errors import ConfigError

ENV_PREFIX = "APPLIANCE_"
ENV_NESTED = "__"
ENV_NOT_SETTINGS = frozenset({"config"})  # APPLIANCE_CONFIG names the file; it is no setting


class _Section(BaseModel):
    """One section of the settings: an unknown key is refused, never dropped (a misspelt control stays off)."""

    model_config = ConfigDict(extra="forbid")


class KeysSettings(_Section):
    """Where keys live: Vault/OpenBao (hvac) or the local keystore file (single small node, demo)."""

    backend: Literal["local", "vault"] = "local"
    vault_addr: str | None = None  # e.g. https://vault.vlan:8200
    vault_token: SecretStr | None = None  # token auth (tests, operator)
    vault_role_id: str | None = None  # AppRole auth (services)
    vault_secret_id: SecretStr | None = None
    vault_ca_cert: str | None = None  # path to the CA bundle for Vault's TLS
    vault_transit_mount: str = "transit"
    vault_kv_mount: str = "secret"
    vault_key_prefix: str = "appliance"  # transit key names are "<prefix>-<purpose>"
    vault_timeout_s: float = 5.0  # seconds per Vault call


class RegistrySettings(_Section):
    """Adapter registry database."""

    database_url: str | None = None  # None -> SQLite at <data_dir>/registry.db; postgresql+psycopg://... to scale out


class AuditSettings(_Section):
    """Audit trail storage and checkpointing."""

    sink: Literal["file", "postgres"] = "file"
    database_url: str | None = None  # for sink = "postgres"
    secondary_sink: Literal["file", "postgres"] | None = None  # best-effort copy; the primary must succeed
    writer_id: str = "node-1"  # one hash chain per writer (each gateway its own)
    checkpoint_every: int = 1000  # records between signed checkpoints
    checkpoint_interval_s: float = 60.0  # seconds between signed checkpoints when traffic is low
    segment_max_records: int = 100_000  # records per segment file before rolling over
    # extra top-level event fields a deployment records, by kind; there is no free-text kind
    extra_fields: dict[str, Literal["identifier", "integer", "number", "boolean"]] = Field(default_factory=dict)
    record_timeout_s: float = 10.0  # seconds a record may wait for durability before AuditUnavailable (hung disk)
    # Witnesses of every chain's signed head, outside the store (a cut or deleted chain is then detectable, and a
    # writer refuses to write on one): a directory on another host's storage (NFS/WORM mount), and/or
    # Vault/OpenBao KV v2 (needs keys.backend = "vault"), add-only under policies/vault/audit-writer.hcl.
    witness_dir: str | None = None  # e.g. /mnt/audit-witness (another host); None: no file witness
    witness_vault: bool = False  # KV v2 <keys.vault_kv_mount>/<keys.vault_key_prefix>/<witness_vault_path>/...
    witness_vault_path: str = "audit-witness"


class ReplicaSettings(_Section):
    """One inference server behind the gateway (``[[serving.replicas]]``)."""

    url: str  # the server's base URL, e.g. http://10.20.0.11:8081
    kind: Literal["embedded", "tgi", "vllm"] | None = None  # None -> serving.backend
    weight: float = Field(default=1.0, gt=0, le=1000)  # relative capacity: load is in-flight requests / weight
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$")  # None -> host:port of the URL
    # Where the registry also writes this replica's copy of its target's signed list (a replica that does not read
    # <data_dir>/serving/<kind>/ on this host, e.g. a mounted directory of its own); None -> it reads that one.
    list_path: str | None = None
    # A file the provisioned push (ansible publish_sync role) rewrites after each delivery of ``list_path`` to the
    # replica's host ({"delivered", "list_sha256", "signature_sha256"}): the registry waits for the copy it just
    # wrote to be delivered before it asks the replica to load it; None -> the replica reads list_path itself.
    sync_receipt: str | None = None


class ServingSettings(_Section):
    """Which inference backends the gateway talks to."""

    backend: Literal["embedded", "tgi", "vllm"] = "embedded"
    url: str = "http://127.0.0.1:8081"  # the backend's base URL when ``replicas`` is empty (a one-replica list)
    replicas: list[ReplicaSettings] = Field(default_factory=list)  # every server; the gateway routes among them
    replica_probe_initial_s: float = Field(default=0.25, gt=0, le=60)  # first /health probe after a failure
    replica_probe_max_s: float = Field(default=10.0, gt=0, le=600)  # probe back-off ceiling (doubles each miss)
    replica_refresh_s: float = Field(default=2.0, gt=0, le=600)  # seconds between re-reads of what replicas hold
    reload_timeout_s: float = Field(default=60.0, gt=0, le=600)  # per replica: a publication's reload + read-back
    sync_timeout_s: float = Field(default=120.0, gt=0, le=3600)  # a list copy's push to its replica's host (receipt)
    timeout_s: float = 120.0  # seconds per generation request
    connect_timeout_s: float = 2.0
    max_concurrent: int = 64  # connection pool size
    connect_retries: int = 2  # retries of a request that failed before it was sent (never after)
    # vLLM
    vllm_base_model_name: str | None = None  # the base model's served name; None -> first base under /v1/models
    allow_runtime_lora_updates: bool = False  # vLLM started with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True
    # embedded engine
    base_model: str | None = None  # path of the base model directory
    max_queue: int = 64  # queued requests before 429
    max_batch_size: int = 8
    validation_workers: int = Field(default=2, ge=1)  # tokenizer threads (TGI's name); + max_queue waiting, then 429
    max_total_tokens: int = 2048
    max_input_tokens: int = 1024
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto -> cuda when present
    torch_threads: int = 0  # CPU threads for the engine's forward passes; 0 -> torch's default
    admin_token: SecretStr | None = None  # bearer token for POST /admin/reload; None -> loopback callers only
    # The registry's publication public keys (file from `appliance keyservice public-keys registry-signing --out`,
    # root-owned, written at provisioning): what the engine and the TGI/vLLM launchers check a published list's
    # signature with. None -> ask the key service (keys.backend) for them. Never a file beside the list.
    publication_public_keys: str | None = None

    def replica_list(self) -> list[ReplicaSettings]:
        """``replicas``, or ``url`` with ``backend`` as the one replica when none are listed."""
        return list(self.replicas) or [ReplicaSettings(url=self.url, kind=self.backend)]


class GatewaySettings(_Section):
    """The Litestar front door."""

    host: str = "127.0.0.1"
    port: int = 8443
    public_url: str = "http://127.0.0.1:8443"
    oidc_issuer: str | None = None  # the hospital IdP; None disables browser login
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    jwt_audience: str = "appliance"  # expected `aud` of service bearer tokens
    jwt_algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256", "EdDSA"])
    jwks_cache_ttl_s: float = 300.0
    session_idle_timeout_s: int = 900  # idle logoff (HIPAA 164.312(a)(2)(iii))
    session_absolute_timeout_s: int = 28_800
    # Seconds between sweeps that end (and audit) sessions past either limit that no request has touched since.
    session_sweep_interval_s: float = Field(default=60.0, gt=0, le=3600)
    secure_cookies: bool = True
    max_body_bytes: int = 1_048_576
    # Gateway processes on this host (uvicorn workers, one audit lane each). More than one needs the shared
    # state store (redis): with "memory" each process would keep its own limits and sessions.
    workers: int = Field(default=1, ge=1, le=64)
    metrics_token: SecretStr | None = None  # bearer token for /metrics; None -> loopback only
    tls_cert_file: str | None = None  # PEM certificate chain; required in production (164.312(e)(1))
    tls_key_file: str | None = None  # PEM private key (mode 0600)
    oidc_ca_cert: str | None = None  # CA bundle for the IdP's TLS (None: the system store)
    catalog_ttl_s: float = 2.0  # seconds the registry's published set is cached (un-publish takes effect within it)
    # Where rate limits, the extraction detector and browser sessions live: "memory" (this process; one gateway)
    # or "redis" (shared by every gateway behind the load balancer; unreachable -> requests refused with 503).
    state_store: Literal["memory", "redis"] = "memory"
    redis_url: SecretStr | None = None  # redis://[user:password@]host:6379/0 or rediss:// (TLS); may hold a password
    redis_ca_cert: str | None = None  # CA bundle for rediss:// (None: the system store)
    # Client certificate and key (PEM paths) for a Redis that requires them (tls-auth-clients): both or neither.
    redis_client_cert: str | None = None
    redis_client_key: str | None = None
    redis_timeout_s: float = Field(default=1.0, gt=0, le=30)  # seconds per Redis call (connect, pool wait, answer)
    redis_max_connections: int = Field(default=32, ge=1, le=1024)  # per gateway; more requests wait for one
    redis_key_prefix: str = Field(default="appliance:gw:", pattern=r"^[A-Za-z0-9:_.-]{1,64}$")


class IntakeSettings(_Section):
    """Dataset intake: validation limits, deduplication and the train/eval split (`appliance data ...`)."""

    max_record_bytes: int = Field(default=262_144, gt=0)  # bytes per JSONL line
    eval_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)  # share of records held out, by whole subjects
    split_seed: int = 0  # the split is a pure function of the input and this seed
    near_duplicate_threshold: float = Field(default=0.85, gt=0.0, le=1.0)  # MinHash Jaccard; 1.0 disables
    minhash_num_perm: int = Field(default=128, ge=16, le=1024)  # MinHash permutations
    # suspected identifiers a second scrub pass still finds, per 1000 prepared records; above it, refused
    max_residual_per_1000_records: float = Field(default=5.0, ge=0.0)


class TrainingSettings(_Section):
    """Defaults for training runs (each can be overridden on the command line)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every: int = 50  # steps between checkpoints


class Settings(BaseSettings):
    """All settings. Load with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED,
        extra="forbid",
        frozen=True,
    )

    data_dir: Path = Path("var")
    policies_dir: Path = Path("policies")
    environment: Literal["development", "production"] = "development"
    log_level: str = "INFO"

    keys: KeysSettings = Field(default_factory=KeysSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    intake: IntakeSettings = Field(default_factory=IntakeSettings)

    _toml_file: Path | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = _active_toml_path()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    # --- paths, all under the data directory -------------------------------------------------------------
    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def serving_dir(self) -> Path:
        return self.data_dir / "serving"

    @property
    def audit_dir(self) -> Path:
        return self.data_dir / "audit"

    @property
    def keystore_path(self) -> Path:
        return self.data_dir / "keystore"

    @property
    def ledger_path(self) -> Path:
        return self.data_dir / "ledger.db"

    @property
    def registry_url(self) -> str:
        return self.registry.database_url or f"sqlite:///{(self.data_dir / 'registry.db').resolve()}"

    def redacted(self) -> dict[str, Any]:
        """The effective values with every secret replaced by '**********' (for `appliance config show`)."""
        return json.loads(self.model_dump_json())  # SecretStr dumps as '**********'

    def fingerprint(self) -> str:
        """A short hash of the redacted settings, recorded in artifacts for provenance."""
        blob = json.dumps(self.redacted(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


_TOML_OVERRIDE: list[Path] = []


def _active_toml_path() -> Path | None:
    if _TOML_OVERRIDE:
        return _TOML_OVERRIDE[-1]
    env = os.environ.get("APPLIANCE_CONFIG")
    if env:
        return Path(env)
    default = Path("appliance.toml")
    return default if default.is_file() else None


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Load settings once; an invalid file or variable is a ConfigError naming the field."""
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file not found: {config_file}")
    if config_file is not None:
        _TOML_OVERRIDE.append(config_file)
    try:
        toml_path = _active_toml_path()
        if toml_path is not None and not toml_path.is_file():
            raise ConfigError(f"config file not found: {toml_path} (from APPLIANCE_CONFIG)")
        unknown = [*(_unknown_in_file(toml_path) if toml_path else ()), *_unknown_in_environment(os.environ)]
        if unknown:
            raise ConfigError("unknown settings (refused, not ignored): " + "; ".join(unknown))
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"invalid settings: {problems}") from exc
    except ValueError as exc:  # e.g. malformed TOML
        raise ConfigError(f"invalid settings: {exc}") from exc
    finally:
        if config_file is not None:
            _TOML_OVERRIDE.pop()


# --- unknown keys: named with where they came from and the nearest known key ----------------------------------
def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The settings model a field holds (its section), or None for a plain value."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _quoted(key: str) -> str:
    return f'"{key}"'


def _nearest(key: str, known: list[str], render: Callable[[str], str] = _quoted) -> str:
    """The known key closest to a misspelt one, else every known key."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"did you mean {render(close[0])}?"
    return "known: " + ", ".join(render(k) for k in sorted(known))


def _walk(model: type[BaseModel], data: Mapping[str, Any], section: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    """The path of every key in ``data`` that ``model`` (at ``section``) does not know, sections recursed into."""
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            yield (*section, key)
            continue
        sub = _section_model(field.annotation)
        if sub is not None and isinstance(value, Mapping):
            yield from _walk(sub, value, (*section, key))


def _model_at(section: tuple[str, ...]) -> type[BaseModel]:
    model: type[BaseModel] = Settings
    for name in section:
        sub = _section_model(model.model_fields[name].annotation)
        assert sub is not None  # _walk recursed only into sections
        model = sub
    return model


def _unknown_in_file(path: Path) -> Iterator[str]:
    """One message per key of the TOML file that no setting has: the file, the section, the key, the nearest."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable TOML file ({exc})") from exc
    for *section, key in _walk(Settings, data, ()):
        known = list(_model_at(tuple(section)).model_fields)
        if section:
            where = "[" + ".".join(section) + "]"
            yield f'{path}: section {where} has no key "{key}" ({_nearest(key, known)})'
        else:
            if isinstance(data.get(key), Mapping):
                yield f"{path}: unknown section [{key}] ({_nearest(key, known, lambda k: f'[{k}]')})"
            else:
                yield f'{path}: unknown top-level key "{key}" ({_nearest(key, known)})'


def _unknown_in_environment(environ: Mapping[str, str]) -> Iterator[str]:
    """One message per APPLIANCE_* variable that names no setting (names are read case-insensitively)."""
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split(ENV_NESTED)
        if len(parts) == 1 and parts[0] in ENV_NOT_SETTINGS:
            continue
        problem = _variable_problem(parts, environ[name])
        if problem is not None:
            yield f"environment variable {name}: {problem}"


def _variable_name(path: list[str]) -> str:
    return ENV_PREFIX + ENV_NESTED.join(path).upper()


def _variable_in(section: list[str], key: str) -> str:
    return _variable_name([*section, key])


def _variable_problem(parts: list[str], value: str) -> str | None:
    """Why ``APPLIANCE_<parts joined by __>`` names no setting, or None when it names one."""
    model: type[BaseModel] = Settings
    for depth, part in enumerate(parts):
        section = parts[:depth]
        field = model.model_fields.get(part)
        if field is None:
            where = f"section [{'.'.join(section)}] has no key" if section else "there is no top-level setting"
            near = _nearest(part, list(model.model_fields), functools.partial(_variable_in, section))
            return f'{where} "{part}" ({near})'
        sub = _section_model(field.annotation)
        last = depth + 1 == len(parts)
        if sub is None:  # a value: only a mapping value (audit.extra_fields) has keys below it
            if last or typing.get_origin(field.annotation) is dict:
                return None
            return f"{_variable_name(parts[: depth + 1])} is a value, not a section"
        if last:  # a whole section as JSON
            try:
                data = json.loads(value)
            except ValueError:
                return None  # not JSON: pydantic names the section and the problem
            found = [".".join(path) for path in _walk(sub, data, tuple(parts))] if isinstance(data, Mapping) else []
            return f"no such settings in its JSON: {', '.join(found)}" if found else None
        model = sub
    return None
