"""Witnesses: each chain's signed head kept outside the audit store, so a cut or deleted chain is detectable.

Modelled on C2SP ``tlog-witness``: a witness holds, per origin (a writer lane), the newest signed checkpoint it was
given, ``(size, root)`` = the checkpoint's ``signed_seq`` and ``signed_hash`` with its signature. It refuses a
checkpoint older than the one it holds (smaller size) or inconsistent with it (same size, other root): the writer
then fails closed, so a writer restarted on a store cut back to an earlier clean stop, or on a deleted chain,
cannot write (and cannot get its shorter chain witnessed). ``appliance audit verify`` compares the store with what
each witness holds (:func:`compare_with_witnesses`). A hash chain has no compact consistency proof (C2SP uses a
Merkle tree), so a witness cannot tell a fork longer than its head from an extension; the Vault witness keeps
every checkpoint it was given (one key each), which verify can check with ``--witness-history``.

- :class:`FileWitness`: one JSON file per origin in a directory meant to be on another host's storage (an NFS
  export of the log host, a WORM share), replaced atomically under a lock.
- :class:`VaultWitness`: KV v2 on Vault/OpenBao, one key per checkpoint written with ``cas=0`` under a policy that
  may create and read but never update or delete (``policies/vault/audit-writer.hcl``).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from appliance._fs import atomic_write, exclusive_lock
from appliance.audit._checkpoint import writer_of_lane, writer_slug
from appliance.errors import ApplianceError, AuditUnavailable, Conflict, IntegrityViolation, NotFound, VaultForbidden

__all__ = [
    "FileWitness",
    "VaultWitness",
    "Witness",
    "WitnessedCheckpoint",
    "check_successor",
    "compare_with_witnesses",
    "origin_slug",
]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ORIGIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # a writer lane id (the sinks' rule)
_SIZE_DIGITS = 20


@dataclass(frozen=True)
class WitnessedCheckpoint:
    """A signed chain head: origin (writer lane), size (signed seq), root (signed hash) and the signature."""

    origin: str
    size: int
    root: str
    signature: str

    def as_dict(self) -> dict[str, Any]:
        return {"origin": self.origin, "size": self.size, "root": self.root, "signature": self.signature}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> WitnessedCheckpoint:
        """Parse a stored checkpoint; ``IntegrityViolation`` naming ``where`` when it is not one."""
        try:
            origin, size, root, signature = data["origin"], data["size"], data["root"], data["signature"]
        except (KeyError, TypeError):
            raise IntegrityViolation(f"witness {where}: not a witnessed checkpoint") from None
        if (
            not isinstance(origin, str)
            or not _ORIGIN.match(origin)
            or isinstance(size, bool)
            or not isinstance(size, int)
            or size < 1
            or not isinstance(root, str)
            or not _HEX64.match(root)
            or not isinstance(signature, str)
        ):
            raise IntegrityViolation(f"witness {where}: not a witnessed checkpoint")
        return cls(origin, size, root, signature)


@runtime_checkable
class Witness(Protocol):
    """Somewhere a chain's signed head is kept that the host's root cannot rewrite alone."""

    name: str

    def add(self, checkpoint: WitnessedCheckpoint) -> None:
        """Hold checkpoint as the origin's head; ``IntegrityViolation`` when it is older or inconsistent,
        ``AuditUnavailable`` when the witness cannot be reached or written."""
        ...

    def latest(self, origin: str) -> WitnessedCheckpoint | None:
        """The newest checkpoint held for origin (None: none)."""
        ...

    def origins(self) -> list[str]:
        """Every origin the witness holds a checkpoint for."""
        ...


def check_successor(held: WitnessedCheckpoint | None, new: WitnessedCheckpoint, witness: str) -> bool:
    """Whether new must be stored after held (False: the same checkpoint again); ``IntegrityViolation`` otherwise."""
    if held is None:
        return True
    if held.origin != new.origin:
        raise IntegrityViolation(f"witness {witness}: holds origin {held.origin!r}, not {new.origin!r}")
    if new.size < held.size:
        raise IntegrityViolation(
            f"witness {witness} holds chain {new.origin!r} signed through seq {held.size}; refused a checkpoint "
            f"through seq {new.size}: the chain in the store is shorter than what was witnessed (cut short or "
            "deleted). Restore the audit store; do not write on a cut chain"
        )
    if new.size == held.size:
        if new.root != held.root:
            raise IntegrityViolation(
                f"witness {witness} holds chain {new.origin!r} at seq {held.size} with another hash: the chain "
                "in the store was rewritten"
            )
        return False
    return True


def origin_slug(origin: str) -> str:
    """A key-name-safe, injective name for an origin (the writer slug rule)."""
    return writer_slug(origin)


# --- a file witness on another host's storage -----------------------------------------------------------------
class FileWitness:
    """The newest checkpoint per origin as ``<dir>/<origin>.json``, replaced atomically under ``<dir>/.lock``."""

    def __init__(self, directory: Path, name: str | None = None) -> None:
        self.directory = Path(directory)
        self.name = name or f"file:{self.directory}"

    def _path(self, origin: str) -> Path:
        if not _ORIGIN.match(origin):
            raise IntegrityViolation(f"witness {self.name}: invalid origin {origin!r}")
        return self.directory / f"{origin}.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise self._unopenable(exc) from None
        with exclusive_lock(self.directory / ".lock", self._unopenable):
            yield

    def _unopenable(self, exc: OSError) -> AuditUnavailable:
        return AuditUnavailable(f"witness {self.name} cannot be opened ({exc.strerror})")

    def _read(self, origin: str) -> WitnessedCheckpoint | None:
        path = self._path(origin)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AuditUnavailable(f"witness {self.name} cannot be read ({exc.strerror})") from None
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise IntegrityViolation(f"witness {self.name}: {path.name} is not JSON") from None
        return WitnessedCheckpoint.from_dict(data, f"{self.name}/{path.name}")

    def add(self, checkpoint: WitnessedCheckpoint) -> None:
        with self._locked():
            if not check_successor(self._read(checkpoint.origin), checkpoint, self.name):
                return
            path = self._path(checkpoint.origin)
            try:
                atomic_write(path, json.dumps(checkpoint.as_dict(), sort_keys=True).encode() + b"\n", mode=0o644)
            except OSError as exc:
                raise AuditUnavailable(f"witness {self.name} cannot be written ({exc.strerror})") from None

    def latest(self, origin: str) -> WitnessedCheckpoint | None:
        return self._read(origin)

    def origins(self) -> list[str]:
        try:
            names = sorted(p.name[: -len(".json")] for p in self.directory.glob("*.json"))
        except OSError as exc:
            raise AuditUnavailable(f"witness {self.name} cannot be listed ({exc.strerror})") from None
        return [n for n in names if _ORIGIN.match(n)]


# --- Vault/OpenBao KV v2, add-only ------------------------------------------------------------------------------
class VaultWitness:
    """One KV v2 secret per checkpoint, ``<prefix>/audit-witness/<writer>/<origin slug>/<size, 20 digits>``,
    written with ``cas=0`` (create only): the writer's policy (templated on its identity's ``audit_writer``) may
    create and read under its own ``<writer>/`` only, never update or delete."""

    def __init__(self, keys: Any, path: str = "audit-witness") -> None:
        self._keys = keys  # a VaultKeyService (add_secret, list_secrets, get_secret)
        self._path = path
        self.name = f"vault:{getattr(keys, '_addr', '?')}/{path}"

    def _origin_path(self, origin: str) -> str:
        if not _ORIGIN.match(origin):
            raise IntegrityViolation(f"witness {self.name}: invalid origin {origin!r}")
        return f"{self._path}/{writer_of_lane(origin)}/{origin_slug(origin)}"

    def sizes(self, origin: str) -> list[int]:
        """Every size witnessed for origin, ascending."""
        try:
            names = self._keys.list_secrets(self._origin_path(origin))
        except NotFound:
            return []
        except ApplianceError as exc:
            raise AuditUnavailable(f"witness {self.name} cannot be listed: {exc.code}") from None
        return sorted(int(n) for n in names if n.isdigit() and len(n) == _SIZE_DIGITS)

    def read(self, origin: str, size: int) -> WitnessedCheckpoint:
        """The checkpoint witnessed for origin at size."""
        where = f"{self._origin_path(origin)}/{size:0{_SIZE_DIGITS}d}"
        try:
            data = self._keys.get_secret(where)
        except ApplianceError as exc:
            raise AuditUnavailable(f"witness {self.name} cannot be read: {exc.code}") from None
        try:
            parsed = {**data, "size": int(data.get("size", "")), "origin": data.get("origin")}
        except ValueError:
            raise IntegrityViolation(f"witness {self.name}/{where}: not a witnessed checkpoint") from None
        checkpoint = WitnessedCheckpoint.from_dict(parsed, f"{self.name}/{where}")
        if checkpoint.origin != origin or checkpoint.size != size:
            raise IntegrityViolation(f"witness {self.name}/{where}: holds another origin or size")
        return checkpoint

    def latest(self, origin: str) -> WitnessedCheckpoint | None:
        sizes = self.sizes(origin)
        return self.read(origin, sizes[-1]) if sizes else None

    def history(self, origin: str) -> Iterable[WitnessedCheckpoint]:
        """Every checkpoint witnessed for origin, oldest first (one read each)."""
        for size in self.sizes(origin):
            yield self.read(origin, size)

    def add(self, checkpoint: WitnessedCheckpoint) -> None:
        if not check_successor(self.latest(checkpoint.origin), checkpoint, self.name):
            return
        where = f"{self._origin_path(checkpoint.origin)}/{checkpoint.size:0{_SIZE_DIGITS}d}"
        data = {k: str(v) for k, v in checkpoint.as_dict().items()}
        try:
            self._keys.add_secret(where, data)
        except (VaultForbidden, Conflict):
            # cas=0 on an existing key, or a policy refusing to update it: someone stored this size already
            if self.read(checkpoint.origin, checkpoint.size).root != checkpoint.root:
                raise IntegrityViolation(
                    f"witness {self.name} holds chain {checkpoint.origin!r} at seq {checkpoint.size} with another "
                    "hash: the chain in the store was rewritten"
                ) from None
        except ApplianceError as exc:
            raise AuditUnavailable(f"witness {self.name} cannot be written: {exc.code}") from None

    def _list(self, path: str) -> list[str]:
        try:
            return [s.rstrip("/") for s in self._keys.list_secrets(path)]
        except NotFound:
            return []
        except ApplianceError as exc:
            raise AuditUnavailable(f"witness {self.name} cannot be listed: {exc.code}") from None

    def origins(self) -> list[str]:
        origins = []
        for writer in self._list(self._path):
            for slug in self._list(f"{self._path}/{writer}"):
                sizes = sorted(n for n in self._list(f"{self._path}/{writer}/{slug}") if n.isdigit())
                if not sizes:
                    continue
                try:
                    data = self._keys.get_secret(f"{self._path}/{writer}/{slug}/{sizes[-1]}")
                except ApplianceError as exc:
                    raise AuditUnavailable(f"witness {self.name} cannot be read: {exc.code}") from None
                origin = data.get("origin")
                if (
                    isinstance(origin, str)
                    and _ORIGIN.match(origin)
                    and self._origin_path(origin).endswith(f"/{writer}/{slug}")
                ):
                    origins.append(origin)
        return sorted(origins)


# --- comparing a store with its witnesses ---------------------------------------------------------------------
@dataclass(frozen=True)
class WitnessFinding:
    """One disagreement between the store and a witness (kind: ``truncated``, ``deleted``, ``witness_mismatch``,
    ``witness``)."""

    writer_id: str
    kind: str
    witness: str
    seq: int | None
    message: str


def compare_with_witnesses(
    chains: Mapping[str, Any],
    witnesses: Sequence[Witness],
    *,
    history: bool = False,
    only: str | None = None,
) -> list[WitnessFinding]:
    """Compare each chain in the store (``writer -> ChainReport``: ``first_seq``, ``last_seq``, ``signed`` =
    {signed seq: hash} of its valid checkpoints) with what each witness holds: a witnessed chain that is absent
    is ``deleted``; one that ends before the witnessed seq is ``truncated``; one whose checkpoint at that seq
    vouches for another hash (or none) is ``witness_mismatch``. ``only`` restricts it to one writer. With
    ``history``, every checkpoint a Vault witness kept is compared, not only its newest."""
    findings: list[WitnessFinding] = []
    for witness in witnesses:
        try:
            origins = [only] if only is not None else witness.origins()
        except ApplianceError as exc:
            findings.append(WitnessFinding("-", "witness", witness.name, None, f"cannot be read: {exc.message}"))
            continue
        for origin in origins:
            try:
                if history and isinstance(witness, VaultWitness):
                    held = list(witness.history(origin))
                else:
                    latest = witness.latest(origin)
                    held = [] if latest is None else [latest]
            except ApplianceError as exc:
                findings.append(WitnessFinding(origin, "witness", witness.name, None, exc.message))
                continue
            for checkpoint in held:
                findings.extend(_compare_one(chains.get(origin), checkpoint, witness.name))
    return findings


def _compare_one(chain: Any, checkpoint: WitnessedCheckpoint, witness: str) -> list[WitnessFinding]:
    origin, size = checkpoint.origin, checkpoint.size
    held = f"witness {witness} holds chain {origin!r} signed through seq {size}"
    if chain is None or chain.last_seq is None:
        return [WitnessFinding(origin, "deleted", witness, size, f"{held}, but the store has no such chain (deleted)")]
    if chain.last_seq < size:
        return [
            WitnessFinding(
                origin, "truncated", witness, size, f"{held}, but the store's chain ends at seq {chain.last_seq} (cut)"
            )
        ]
    if chain.first_seq is not None and size < chain.first_seq:
        return []  # purged under a signed anchor (retention): nothing left to compare
    if chain.signed.get(size) != checkpoint.root:
        return [
            WitnessFinding(
                origin,
                "witness_mismatch",
                witness,
                size,
                f"{held}, but the store's chain has no valid checkpoint of that hash at that seq (cut or rewritten)",
            )
        ]
    return []
