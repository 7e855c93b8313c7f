"""One monitor pass (``appliance monitor run --once``), in named phases.

1. ``check_replicas``: every replica against the fingerprints the registry published (alerts).
2. ``measure``: every published adapter version on its kept eval split and on each reference set, through the
   serving Backend the gateway uses (``appliance.evaluation.score_served``), judged (``_judge``).
3. extra per-adapter checks (``Monitor.checks``: async callables, e.g. canary probes) add their alerts.
4. ``record``: the points go to the registry's time series (one ``monitor.evaluate`` audit event per version).
5. ``act``: a version failing ``consecutive_failures`` runs in a row is marked degraded (``adapter.degraded``); with
   ``auto_rollback`` and when it is what ``production`` resolves to, the previous two-person-approved version
   serves again (``registry.rollback``) and is loaded on every replica.
6. the ``monitor.run`` audit event and the gauges.
Registry calls are synchronous (database, audit fsync) and run in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from appliance.audit import adapter_fields, audit_event
from appliance.config import Settings
from appliance.errors import ApplianceError, BackendError, NotFound
from appliance.monitoring._canary_phase import probe_version
from appliance.monitoring._judge import EVAL_SPLIT_REF, Comparison, failing_streak, judge
from appliance.monitoring._metrics import MonitorGauges, metrics_path
from appliance.monitoring._policy import MonitoringPolicy
from appliance.monitoring._replicas import Alert, FingerprintCheck, check_fingerprints
from appliance.registry import Actor, PublishedAdapter, Registry, RollbackResult, SeriesPoint

__all__ = ["MONITOR_ACTOR", "AdapterCheck", "CheckContext", "Monitor", "RunReport"]

log = structlog.get_logger("appliance.monitoring")

MONITOR_ACTOR = Actor(subject="appliance-monitor", roles=frozenset({"monitor"}), auth_method="system")


@dataclass(frozen=True)
class CheckContext:
    """What an extra per-adapter check gets: the version, the Backend, the run id and the registry."""

    adapter: PublishedAdapter
    backend: Any
    registry: Registry
    run_id: str
    settings: Settings


# An extra per-adapter check (canary probes plug in here): returns the alerts it raises, [] when all is well.
AdapterCheck = Callable[[CheckContext], Awaitable[list[Alert]]]


@dataclass
class RunReport:
    """One pass: the points measured, the fingerprint checks, the alerts, degradations and rollbacks."""

    run_id: str
    points: list[SeriesPoint] = field(default_factory=list)
    fingerprints: list[FingerprintCheck] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    streaks: dict[tuple[str, int], int] = field(default_factory=dict)
    degraded: list[tuple[str, int]] = field(default_factory=list)
    rollbacks: list[RollbackResult] = field(default_factory=list)
    canary_exposures: dict[tuple[str, int], float] = field(default_factory=dict)  # production versions probed

    @property
    def ok(self) -> bool:
        """No alert was raised."""
        return not self.alerts

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (figures and identifiers only)."""
        return {
            "run_id": self.run_id,
            "points": [
                {k: v for k, v in p.to_dict().items() if k != "figures"} | {"reasons": p.figures.get("reasons", [])}
                for p in self.points
            ],
            "fingerprints": [f.__dict__ for f in self.fingerprints],
            "alerts": [a.__dict__ for a in self.alerts],
            "failing_runs": {f"{n}-v{v}": s for (n, v), s in self.streaks.items()},
            "degraded": [f"{n}-v{v}" for n, v in self.degraded],
            "rollbacks": [r.__dict__ | {"targets": list(r.targets)} for r in self.rollbacks],
            "canary_exposures": {f"{n}-v{v}": round(e, 4) for (n, v), e in self.canary_exposures.items()},
        }


def parse_records(data: bytes, limit: int) -> list[Any]:
    """The first ``limit`` records of a kept set (JSONL of instruction/response) as training Records."""
    from appliance.training import Record

    records = []
    for line in data.splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        records.append(Record(item["instruction"], item["response"]))
        if len(records) >= limit:
            break
    return records


def _production(published: Sequence[PublishedAdapter]) -> dict[str, PublishedAdapter]:
    """What ``production`` resolves to per adapter: its newest published version."""
    out: dict[str, PublishedAdapter] = {}
    for p in published:
        if p.version > (out[p.name].version if p.name in out else 0):
            out[p.name] = p
    return out


def _per_record(values: Sequence[float | None]) -> list[float | None]:
    return [round(v, 6) if v is not None and math.isfinite(v) else None for v in values]


