"""Make every replica of a target load the list the registry just published, and say per replica what happened.

- embedded: ``POST /admin/reload`` (bearer ``serving.admin_token``; the engine checks the signature and every
  fingerprint before it changes anything), then ``/v1/models`` read back: the replica is ``loaded`` only when it
  holds exactly the published adapters, each with its published fingerprint.
- vLLM with ``serving.allow_runtime_lora_updates`` (``VLLM_ALLOW_RUNTIME_LORA_UPDATING``): the signed list and each
  adapter's files are checked as ``serve-launch`` checks them, then what is no longer published is unloaded and
  what is new loaded (``/v1/load_lora_adapter``), then ``/v1/models`` read back (ids only: vLLM reports none).
- A vLLM replica whose list a push delivers to its host (``sync_receipt``) never takes runtime loads (``failed``):
  the check above would run here, on files its host does not read; its host's serve-launch checks what arrived.
- TGI, and vLLM without runtime updates: they load adapters only at start; the list change restarts them through
  ``appliance serve-launch`` (the ansible ``tgi`` role's path unit), which checks the signed list before it starts
  the server: ``restarting``. The gateway routes to them only once they serve the adapter.

Replicas are reached concurrently, each under its own deadline, so one that is down never holds up the others.
A reason names what failed (error code, adapter ids); it never carries a token, a header or a response body.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from appliance.config import ReplicaSettings, Settings
from appliance.errors import ApplianceError
from appliance.serving._embedded import EmbeddedBackend
from appliance.serving._launch import verified_adapters
from appliance.serving._published import vllm_list_path
from appliance.serving._replicas import replica_name
from appliance.serving._signed import load_publication_keys
from appliance.serving._vllm import VLLMBackend

__all__ = ["ReplicaReload", "reload_replicas", "replica_list_path", "replicas_of"]

Outcome = Literal["loaded", "restarting", "failed"]
_MAX_NAMED = 5  # adapter ids named in a reason


@dataclass(frozen=True)
class ReplicaReload:
    """What one replica did with a new publication."""

    replica: str
    kind: str
    outcome: Outcome
    reason: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return asdict(self)


def replica_list_path(replica: ReplicaSettings, target_list: Path) -> Path:
    """Where this replica reads its list: its own ``list_path``, else the target's list on this host."""
    return Path(replica.list_path) if replica.list_path else target_list


def _named(ids: set[str]) -> str:
    shown = sorted(ids)[:_MAX_NAMED]
    more = len(ids) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def holding_problem(held: Mapping[str, str | None], published: Mapping[str, str | None]) -> str | None:
    """Why what a replica holds is not the publication (None when it is): missing, another build, or extra."""
    missing = set(published) - set(held)
    extra = set(held) - set(published)
    other_build = {
        a
        for a, fp in published.items()
        if a in held and fp is not None and held[a] is not None and not hmac.compare_digest(str(held[a]), fp)
    }
    problems = []
    if missing:
        problems.append(f"does not hold {_named(missing)}")
    if other_build:
        problems.append(f"holds another build of {_named(other_build)}")
    if extra:
        problems.append(f"still serves {_named(extra)}")
    return "; ".join(problems) or None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ApplianceError):
        return f"{exc.code}: {exc.message}"[:300]
    if isinstance(exc, TimeoutError):
        return "BACKEND_TIMEOUT: no answer within the reload deadline"
    return f"unexpected {type(exc).__name__}"


async def _embedded(settings: Settings, replica: ReplicaSettings, published: Mapping[str, str | None]) -> str | None:
    cfg = settings.serving
    token = cfg.admin_token.get_secret_value() if cfg.admin_token else None
    client = EmbeddedBackend(
        replica.url,
        timeout_s=cfg.reload_timeout_s,
        connect_timeout_s=cfg.connect_timeout_s,
        max_connections=2,
        retries=cfg.connect_retries,
        headers={"Authorization": f"Bearer {token}"} if token else None,
    )
    try:
        await client._post("/admin/reload", {})
        return holding_problem(await client.holdings(), published)
    finally:
        await client.aclose()


async def _vllm_runtime(
    settings: Settings, replica: ReplicaSettings, published: Mapping[str, str | None], list_path: Path
) -> str | None:
    cfg = settings.serving
    client = VLLMBackend(
        replica.url,
        published_file=list_path,
        base_model_name=cfg.vllm_base_model_name,
        allow_runtime_updates=True,
        timeout_s=cfg.reload_timeout_s,
        connect_timeout_s=cfg.connect_timeout_s,
        max_connections=2,
        retries=cfg.connect_retries,
    )
    try:
        # vLLM loads the directory as it finds it: the signed list and each adapter's files are checked first,
        # as serve-launch does before a start
        keys = await asyncio.to_thread(load_publication_keys, settings)
        await asyncio.to_thread(verified_adapters, "vllm", list_path, keys)
        await client.sync()
        served = await client._served_adapters()
        return holding_problem(dict.fromkeys(served), dict.fromkeys(published))
    finally:
        await client.aclose()


async def _one(
    settings: Settings, replica: ReplicaSettings, kind: str, published: Mapping[str, str | None]
) -> ReplicaReload:
    name = replica.name or replica_name(replica.url)
    cfg = settings.serving
    if kind == "vllm" and cfg.allow_runtime_lora_updates and replica.sync_receipt:
        # the check below runs on this host; the files vLLM would load are the pushed ones on its host, unchecked
        why = "its list is pushed to its host, where runtime LoRA loading would check nothing: use serve-launch"
        return ReplicaReload(name, kind, "failed", f"vllm {why}")
    if kind == "tgi" or (kind == "vllm" and not cfg.allow_runtime_lora_updates):
        why = "loads adapters only at start: serve-launch restarts it on the list change and checks it first"
        return ReplicaReload(name, kind, "restarting", f"{kind} {why}")
    try:
        async with asyncio.timeout(cfg.reload_timeout_s):
            if kind == "embedded":
                problem = await _embedded(settings, replica, published)
            else:
                list_path = replica_list_path(replica, vllm_list_path(settings.serving_dir))
                problem = await _vllm_runtime(settings, replica, published, list_path)
    except Exception as exc:  # any failure is this replica's: the others go on
        return ReplicaReload(name, kind, "failed", _reason(exc))
    if problem is not None:
        return ReplicaReload(name, kind, "failed", f"after the reload it {problem}")
    return ReplicaReload(name, kind, "loaded")


def replicas_of(settings: Settings, target: str) -> list[ReplicaSettings]:
    """The replicas that serve ``target`` (their ``kind``, else ``serving.backend``)."""
    cfg = settings.serving
    return [r for r in cfg.replica_list() if (r.kind or cfg.backend) == target]


async def reload_replicas(
    settings: Settings, target: str, published: Mapping[str, str | None], *, skip: Collection[str] = ()
) -> list[ReplicaReload]:
    """Ask every replica serving ``target`` (but those named in ``skip``) to load ``published`` (served id ->
    weights fingerprint: the target's whole list after the change); one result per replica asked, in order."""
    mine = [r for r in replicas_of(settings, target) if (r.name or replica_name(r.url)) not in skip]
    return list(await asyncio.gather(*(_one(settings, r, target, published) for r in mine)))
