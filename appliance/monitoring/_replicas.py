"""What each replica really serves: the published fingerprint check, and loading a rolled-back version.

Each replica is asked what it holds (``holdings()``: adapter id -> the weights fingerprint it reports). An adapter
published to the replica's kind that it does not hold, or holds with another fingerprint, is an alert; a replica
that reports no fingerprint (TGI reads the signed list at start, checked by ``serve-launch``) cannot be checked
here and is counted as unverifiable, not passed.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog

__all__ = ["Alert", "FingerprintCheck", "check_fingerprints"]

log = structlog.get_logger("appliance.monitoring")

_MISSING = object()
_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Alert:
    """Something a person must look at (identifiers and figures only)."""

    kind: str  # fingerprint_mismatch | not_loaded | replica_unreachable | degraded | rollback_refused | ...
    message: str
    adapter: str | None = None
    version: int | None = None
    replica: str | None = None


@dataclass(frozen=True)
class FingerprintCheck:
    """One (adapter version, replica) pair: 1 the published fingerprint, 0 another or none, None unverifiable."""

    name: str
    version: int
    replica: str
    ok: bool | None


def _replicas(backend: Any) -> list[Any]:
    return list(getattr(backend, "replicas", []))


async def check_fingerprints(backend: Any, published: Iterable[Any]) -> tuple[list[FingerprintCheck], list[Alert]]:
    """Every replica against every adapter the registry published to its kind (``PublishedAdapter`` rows)."""
    checks: list[FingerprintCheck] = []
    alerts: list[Alert] = []
    published = list(published)
    for replica in _replicas(backend):
        kind = getattr(replica.client, "name", "")
        expected = [p for p in published if kind in p.targets]
        if not expected:
            continue
        try:
            holdings = await asyncio.wait_for(replica.client.holdings(), _TIMEOUT_S)
        except Exception as exc:
            alerts.append(
                Alert(
                    "replica_unreachable",
                    f"replica {replica.name} did not say what it serves ({type(exc).__name__})",
                    replica=replica.name,
                )
            )
            checks.extend(FingerprintCheck(p.name, p.version, replica.name, False) for p in expected)
            continue
        for p in expected:
            held = holdings.get(p.served_id, _MISSING)
            if held is _MISSING:
                alerts.append(
                    Alert(
                        "not_loaded",
                        f"replica {replica.name} does not serve {p.served_id}, which the registry published to it",
                        p.name,
                        p.version,
                        replica.name,
                    )
                )
                checks.append(FingerprintCheck(p.name, p.version, replica.name, False))
            elif held is None:
                checks.append(FingerprintCheck(p.name, p.version, replica.name, None))
            elif not hmac.compare_digest(str(held).lower().encode(), p.fingerprint.lower().encode()):
                alerts.append(
                    Alert(
                        "fingerprint_mismatch",
                        f"replica {replica.name} serves {p.served_id} with fingerprint {str(held)[:16]}..., not the "
                        f"published {p.fingerprint[:16]}...",
                        p.name,
                        p.version,
                        replica.name,
                    )
                )
                checks.append(FingerprintCheck(p.name, p.version, replica.name, False))
            else:
                checks.append(FingerprintCheck(p.name, p.version, replica.name, True))
    return checks, alerts
