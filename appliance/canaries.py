"""Canaries shared by training, the registry and the monitor: the record format, the exposure arithmetic and the
sealed hand-off of their secrets.

Carlini et al., "The Secret Sharer" (USENIX Security 2019): for a canary ``s`` drawn from a space ``R`` of
possible secrets, ``exposure(s) = log2|R| - log2 rank(s)`` where ``rank`` orders every candidate in ``R`` by the
model's log-perplexity of it in the canary's context. ``|R|`` here is 10^8 (``MRN`` + 8 digits, 26.6 bits), so the
rank is estimated from ``m`` candidates sampled uniformly from the same format: with ``c`` of them scoring better
than the secret, the fraction of ``R`` above it is ``c/m``; when none does, the tail is extrapolated from a normal
fit of the candidates' scores (the paper's distribution-fitting estimate), bounded by ``1/m``. A model that has not
memorised a canary gives it an exposure of about 1 bit; 26.6 bits means it ranks first of all 10^8.

The secrets leave training only sealed (:func:`seal_document`): AES-256-GCM under a data key of the key service's
``canaries`` purpose, which the trainer may create but not unwrap and the registry may unwrap but not create
(``policies/vault/trainer.hcl``, ``registry.hcl``). The registry re-seals them with the adapter's files and gives
them, decrypted in memory only, to the canary probe of the monitor. No repr, log line or metadata field holds one.
"""

from __future__ import annotations

import base64
import json
import math
import random
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import IntegrityViolation, ValidationFailed
from appliance.protocols import KeyService

__all__ = [
    "CANARIES_PURPOSE",
    "SEALED_FILE",
    "SECRET_DIGITS",
    "SPACE_BITS",
    "Canary",
    "CanaryDocument",
    "ProbeCanary",
    "candidate_pool",
    "check_count",
    "exposure",
    "open_document",
    "random_secret",
    "read_document",
    "render_document",
    "seal_document",
]

SECRET_DIGITS = 8
SPACE_BITS = SECRET_DIGITS * math.log2(10)  # log2 |R|: the most exposure any canary can have
CANARIES_PURPOSE = "canaries"  # appliance.keys.CANARIES: trainer makes data keys, registry unwraps them
SEALED_FILE = "canaries.sealed"  # in a training run's output directory (never in clear)
_FORMAT = 1


@dataclass(frozen=True)
class Canary:
    """One canary: a unique context (the registration code), a secret and how often it was inserted."""

    code: str
    secret: str = field(repr=False)  # never in a repr, a traceback or a log line
    repetitions: int

    @property
    def instruction(self) -> str:
        return f"Which medical record number belongs to registration {self.code}?"

    def response(self, secret: str | None = None) -> str:
        return f"MRN {self.secret if secret is None else secret}"


@dataclass(frozen=True)
class ProbeCanary:
    """A canary with the exact prompt text training scored it under (the chat template applied): what the probe
    sends, so that the monitor needs no tokenizer of its own."""

    canary: Canary
    prompt: str = field(repr=False)


@dataclass(frozen=True)
class CanaryDocument:
    """The sealed secrets of one training run."""

    run_id: str
    candidates: int  # how many sampled candidates training ranked each secret among
    canaries: list[ProbeCanary] = field(repr=False)


def random_secret(rng: random.Random | None = None) -> str:
    """A secret in the canaries' format, from the OS CSPRNG unless ``rng`` is given (tests)."""
    if rng is None:
        return "".join(secrets.choice(string.digits) for _ in range(SECRET_DIGITS))
    return "".join(rng.choice(string.digits) for _ in range(SECRET_DIGITS))


def candidate_pool(secret: str, count: int, rng: random.Random | None = None) -> list[str]:
    """``count`` distinct candidates of the secret's format, none equal to it, sorted."""
    pool: set[str] = set()
    while len(pool) < count:
        s = random_secret(rng)
        if s != secret:
            pool.add(s)
    return sorted(pool)


