"""Rate limits and a simple extraction detector, behind one async seam (:class:`LimitStore`).

Two stores: :class:`MemoryLimitStore` (this process; the default, one gateway) and
``appliance.gateway.state_redis.RedisLimitStore`` (shared by every gateway: Lua scripts, one round trip).

Limits are token buckets refilled continuously: ``requests_per_minute`` and ``tokens_per_minute`` (prompt +
generated) per principal and per adapter. A request needs one request token and a non-negative token balance;
the generation's real token count is charged afterwards (the balance may go negative, which makes the next
request wait). A refusal is :class:`~appliance.errors.RateLimited` carrying the seconds until it would pass.

The extraction detector flags a principal that sends a burst of requests or very many distinct prompts within a
window, and throttles it for ``throttle_s``; the caller writes the audit event and counts the metric. Prompts are
fingerprinted with a keyed BLAKE2b (16 bytes); the text itself is never kept.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from appliance.errors import LimitKind, RateLimited
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
    """Token buckets keyed by (kind, key); sized from the policy on first use and resized (balance kept) when the
    principal's profile changes."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._max_keys = max_keys

    def _bucket(self, kind: str, key: str, per_minute: int, now: float) -> _Bucket:
        b = self._buckets.get((kind, key))
        if b is None:
            if len(self._buckets) >= self._max_keys:
                self._buckets.clear()  # bounded memory; a reset only ever lets a caller through sooner
            b = _Bucket(float(per_minute), per_minute / 60.0, float(per_minute), now)
            self._buckets[(kind, key)] = b
        else:
            b.refill(now)
            if b.capacity != per_minute:  # another profile: resized, its balance (or debt) kept, never refilled
                b.capacity, b.rate, b.level = float(per_minute), per_minute / 60.0, min(b.level, float(per_minute))
        return b

    def check(self, principal: str, profile: LimitProfile, adapter: str, adapter_limits: AdapterLimits) -> None:
        """Take one request from each request bucket, or raise RateLimited (taking nothing).

        A token bucket needs a non-negative balance (generations are charged afterwards). Plain locals, no lists:
        this runs on every request of a benchmarked gateway.
        """
        now = self._clock()
        pr = self._bucket("pr", principal, profile.requests_per_minute, now)
        pt = self._bucket("pt", principal, profile.tokens_per_minute, now)
        ar = self._bucket("ar", adapter, adapter_limits.requests_per_minute, now)
        at = self._bucket("at", adapter, adapter_limits.tokens_per_minute, now)
        kind, wait = "", 0.0
        w = pr.wait_for(1.0)
        if w > wait:
            kind, wait = "principal.requests", w
        w = pt.wait_for(0.0)
        if w > wait:
            kind, wait = "principal.tokens", w
        w = ar.wait_for(1.0)
        if w > wait:
            kind, wait = "adapter.requests", w
        w = at.wait_for(0.0)
        if w > wait:
            kind, wait = "adapter.tokens", w
        if wait > 0:
            raise rate_limited(kind, wait)
        pr.level -= 1.0
        ar.level -= 1.0

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


_BUCKETS: tuple[LimitKind, ...] = ("principal.requests", "principal.tokens", "adapter.requests", "adapter.tokens")


def rate_limited(kind: str, wait: float) -> RateLimited:
    """The refusal for a full bucket (``kind`` as in :class:`LimitDecision`), the same from every store."""
    for bucket in _BUCKETS:
        if bucket == kind:
            message = f"rate limit reached ({bucket.replace('.', ' ')} per minute)"
            return RateLimited(message, kind=bucket, retry_after=_ceil(wait))
    raise ValueError(f"unknown rate limit kind {kind!r}")


def throttled(wait: float) -> RateLimited:
    """The refusal for a principal the extraction detector flagged."""
    return RateLimited(THROTTLED, kind="extraction", retry_after=_ceil(wait))


THROTTLED = "throttled: unusual request pattern (review pending)"


def prompt_fingerprint(salt: bytes, prompt: str) -> bytes:
    """A keyed 16-byte BLAKE2b of the prompt: equal prompts match, the text cannot be read back or guessed
    without the salt (which never leaves the gateway: per process in memory, from the key service for Redis)."""
    return hashlib.blake2b(prompt.encode("utf-8", "replace"), key=salt, digest_size=16).digest()


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
            raise throttled(wait)

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
        fp = prompt_fingerprint(self._salt, prompt)
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


class LimitStore(Protocol):
    """Where the limits and the detector keep their state. ``admit`` is one step (one Redis round trip): the
    throttle check, then the buckets (RateLimited, taking nothing), then the detector's observation."""

    async def admit(
        self,
        principal: str,
        profile: LimitProfile,
        adapter: str,
        adapter_limits: AdapterLimits,
        prompt: str,
        rules: ExtractionRules,
    ) -> ExtractionFlag | None:
        """Raise RateLimited (or StateStoreUnavailable); else return a flag when this request tips the principal
        over an extraction threshold (it is throttled from now on; the caller audits and refuses it)."""
        ...

    async def charge_tokens(self, principal: str, adapter: str, tokens: int) -> None:
        """Charge a finished generation's tokens; never raises (the next admission fails closed instead)."""
        ...


class MemoryLimitStore:
    """The in-process store: a :class:`RateLimiter` and an :class:`ExtractionDetector` (one gateway)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limiter = RateLimiter(clock=clock)
        self.detector = ExtractionDetector(clock=clock)

    async def admit(
        self,
        principal: str,
        profile: LimitProfile,
        adapter: str,
        adapter_limits: AdapterLimits,
        prompt: str,
        rules: ExtractionRules,
    ) -> ExtractionFlag | None:
        self.detector.check_throttle(principal)
        self.limiter.check(principal, profile, adapter, adapter_limits)
        return self.detector.observe(principal, prompt, rules)

    async def charge_tokens(self, principal: str, adapter: str, tokens: int) -> None:
        self.limiter.charge_tokens(principal, adapter, tokens)
