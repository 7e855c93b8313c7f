"""``open_audit_log(settings)``: the writer the settings describe, started, or ``AuditUnavailable``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from appliance.audit._schema import check_extra_fields
from appliance.audit._sinks._base import ChainReader, Sink
from appliance.audit._witness import FileWitness, VaultWitness, Witness
from appliance.audit._writer import AuditWriter
from appliance.config import Settings
from appliance.errors import ApplianceError, AuditUnavailable, ConfigError, ValidationFailed
from appliance.keys import open_key_service
from appliance.protocols import KeyService

__all__ = ["open_audit_log", "open_audit_store", "open_key_service_for_audit", "open_witnesses"]


def open_witnesses(settings: Settings, keys: KeyService) -> list[Witness]:
    """The witnesses ``[audit]`` configures (``witness_dir``, ``witness_vault``); none is a loud warning in
    production (a chain cut back to an earlier clean stop, or deleted, is then undetectable)."""
    cfg = settings.audit
    witnesses: list[Witness] = []
    if cfg.witness_dir is not None:
        witness_dir = Path(cfg.witness_dir)
        if not witness_dir.is_absolute():
            raise ConfigError(f"audit.witness_dir must be an absolute path (another host's mount), not {witness_dir}")
        if witness_dir.resolve().is_relative_to(settings.audit_dir.resolve()):
            raise ConfigError("audit.witness_dir must not be inside the audit store it witnesses")
        witnesses.append(FileWitness(witness_dir))
    if cfg.witness_vault:
        if settings.keys.backend != "vault" or not hasattr(keys, "add_secret"):
            raise ConfigError("audit.witness_vault needs keys.backend = 'vault' (KV v2 on Vault/OpenBao)")
        witnesses.append(VaultWitness(keys, cfg.witness_vault_path))
    if not witnesses and settings.environment == "production":
        import structlog

        structlog.get_logger("appliance.audit").warning(
            "audit.no_witness", detail="set audit.witness_dir and/or audit.witness_vault: a cut chain is undetectable"
        )
    return witnesses


def open_key_service_for_audit(settings: Settings) -> KeyService:
    """The appliance's key service (``appliance.keys``); ``AuditUnavailable`` when it cannot be opened."""
    try:
        return open_key_service(settings)
    except ApplianceError as exc:
        raise AuditUnavailable(f"the audit trail needs the key service: {exc.code}") from exc


def make_sink(settings: Settings, kind: Literal["file", "postgres"]) -> Sink:
    """A sink of the given kind configured from settings (not yet opened)."""
    if kind == "file":
        from appliance.audit._sinks.files import FileSink

        return FileSink(settings.audit_dir, segment_max_records=settings.audit.segment_max_records)
    if not settings.audit.database_url:
        raise ConfigError("audit.sink or audit.secondary_sink is 'postgres' but audit.database_url is not set")
    from appliance.audit._sinks.postgres import PostgresSink

    return PostgresSink(settings.audit.database_url)


def open_audit_log(settings: Settings, keys: KeyService | None = None, *, writer_id: str | None = None) -> AuditWriter:
    """Open (take, recover, probe with a durable ``audit.start`` record and a signed checkpoint) the audit log.

    The chain is ``writer_id`` (default ``settings.audit.writer_id``); when another process holds it, the next
    free lane ``<writer_id>.2``, ``.3``... is taken, so a CLI command can record while the gateway runs.
    Raises ``AuditUnavailable`` when the store cannot be written or the key service cannot sign: the caller must
    not start.
    """
    cfg = settings.audit
    if cfg.secondary_sink is not None and cfg.secondary_sink == cfg.sink:
        raise ConfigError("audit.secondary_sink must differ from audit.sink")
    try:
        extra_fields = check_extra_fields(cfg.extra_fields)
    except ValidationFailed as exc:
        raise ConfigError(exc.message) from exc
    if keys is None:
        keys = open_key_service_for_audit(settings)
    try:
        writer = AuditWriter(
            make_sink(settings, cfg.sink),
            keys,
            writer_id=writer_id or cfg.writer_id,
            secondary=None if cfg.secondary_sink is None else make_sink(settings, cfg.secondary_sink),
            checkpoint_every=cfg.checkpoint_every,
            checkpoint_interval_s=cfg.checkpoint_interval_s,
            extra_fields=extra_fields,
            record_timeout_s=cfg.record_timeout_s,
            witnesses=open_witnesses(settings, keys),
        )
    except ValueError as exc:
        raise ConfigError(f"invalid audit settings: {exc}") from exc
    return writer.start()


def open_audit_store(settings: Settings) -> ChainReader:
    """Read access to every chain in the primary store the settings name (verify, export, purge, tail)."""
    if settings.audit.sink == "file":
        from appliance.audit._sinks.files import FileStore

        return FileStore(settings.audit_dir)
    if not settings.audit.database_url:
        raise ConfigError("audit.sink is 'postgres' but audit.database_url is not set")
    from appliance.audit._sinks.postgres import PostgresStore

    return PostgresStore(settings.audit.database_url)