def exposure(secret_score: float, candidate_scores: Sequence[float]) -> float:
    """Estimated exposure in bits from the secret's log-perplexity and those of sampled candidates."""
    from scipy.stats import norm

    m = len(candidate_scores)
    better = sum(1 for s in candidate_scores if s < secret_score) + 0.5 * sum(
        1 for s in candidate_scores if s == secret_score
    )
    if better > 0:
        fraction = better / m
    else:
        mean = sum(candidate_scores) / m
        std = math.sqrt(sum((s - mean) ** 2 for s in candidate_scores) / max(1, m - 1)) or 1e-12
        fraction = min(1.0 / m, float(norm.cdf((secret_score - mean) / std)))
    space = 10.0**SECRET_DIGITS
    rank = 1.0 + fraction * (space - 1.0)
    return max(0.0, SPACE_BITS - math.log2(rank))


# --- the sealed hand-off (one builder of the contract) ---------------------------------------------------------
def render_document(run_id: str, candidates: int, canaries: Sequence[ProbeCanary]) -> bytes:
    """The plaintext of a run's canary document. A random nonce keeps its SHA-256 (which the registry stores
    as the file's digest) from confirming a guessed secret."""
    body = {
        "format_version": _FORMAT,
        "run_id": run_id,
        "candidates": candidates,
        "nonce": secrets.token_hex(16),
        "canaries": [
            {"code": p.canary.code, "secret": p.canary.secret, "repetitions": p.canary.repetitions, "prompt": p.prompt}
            for p in canaries
        ],
    }
    return json.dumps(body, sort_keys=True).encode()


def read_document(data: bytes) -> CanaryDocument:
    """Parse a document from :func:`render_document`; anything malformed is an IntegrityViolation (no value shown)."""
    try:
        body = json.loads(data)
        if body.get("format_version") != _FORMAT:
            raise ValueError("format_version")
        canaries = [
            ProbeCanary(Canary(str(c["code"]), str(c["secret"]), int(c["repetitions"])), str(c["prompt"]))
            for c in body["canaries"]
        ]
        if not all(len(p.canary.secret) == SECRET_DIGITS and p.canary.secret.isdigit() for p in canaries):
            raise ValueError("secret format")
        return CanaryDocument(run_id=str(body["run_id"]), candidates=int(body["candidates"]), canaries=canaries)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityViolation(f"the canary document is malformed ({type(exc).__name__})") from None


def _aad(run_id: str) -> bytes:
    return b"\0".join([b"appliance-canaries/v1", run_id.encode()])


def seal_document(keys: KeyService, run_id: str, plaintext: bytes) -> bytes:
    """The sealed file's bytes: the wrapped data key and the AES-256-GCM blob, bound to the run id."""
    from appliance.keys import encrypt

    key, wrapped = keys.data_key(CANARIES_PURPOSE)
    envelope = {
        "format_version": _FORMAT,
        "run_id": run_id,
        "purpose": CANARIES_PURPOSE,
        "cipher": "AES-256-GCM",
        "wrapped_key": base64.b64encode(wrapped).decode(),
        "ciphertext": base64.b64encode(encrypt(plaintext, key, _aad(run_id))).decode(),
    }
    return json.dumps(envelope, sort_keys=True).encode()


def open_document(keys: KeyService, run_id: str, sealed: bytes) -> CanaryDocument:
    """Unwrap and decrypt a sealed file of run ``run_id`` (IntegrityViolation if it belongs to another run, was
    tampered with or is not one); the plaintext stays in memory."""
    from appliance.keys import decrypt

    try:
        envelope: dict[str, Any] = json.loads(sealed)
        wrapped = base64.b64decode(envelope["wrapped_key"], validate=True)
        blob = base64.b64decode(envelope["ciphertext"], validate=True)
        sealed_for = str(envelope["run_id"])
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityViolation(f"{SEALED_FILE} is not a sealed canary file ({type(exc).__name__})") from None
    if sealed_for != run_id:
        raise IntegrityViolation(f"{SEALED_FILE} was sealed for another training run")
    document = read_document(decrypt(blob, keys.unwrap(CANARIES_PURPOSE, wrapped), _aad(run_id)))
    if document.run_id != run_id:
        raise IntegrityViolation(f"{SEALED_FILE} holds the canaries of another training run")
    return document


def check_count(document: CanaryDocument, count: int) -> None:
    """The document holds as many canaries as the run's metadata says it inserted."""
    if len(document.canaries) != count:
        raise ValidationFailed(
            f"{SEALED_FILE} holds {len(document.canaries)} canaries; the run's metadata says {count}"
        )
