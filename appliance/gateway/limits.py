"""Rate limits and a simple extraction detector (in memory, per gateway process).

Limits are token buckets refilled continuously: ``requests_per_minute`` and ``tokens_per_minute`` (prompt +
generated) per principal and per adapter. A request needs one request token and a non-negative token balance;
the generation's real token count is charged afterwards (the balance may go negative, which makes the next
request wait). A refusal is :class:`~appliance.errors.RateLimited` carrying the seconds until it would pass.

The extraction detector flags a principal that sends a burst of requests or very many distinct prompts within a
window, and throttles it for ``throttle_s``; the caller writes the audit event and counts the metric.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from appliance.errors import RateLimited
from appliance.gateway.policy import AdapterLimits, ExtractionRules, LimitProfile


@dataclass
class _Bucket:
    capacity: float
    rate: float  # per second
    level: float
    stamp: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0 when it is)."""
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing / self.rate


@dataclass(frozen=True)
class LimitDecision:
    kind: str  # "principal.requests" | "principal.tokens" | "adapter.requests" | "adapter.tokens"
    retry_after: float


class RateLimiter:
    """Token buckets keyed by (kind, key); sized from the policy on first use and resized when it changes."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._max_keys = max_keys

    def _bucket(self, kind: str, key: str, per_minute: int, now: float) -> _Bucket:
        b = self._buckets.get((kind, key))
        if b is None or b.capacity != per_minute:
            if len(self._buckets) >= self._max_keys:
                self._buckets.clear()  # bounded memory; a reset only ever lets a caller through sooner
            b = _Bucket(float(per_minute), per_minute / 60.0, float(per_minute), now)
            self._buckets[(kind, key)] = b
        else:
            b.refill(now)
        return b

    def check(self, principal: str, profile: LimitProfile, adapter: str, adapter_limits: AdapterLimits) -> None:
        """Take one request from each request bucket, or raise RateLimited (taking nothing)."""
        now = self._clock()
        pairs = [
            ("principal.requests", self._bucket("pr", principal, profile.requests_per_minute, now), 1.0),
            ("principal.tokens", self._bucket("pt", principal, profile.tokens_per_minute, now), 0.0),
            ("adapter.requests", self._bucket("ar", adapter, adapter_limits.requests_per_minute, now), 1.0),
            ("adapter.tokens", self._bucket("at", adapter, adapter_limits.tokens_per_minute, now), 0.0),
        ]
        waits = [
            (kind, b.wait_for(need) if need else (b.wait_for(0.0) if b.level < 0 else 0.0)) for kind, b, need in pairs
        ]
        blocked = [(kind, w) for kind, w in waits if w > 0]
        if blocked:
            kind, wait = max(blocked, key=lambda kw: kw[1])
            raise RateLimited(f"rate limit reached ({kind.replace('.', ' ')} per minute)", retry_after=_ceil(wait))
        for _, b, need in pairs:
            b.level -= need

    def charge_tokens(self, principal: str, adapter: str, tokens: int) -> None:
        """Charge a finished generation's prompt + generated tokens."""
        now = self._clock()
        for kind, key in (("pt", principal), ("at", adapter)):
            b = self._buckets.get((kind, key))
            if b is not None:
                b.refill(now)
                b.level -= tokens


def _ceil(seconds: float) -> float:
    return float(max(1, math.ceil(seconds)))


@dataclass
class _Activity:
    recent: deque[float] = field(default_factory=deque)
    prompts: OrderedDict[bytes, float] = field(default_factory=OrderedDict)
    flagged_until: float = 0.0


@dataclass(frozen=True)
class ExtractionFlag:
    reason: str  # "burst" | "distinct_prompts"
    count: int
    throttle_s: float


class ExtractionDetector:
    """Flags bursts and very many distinct prompts per principal; a flagged principal is throttled."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_principals: int = 50_000) -> None:
        self._clock = clock
        self._activity: dict[str, _Activity] = {}
        self._salt = secrets.token_bytes(16)  # prompt fingerprints are keyed, in memory only, never stored
        self._max = max_principals

    def throttled_for(self, principal: str) -> float:
        a = self._activity.get(principal)
        remaining = 0.0 if a is None else a.flagged_until - self._clock()
        return max(0.0, remaining)

    def check_throttle(self, principal: str) -> None:
        wait = self.throttled_for(principal)
        if wait > 0:
            raise RateLimited("throttled: unusual request pattern (review pending)", retry_after=_ceil(wait))

    def observe(self, principal: str, prompt: str, rules: ExtractionRules) -> ExtractionFlag | None:
        """Record one request; returns a flag when this request tips the principal over a threshold."""
        now = self._clock()
        a = self._activity.get(principal)
        if a is None:
            if len(self._activity) >= self._max:
                self._activity = {k: v for k, v in self._activity.items() if v.flagged_until > now}
            a = self._activity[principal] = _Activity()
        a.recent.append(now)
        while a.recent and now - a.recent[0] > rules.burst_window_s:
            a.recent.popleft()
        fp = hashlib.blake2b(prompt.encode("utf-8", "replace"), key=self._salt, digest_size=16).digest()
        a.prompts[fp] = now
        a.prompts.move_to_end(fp)
        while a.prompts and now - next(iter(a.prompts.values())) > rules.distinct_window_s:
            a.prompts.popitem(last=False)
        while len(a.prompts) > rules.distinct_max_prompts + 1:
            a.prompts.popitem(last=False)
        if a.flagged_until > now:
            return None
        flag: ExtractionFlag | None = None
        if len(a.recent) > rules.burst_max_requests:
            flag = ExtractionFlag("burst", len(a.recent), rules.throttle_s)
        elif len(a.prompts) > rules.distinct_max_prompts:
            flag = ExtractionFlag("distinct_prompts", len(a.prompts), rules.throttle_s)
        if flag is not None:
            a.flagged_until = now + rules.throttle_s
            a.recent.clear()
            a.prompts.clear()
        return flag
