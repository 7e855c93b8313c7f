"""Prometheus metrics of one gateway (its own registry, so several apps in one process do not collide).

Labels carry route templates, status codes, adapter names and reasons only: never subjects, prompts or keys.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("appliance_gateway_requests", "Requests answered", ["route", "status"], registry=r)
        self.latency = Histogram(
            "appliance_gateway_request_seconds",
            "Time to the last byte",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.tokens = Counter("appliance_gateway_tokens", "Tokens processed", ["adapter", "kind"], registry=r)
        self.denied = Counter("appliance_gateway_denied", "Requests refused", ["reason"], registry=r)
        self.rate_limited = Counter("appliance_gateway_rate_limited", "429s by limit", ["kind"], registry=r)
        self.extraction = Counter(
            "appliance_gateway_extraction_flags",
            "Principals flagged by the extraction detector",
            ["reason"],
            registry=r,
        )
        self.audit_failures = Counter("appliance_gateway_audit_failures", "Audit records that failed", registry=r)
        self.breakglass_uses = Counter("appliance_gateway_breakglass_uses", "Requests under break-glass", registry=r)
        self.policy_reloads = Counter("appliance_gateway_policy_reloads", "Policy reloads", ["result"], registry=r)
        self.sessions_expired = Counter(
            "appliance_gateway_sessions_expired", "Signed-in sessions ended by the sweeper", ["reason"], registry=r
        )
        self.logoffs_unrecorded = Gauge(
            "appliance_gateway_logoffs_unrecorded",
            "Swept sessions whose auth.logout the audit trail refused, waiting for the next sweep",
            registry=r,
        )
        self.logoffs_dropped = Counter(
            "appliance_gateway_logoffs_dropped", "Unrecorded auth.logout records dropped (queue full)", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