class Monitor:
    """Continuous evaluation of production adapters (module docstring)."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        backend: Any,
        policy: MonitoringPolicy,
        *,
        checks: Sequence[AdapterCheck] = (),
        actor: Actor = MONITOR_ACTOR,
        metrics_file: Path | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.backend = backend
        self.policy = policy
        self.checks = list(checks)
        self.actor = actor
        self.metrics_file = metrics_file or metrics_path(settings.data_dir)
        self._tokenizers: dict[str, Any] = {}

    async def _sync(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    # --- phases -----------------------------------------------------------------------------------------------
    async def run_once(self, adapter: str | None = None) -> RunReport:
        """One pass over every production adapter (or only ``adapter``)."""
        report = RunReport(run_id=f"mon-{secrets.token_hex(8)}")
        published = [p for p in await self._sync(self.registry.published) if adapter is None or p.name == adapter]
        if adapter is not None and not published:
            raise NotFound(f"no version of adapter {adapter!r} is published")
        report.fingerprints, alerts = await check_replicas(self.backend, published)
        report.alerts += alerts
        references = await self._references()
        for p in sorted(published, key=lambda a: (a.name, a.version)):  # older first: their points are the baseline
            report.points += await self.measure(p, references, report)
            for check in self.checks:
                report.alerts += await check(CheckContext(p, self.backend, self.registry, report.run_id, self.settings))
        for p in _production(published).values():
            outcome = await probe_version(self.registry, self.backend, p, self.actor)
            if outcome.max_exposure is not None:
                report.canary_exposures[(p.name, p.version)] = outcome.max_exposure
            if outcome.alert is not None:
                report.alerts.append(outcome.alert)
        if report.points:
            await self._sync(self.registry.record_series, report.points, self.actor)
        await self.act(published, report)
        await self._audit_run(report)
        self._write_gauges(report)
        for alert in report.alerts:
            log.warning(
                "monitoring.alert", kind=alert.kind, adapter=alert.adapter, version=alert.version, replica=alert.replica
            )
        return report

    async def _references(self) -> list[tuple[str, list[Any]]]:
        out = []
        for info in await self._sync(self.registry.references):
            data = await self._sync(self.registry.reference_records, info.name)
            out.append((info.name, parse_records(data, self.policy.sample_size)))
        return out

    def _tokenizer(self, base_model: str | None) -> Any:
        if base_model is None:
            raise NotFound("the published adapter names no base model (its tokenizer is needed to score)")
        if base_model not in self._tokenizers:
            from transformers import AutoTokenizer

            if not (Path(base_model) / "tokenizer_config.json").is_file():
                raise NotFound(f"base model tokenizer not found at {base_model} (needed to score through serving)")
            self._tokenizers[base_model] = AutoTokenizer.from_pretrained(base_model, local_files_only=True)
        return self._tokenizers[base_model]

    async def measure(
        self, p: PublishedAdapter, references: list[tuple[str, list[Any]]], report: RunReport
    ) -> list[SeriesPoint]:
        """The version scored through serving on its eval split and on every reference set, each judged."""
        from appliance.evaluation import EvalOptions

        info = await self._sync(self.registry.show, p.name, p.version)
        approval = (info.evaluation or {}).get("adapter")
        sets: list[tuple[str, list[Any], int]] = []
        run_length = info.hyperparameters.get("max_length")
        own_length = run_length if isinstance(run_length, int) and run_length > 0 else self.policy.max_length
        try:
            split_info, data = await self._sync(self.registry.eval_split, p.name, p.version)
            sets.append((EVAL_SPLIT_REF, parse_records(data, self.policy.sample_size), own_length))
            approval = (split_info.approval or {}).get("adapter") or approval
        except NotFound:
            report.alerts.append(Alert("no_eval_split", f"{p.served_id} has no kept eval split", p.name, p.version))
        sets += [(name, records, self.policy.max_length) for name, records in references]
        previous_version = await self._sync(self.registry.previous_approved, p.name, p.version)
        points = []
        for reference, records, max_length in sets:
            if not records:
                continue
            options = EvalOptions(max_length=max_length)
            point = await self._measure_one(p, reference, records, options, approval, previous_version, report)
            points.append(point)
        return points

    async def _measure_one(
        self,
        p: PublishedAdapter,
        reference: str,
        records: list[Any],
        options: Any,
        approval: dict[str, Any] | None,
        previous_version: int | None,
        report: RunReport,
    ) -> SeriesPoint:
        from appliance.evaluation import model_figures, score_served
        from appliance.serving import begin_routing

        def point(outcome: str, figures: dict[str, Any], mismatched: int = 0) -> SeriesPoint:
            return SeriesPoint(
                run_id=report.run_id,
                name=p.name,
                version=p.version,
                fingerprint=p.fingerprint,
                reference=reference,
                n=len(records),
                mismatched=mismatched,
                loss=figures.get("loss"),
                exact_match=figures.get("exact_match"),
                outcome=outcome,
                figures=figures,
            )

        try:
            tokenizer = self._tokenizer(p.base_model)
            begin_routing(p.fingerprint)  # only replicas holding the published fingerprint answer
            served = await score_served(self.backend, p.served_id, tokenizer, records, options)
        except (BackendError, NotFound) as exc:
            report.alerts.append(
                Alert("measurement_failed", f"{p.served_id} on {reference}: {exc.code}", p.name, p.version)
            )
            return point("error", {"reasons": [f"{exc.code}: {exc.message}"][:1]})
        figures = model_figures(served.scores, options)
        losses, matches = _per_record(served.scores.losses), [m for m in served.scores.matches]
        previous = None
        if reference != EVAL_SPLIT_REF and previous_version is not None:
            previous = await self._previous_scores(p.name, previous_version, reference, report)
        verdict = judge(
            figures,
            mismatched=served.mismatched,
            n=len(records),
            approval=approval,
            losses=losses,
            matches=matches,
            previous=previous,
            policy=self.policy,
        )
        stored = figures | {
            "max_length": options.max_length,
            "loss_measured": served.loss_measured,
            "reasons": verdict.reasons,
            "compared": verdict.compared,
            "records": {"loss": losses, "exact_match": matches},
        }
        return point(verdict.outcome, stored, served.mismatched)

    async def _previous_scores(self, name: str, version: int, reference: str, report: RunReport) -> Comparison | None:
        """The previous approved version's per-record scores on ``reference``: this run's, else its latest."""
        candidates = [q for q in report.points if q.name == name and q.version == version and q.reference == reference]
        if not candidates:
            candidates = await self._sync(self.registry.series, name, version, reference, 1)
        for q in candidates:
            records = q.figures.get("records") or {}
            if q.outcome in ("pass", "fail") and records:
                return Comparison(version, records.get("loss") or [], records.get("exact_match") or [])
        return None

    async def act(self, published: list[PublishedAdapter], report: RunReport) -> None:
        """Degradation from the time series, then rollback (policy ``auto_rollback``)."""
        production = {name: p.version for name, p in _production(published).items()}
        exposed = {(a.adapter, a.version): a.message for a in report.alerts if a.kind == "canary_exposure"}
        for p in sorted(published, key=lambda a: (a.name, -a.version)):
            history = await self._sync(self.registry.series, p.name, p.version, None, 50 * 20)
            runs: dict[str, list[str]] = {}
            for q in history:  # newest first; dicts keep insertion order
                runs.setdefault(q.run_id, []).append(q.outcome)
            streak = failing_streak(list(runs.values()))
            report.streaks[(p.name, p.version)] = streak
            if streak < self.policy.consecutive_failures and (p.name, p.version) not in exposed:
                continue
            info = await self._sync(self.registry.show, p.name, p.version)
            if info.status != "production":  # unpublished by a rollback earlier in this pass
                continue
            reasons = [
                r
                for q in report.points
                if q.name == p.name and q.version == p.version
                for r in q.figures.get("reasons", [])
            ]
            details = self._figures(p, report) | {"failing_runs": streak, "run_id": report.run_id}
            reason = f"failed {streak} monitor runs in a row: " + "; ".join(reasons[:3])
            if (p.name, p.version) in exposed:  # a privacy event: degraded at once
                reason = exposed[(p.name, p.version)]
                details["max_canary_exposure"] = round(report.canary_exposures[(p.name, p.version)], 4)
            if info.degraded_reason is None:  # already marked: no second adapter.degraded event
                await self._sync(self.registry.mark_degraded, p.name, p.version, self.actor, reason, details)
            report.degraded.append((p.name, p.version))
            report.alerts.append(Alert("degraded", reason, p.name, p.version))
            if not self.policy.auto_rollback or production.get(p.name) != p.version:
                continue
            try:
                result = await self._sync(self.registry.rollback, p.name, self.actor, reason=reason, details=details)
            except ApplianceError as exc:
                report.alerts.append(Alert("rollback_refused", exc.message, p.name, p.version))
                continue
            report.rollbacks.append(result)
            await self._ensure_loaded(result, report)

    async def _ensure_loaded(self, result: RollbackResult, report: RunReport) -> None:
        """The version rolled back to is loaded with its fingerprint on every replica of its targets (the registry's
        ``reach_replicas``, as after a publish: list copies, reloads, the ``registry.reload`` event), then checked."""
        from appliance.registry import reach_replicas

        reached = await self._sync(
            reach_replicas,
            self.registry,
            self.settings,
            change="rollback",
            name=result.name,
            version=result.to_version,
            targets=list(result.targets),
            actor=self.actor,
        )
        for r in reached.failed:
            report.alerts.append(
                Alert(
                    "reload_failed",
                    f"replica {r.replica} did not load the rollback",
                    result.name,
                    result.to_version,
                    r.replica,
                )
            )
        published = await self._sync(self.registry.published)
        wanted = [p for p in published if p.name == result.name and p.version == result.to_version]
        deadline = time.monotonic() + 30
        while True:
            _, alerts = await check_fingerprints(self.backend, wanted)
            if not alerts or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        report.alerts += alerts

    @staticmethod
    def _figures(p: PublishedAdapter, report: RunReport) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for q in report.points:
            if q.name == p.name and q.version == p.version and len(out) < 24:
                key = q.reference.replace("-", "_")[:40]
                out[f"loss_{key}"] = q.loss
                out[f"exact_match_{key}"] = q.exact_match
        return out

    async def _audit_run(self, report: RunReport) -> None:
        kinds: dict[str, int] = {}
        for alert in report.alerts:
            kinds[alert.kind] = kinds.get(alert.kind, 0) + 1
        details = {
            "run_id": report.run_id,
            "points": len(report.points),
            "alerts": len(report.alerts),
            "degraded": len(report.degraded),
            "rollbacks": len(report.rollbacks),
            **{f"alert_{k}"[:64]: v for k, v in sorted(kinds.items())[:20]},
        }
        actor = self.actor.audit()
        event = audit_event(
            "monitor.run", actor=actor, action="run", status="success" if report.ok else "error", details=details
        )
        await self._sync(self.registry.audit.record_sync, event)
        for alert in report.alerts:
            if alert.kind not in ("fingerprint_mismatch", "not_loaded") or alert.adapter is None:
                continue
            alert_event = audit_event(
                "monitor.alert",
                actor=actor,
                action=alert.kind,
                status="error",
                adapter=adapter_fields(alert.adapter, alert.version),
                details={"run_id": report.run_id, "kind": alert.kind, "replica": alert.replica},
            )
            await self._sync(self.registry.audit.record_sync, alert_event)

    def _write_gauges(self, report: RunReport) -> None:
        gauges = MonitorGauges()
        for q in report.points:
            labels = (q.name, str(q.version), q.reference)
            if q.loss is not None:
                gauges.loss.labels(*labels).set(q.loss)
            if q.exact_match is not None:
                gauges.exact_match.labels(*labels).set(q.exact_match)
            gauges.comparable.labels(*labels).set(0 if q.outcome == "not_comparable" else 1)
            gauges.passed.labels(*labels).set({"pass": 1, "fail": 0}.get(q.outcome, -1))
        for (name, version), streak in report.streaks.items():
            gauges.failing_runs.labels(name, str(version)).set(streak)
            gauges.degraded.labels(name, str(version)).set(1 if (name, version) in report.degraded else 0)
        for r in report.rollbacks:
            gauges.rolled_back.labels(r.name, str(r.from_version)).set(1)
        for (name, version), exposure in report.canary_exposures.items():
            gauges.canary_exposure.labels(name, str(version)).set(exposure)
        for f in report.fingerprints:
            if f.ok is not None:
                gauges.fingerprint_ok.labels(f.name, str(f.version), f.replica).set(1 if f.ok else 0)
        for alert in report.alerts:
            gauges.alerts.labels(alert.kind).inc()
        gauges.last_run.set(time.time())
        try:
            gauges.write(self.metrics_file)
        except OSError as exc:
            log.warning("monitoring.metrics_not_written", error=exc.strerror)


async def check_replicas(backend: Any, published: list[PublishedAdapter]) -> tuple[list[FingerprintCheck], list[Alert]]:
    """Phase 1: the published fingerprints on every replica."""
    return await check_fingerprints(backend, published)
