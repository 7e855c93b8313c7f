"""The local keystore: one JSON file in the data directory for a single small node and the demo.

The file holds versioned key material (never printed or logged) and a few secrets. It is created on first use
with mode 0600 (exclusively: temp file + ``link``), refused when it is wider, owned by another user, a symlink or
not a regular file, and every change is a locked read-modify-write (``flock`` on ``<keystore>.lock``) written
atomically (temp + fsync + rename + directory fsync). Readers take a shared lock and cache the parsed file until
its inode or change time moves.

Wrapped data keys are ``b"local:v<N>:" + base64(nonce || AES-256-GCM(KEK v<N>, data key))`` with the key name and
version as associated data, so a wrapped key only unwraps under the purpose and version it names.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import fcntl
import json
import os
import re
import stat
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from appliance._fs import fsync_dir, write_new
from appliance.errors import IntegrityViolation, KeystoreInsecure, KeyUnavailable, NotFound, ValidationFailed
from appliance.keys._names import check_name, check_secret_path
from appliance.keys._signature import format_signature, parse_signature
from appliance.keys._status import KeyInfo, KeyServiceStatus

__all__ = ["LocalKeyService"]

log = structlog.get_logger("appliance.keys.local")

FORMAT_VERSION = 1
AES = "aes256-gcm96"
ED25519 = "ed25519"
_WRAPPED = re.compile(rb"^local:v([1-9][0-9]{0,9}):([A-Za-z0-9+/=]+)$")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _new_version(key_type: str) -> dict[str, str]:
    version = {"created": _now(), "hmac": _b64(os.urandom(32))}
    if key_type == AES:
        version["aes"] = _b64(AESGCM.generate_key(bit_length=256))
    else:
        version["ed25519"] = _b64(os.urandom(32))  # an Ed25519 private key is its 32-byte seed
    return version


@dataclass
class _Snapshot:
    identity: tuple[int, int, int, int]
    doc: dict[str, Any]


class LocalKeyService:
    """``KeyService`` over a keystore file (mode 0600) in the data directory."""

    backend = "local"

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._lock_path = self._path.with_name(self._path.name + ".lock")
        self._cache: _Snapshot | None = None
        self._mutex = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalKeyService(path={str(self._path)!r})"

    # --- KeyService ------------------------------------------------------------------------------------------
    def data_key(self, purpose: str) -> tuple[bytes, bytes]:
        """A fresh 256-bit data key and its wrapping under the purpose's current key encryption key."""
        plaintext = AESGCM.generate_key(bit_length=256)
        return plaintext, self._wrap(check_name(purpose), plaintext)

    def unwrap(self, purpose: str, wrapped: bytes) -> bytes:
        """The data key inside wrapped (any version of the purpose's key encryption key)."""
        name = check_name(purpose)
        version, blob = self._parse_wrapped(name, wrapped)
        key = self._key(name, AES, create=False)
        material = key["versions"].get(str(version))
        if material is None:
            raise IntegrityViolation(f"wrapped data key names version {version} of key {name!r}, which is unknown")
        if len(blob) < 12 + 16:
            raise IntegrityViolation(f"wrapped data key for {name!r} is truncated")
        try:
            return AESGCM(_unb64(material["aes"])).decrypt(blob[:12], blob[12:], self._aad(name, version))
        except InvalidTag:
            raise IntegrityViolation(f"wrapped data key for {name!r} failed authentication") from None

    def rewrap(self, purpose: str, wrapped: bytes) -> bytes:
        """The same data key wrapped under the purpose's newest key version."""
        return self._wrap(check_name(purpose), self.unwrap(purpose, wrapped))

    def rotate(self, name: str) -> None:
        """Add a new current version to the named key (which must exist)."""
        self._key(check_name(name), None, create=False)

        def mutate(doc: dict[str, Any]) -> None:
            key = doc["keys"][name]
            key["latest"] += 1
            key["versions"][str(key["latest"])] = _new_version(key["type"])

        self._update(mutate)
        log.info("keys.rotated", key=name, backend="local", version=self._key(name, None, create=False)["latest"])

    def hmac(self, name: str, data: bytes) -> bytes:
        """HMAC-SHA256 of data under the named key's current version (32 bytes)."""
        return self.versioned_hmac(name, data)[1]

    def versioned_hmac(self, name: str, data: bytes, version: int | None = None) -> tuple[int, bytes]:
        """(version, HMAC-SHA256 of data) under that version of the named key (the current one when None)."""
        key = self._key(check_name(name), AES, create=version is None, any_type=True)
        used = int(key["latest"]) if version is None else version
        material = key["versions"].get(str(used)) if isinstance(used, int) and not isinstance(used, bool) else None
        if material is None:
            raise NotFound(f"key {name!r} has no version {version!r} in the local keystore")
        mac = crypto_hmac.HMAC(_unb64(material["hmac"]), hashes.SHA256())
        mac.update(data)
        return used, mac.finalize()

    def sign(self, name: str, data: bytes) -> bytes:
        """Ed25519 signature of data under the named key's current version, in the portable form."""
        key = self._key(check_name(name), ED25519, create=True)
        latest = key["latest"]
        private = Ed25519PrivateKey.from_private_bytes(_unb64(key["versions"][str(latest)]["ed25519"]))
        return format_signature(latest, private.sign(data))

    def verify(self, name: str, data: bytes, signature: bytes) -> bool:
        """Whether signature is valid for data under the key version it names."""
        key = self._key(check_name(name), ED25519, create=False)
        try:
            version, raw = parse_signature(signature)
        except ValidationFailed:
            return False
        material = key["versions"].get(str(version))
        if material is None:
            return False
        public = self._public(material)
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(raw, data)
        except InvalidSignature:
            return False
        return True

    def public_key(self, name: str) -> bytes:
        """The raw 32-byte public key of the named signing key's current version."""
        key = self._key(check_name(name), ED25519, create=True)
        return self._public(key["versions"][str(key["latest"])])

    def public_keys(self, name: str) -> dict[int, bytes]:
        """Every version's raw 32-byte public key of the named signing key."""
        key = self._key(check_name(name), ED25519, create=True)
        return {int(v): self._public(material) for v, material in key["versions"].items()}

    # --- secrets ---------------------------------------------------------------------------------------------
    def get_secret(self, path: str) -> dict[str, str]:
        """The secret stored at path (for example ``gateway/session``); NotFound when there is none."""
        secret = self._read()["secrets"].get(check_secret_path(path))
        if secret is None:
            raise NotFound(f"no secret at {path!r} in the local keystore")
        return dict(secret)

    def put_secret(self, path: str, data: Mapping[str, str]) -> None:
        """Store (replace) the secret at path."""
        check_secret_path(path)
        if not data or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise KeyUnavailable(f"secret {path!r} must be a non-empty mapping of strings to strings")

        def mutate(doc: dict[str, Any]) -> None:
            doc["secrets"][path] = dict(data)

        self._update(mutate)
        log.info("keys.secret_written", path=path, backend="local")

    # --- operator view ---------------------------------------------------------------------------------------
    def create(self, name: str, key_type: str = AES) -> None:
        """Create a key ahead of use (operator), of type aes256-gcm96 or ed25519; an existing one is kept."""
        if key_type not in (AES, ED25519):
            raise ValidationFailed(f"key type must be {AES!r} or {ED25519!r}, not {key_type!r}")
        key = self._key(check_name(name), key_type, create=True)
        if key["type"] != key_type:
            raise KeyUnavailable(f"key {name!r} already exists as a {key['type']} key")

    def status(self) -> KeyServiceStatus:
        """What an operator may see: where the keystore is and each key's type and versions (no material)."""
        doc = self._read() if self._path.exists() else {"keys": {}, "secrets": {}}
        keys = [
            KeyInfo(name=name, type=key["type"], latest_version=key["latest"], versions=len(key["versions"]))
            for name, key in sorted(doc["keys"].items())
        ]
        return KeyServiceStatus(backend="local", location=str(self._path), sealed=False, keys=keys)

    # --- internals -------------------------------------------------------------------------------------------
    @staticmethod
    def _aad(name: str, version: int) -> bytes:
        return f"appliance-kek:{name}:v{version}".encode()

    @staticmethod
    def _public(material: Mapping[str, str]) -> bytes:
        private = Ed25519PrivateKey.from_private_bytes(_unb64(material["ed25519"]))
        return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def _wrap(self, name: str, plaintext: bytes) -> bytes:
        key = self._key(name, AES, create=True)
        version = key["latest"]
        nonce = os.urandom(12)
        blob = nonce + AESGCM(_unb64(key["versions"][str(version)]["aes"])).encrypt(
            nonce, plaintext, self._aad(name, version)
        )
        return f"local:v{version}:".encode() + base64.b64encode(blob)

    @staticmethod
    def _parse_wrapped(name: str, wrapped: bytes) -> tuple[int, bytes]:
        if isinstance(wrapped, bytes) and wrapped.startswith(b"vault:"):
            raise KeyUnavailable(
                f"data key for {name!r} was wrapped by Vault/OpenBao; the local keystore cannot unwrap it"
            )
        match = _WRAPPED.match(wrapped) if isinstance(wrapped, bytes) else None
        if match is None:
            raise IntegrityViolation(f"wrapped data key for {name!r} is not in the local keystore's format")
        try:
            return int(match.group(1)), base64.b64decode(match.group(2), validate=True)
        except binascii.Error:
            raise IntegrityViolation(f"wrapped data key for {name!r} is not valid base64") from None

    def _key(self, name: str, key_type: str | None, *, create: bool, any_type: bool = False) -> dict[str, Any]:
        try:
            key = self._read().get("keys", {}).get(name)
        except NotFound:  # no keystore yet
            key = None
        if key is None:
            if not create or key_type is None:
                raise NotFound(f"no key named {name!r} in the local keystore")

            def mutate(doc: dict[str, Any]) -> None:
                if name not in doc["keys"]:
                    doc["keys"][name] = {"type": key_type, "latest": 1, "versions": {"1": _new_version(key_type)}}

            key = self._update(mutate)["keys"][name]
            log.info("keys.created", key=name, type=key["type"], backend="local")
        if key_type is not None and not any_type and key["type"] != key_type:
            raise KeyUnavailable(f"key {name!r} is a {key['type']} key and cannot be used as a {key_type} key")
        return key

    @contextlib.contextmanager
    def _locked(self, mode: int) -> Iterator[None]:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise KeyUnavailable(f"cannot open the keystore lock {self._lock_path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _identity(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.lstat(self._path)
        except FileNotFoundError:
            return None
        self._check(st)
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)

    def _check(self, st: os.stat_result) -> None:
        if not stat.S_ISREG(st.st_mode):
            raise KeystoreInsecure(f"keystore {self._path} is not a regular file (symlinks are refused)")
        if st.st_uid != os.geteuid():
            raise KeystoreInsecure(
                f"keystore {self._path} is owned by uid {st.st_uid}, not by this process's uid {os.geteuid()}"
            )
        if st.st_mode & 0o077:
            raise KeystoreInsecure(
                f"keystore {self._path} has mode {stat.S_IMODE(st.st_mode):04o}; it must be 0600 "
                f"(run: chmod 600 {self._path})"
            )

    def _read(self) -> dict[str, Any]:
        with self._mutex:
            identity = self._identity()
            if identity is None:
                raise NotFound(f"the local keystore {self._path} does not exist yet")
            if self._cache is not None and self._cache.identity == identity:
                return self._cache.doc
        with self._locked(fcntl.LOCK_SH):
            doc, identity = self._load()
        with self._mutex:
            self._cache = _Snapshot(identity, doc)
        return doc

    def _load(self) -> tuple[dict[str, Any], tuple[int, int, int, int]]:
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise KeystoreInsecure(f"keystore {self._path} is a symlink; refused") from None
            if exc.errno == errno.ENOENT:
                raise NotFound(f"the local keystore {self._path} does not exist yet") from None
            raise KeyUnavailable(f"cannot read the keystore {self._path}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            self._check(st)
            with os.fdopen(os.dup(fd), "rb") as fh:
                raw = fh.read()
        finally:
            os.close(fd)
        try:
            doc = json.loads(raw)
        except ValueError:
            raise KeyUnavailable(f"the keystore {self._path} is not valid JSON (damaged?)") from None
        if not isinstance(doc, dict) or doc.get("format_version") != FORMAT_VERSION:
            found = doc.get("format_version") if isinstance(doc, dict) else None
            raise KeyUnavailable(
                f"the keystore {self._path} has format_version {found!r}; this appliance reads {FORMAT_VERSION}"
            )
        return doc, (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)

    def _update(self, mutate: Any) -> dict[str, Any]:
        """Locked read-modify-write; creates the keystore on first use."""
        with self._locked(fcntl.LOCK_EX):
            if self._path.exists() or self._path.is_symlink():
                doc, _ = self._load()
            else:
                doc = {"format_version": FORMAT_VERSION, "created": _now(), "keys": {}, "secrets": {}}
            mutate(doc)
            self._write(doc)
            identity = self._identity()
        assert identity is not None
        with self._mutex:
            self._cache = _Snapshot(identity, doc)
        return doc

    def _write(self, doc: dict[str, Any]) -> None:
        payload = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        tmp = self._path.with_name(f".{self._path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        write_new(tmp, payload)  # mode 0600 whatever the umask said
        try:
            if self._path.exists() or self._path.is_symlink():
                os.replace(tmp, self._path)
            else:
                os.link(tmp, self._path)  # exclusive create: fails if another writer created it meanwhile
                tmp.unlink()
            fsync_dir(self._path.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise KeyUnavailable(f"cannot write the keystore {self._path}: {exc.strerror}") from None
