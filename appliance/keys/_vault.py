"""``KeyService`` on HashiCorp Vault or OpenBao through hvac: transit for keys, KV v2 for secrets.

Every call into hvac goes through :func:`~appliance.keys._vault_seam.seam`, which turns hvac's and requests' errors
into ours and names the operation and the key (never the token); nothing here falls back to the local keystore.

Key name ``n`` is the transit key ``<prefix>-<n>``; secret path ``p`` is KV v2 ``<kv mount>/<prefix>/<p>``. A key
that does not exist is created on first use (AES-256-GCM96 for data keys and HMAC, Ed25519 for signing) when the
token may create it; otherwise the error says that the operator must create it.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import hvac
import structlog

from appliance.config import KeysSettings
from appliance.errors import (
    ConfigError,
    Conflict,
    IntegrityViolation,
    KeyUnavailable,
    NotFound,
    ValidationFailed,
    VaultForbidden,
)
from appliance.keys._names import check_name, check_secret_path
from appliance.keys._signature import format_signature, parse_signature
from appliance.keys._status import KeyInfo, KeyServiceStatus
from appliance.keys._vault_seam import KeyMissing, seam

__all__ = ["VaultKeyService"]

log = structlog.get_logger("appliance.keys.vault")

T = TypeVar("T")
AES = "aes256-gcm96"
ED25519 = "ed25519"
_VAULT_VALUE = re.compile(r"^vault:v([1-9][0-9]{0,9}):([A-Za-z0-9+/=]+)$")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _split_vault_value(value: str, what: str) -> tuple[int, bytes]:
    match = _VAULT_VALUE.match(value)
    if match is None:
        raise KeyUnavailable(f"Vault/OpenBao returned an unexpected {what} format")
    try:
        return int(match.group(1)), base64.b64decode(match.group(2), validate=True)
    except binascii.Error:
        raise KeyUnavailable(f"Vault/OpenBao returned an undecodable {what}") from None


class VaultKeyService:
    """``KeyService`` over Vault/OpenBao transit and KV v2 (token or AppRole login)."""

    backend = "vault"

    def __init__(
        self,
        client: hvac.Client,
        *,
        transit_mount: str = "transit",
        kv_mount: str = "secret",
        prefix: str = "appliance",
        login: Callable[[hvac.Client], None] | None = None,
    ) -> None:
        self._client = client
        self._addr = str(client.url)
        self._transit_mount = transit_mount
        self._kv_mount = kv_mount
        self._prefix = check_name(prefix)
        self._login = login
        if login is not None:
            with seam("login (AppRole)", self._addr):
                login(client)
        with seam("token lookup (login check)", self._addr):
            client.auth.token.lookup_self()

    @classmethod
    def from_settings(cls, keys: KeysSettings) -> VaultKeyService:
        """Connect and log in as ``keys`` says (token, else AppRole); fails closed with the reason."""
        if not keys.vault_addr:
            raise ConfigError("keys.backend is 'vault' but keys.vault_addr is not set")
        parts = urlsplit(keys.vault_addr)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"keys.vault_addr must be an http(s) URL, got {keys.vault_addr!r}")
        if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "::1", "localhost"):
            log.warning("keys.vault_plaintext_http", addr=keys.vault_addr)
        if keys.vault_ca_cert is not None and not Path(keys.vault_ca_cert).is_file():
            raise ConfigError(f"keys.vault_ca_cert names no readable file: {keys.vault_ca_cert}")
        verify: bool | str = keys.vault_ca_cert or True
        client = hvac.Client(url=keys.vault_addr, verify=verify, timeout=keys.vault_timeout_s)
        login: Callable[[hvac.Client], None] | None = None
        if keys.vault_token is not None:
            client.token = keys.vault_token.get_secret_value()
        elif keys.vault_role_id and keys.vault_secret_id is not None:
            role_id, secret_id = keys.vault_role_id, keys.vault_secret_id.get_secret_value()

            def login(c: hvac.Client) -> None:
                c.auth.approle.login(role_id=role_id, secret_id=secret_id)

        else:
            raise ConfigError(
                "keys.backend is 'vault' but neither vault_token nor vault_role_id + vault_secret_id is set"
            )
        return cls(
            client,
            transit_mount=keys.vault_transit_mount,
            kv_mount=keys.vault_kv_mount,
            prefix=keys.vault_key_prefix,
            login=login,
        )

    def __repr__(self) -> str:
        return f"VaultKeyService(addr={self._addr!r}, transit={self._transit_mount!r}, prefix={self._prefix!r})"

    # --- plumbing --------------------------------------------------------------------------------------------
    def _transit_name(self, name: str) -> str:
        return f"{self._prefix}-{check_name(name)}"

    def _call(self, operation: str, fn: Callable[[], T], *, signal_missing: bool = False) -> T:
        """Run one hvac call at the seam; with AppRole, log in again once when the token itself has expired.

        A missing transit key is ``NotFound``, or the internal ``KeyMissing`` when ``signal_missing`` asks for it.
        """
        try:
            try:
                with seam(operation, self._addr):
                    return fn()
            except VaultForbidden:
                if self._login is None or self._token_is_valid():
                    raise  # a policy refusal, not an expired token
                with seam("login (AppRole)", self._addr):
                    self._login(self._client)
                log.info("keys.vault_relogin", addr=self._addr)
                with seam(operation, self._addr):
                    return fn()
        except KeyMissing as exc:
            if signal_missing:
                raise
            raise NotFound(f"Vault/OpenBao: {exc} ({operation})") from None

    def _token_is_valid(self) -> bool:
        try:
            with seam("token lookup", self._addr):
                self._client.auth.token.lookup_self()
        except VaultForbidden:
            return False
        return True

    def _with_key(self, operation: str, name: str, key_type: str | None, fn: Callable[[str], T]) -> T:
        """Run fn(transit name); create the key first when it is missing and ``key_type`` is given."""
        transit = self._transit_name(name)
        try:
            return self._call(f"{operation} with key {name!r}", lambda: fn(transit), signal_missing=True)
        except KeyMissing:
            if key_type is None:
                raise NotFound(f"Vault/OpenBao has no transit key {transit!r} ({operation})") from None
        self._create(name, transit, key_type)
        try:
            return self._call(f"{operation} with key {name!r}", lambda: fn(transit), signal_missing=True)
        except KeyMissing:
            raise KeyUnavailable(f"transit key {transit!r} is still missing after creating it") from None

    def _create(self, name: str, transit: str, key_type: str) -> None:
        try:
            self._call(
                f"create transit key {name!r}",
                lambda: self._client.secrets.transit.create_key(
                    transit, key_type=key_type, mount_point=self._transit_mount
                ),
            )
        except VaultForbidden:
            raise VaultForbidden(
                f"transit key {transit!r} does not exist and this token may not create it; "
                "the operator must create it (appliance keyservice create)"
            ) from None
        log.info("keys.created", key=name, type=key_type, backend="vault")

    def _read_key(self, name: str) -> dict[str, Any]:
        transit = self._transit_name(name)
        try:
            response = self._call(
                f"read transit key {name!r}",
                lambda: self._client.secrets.transit.read_key(transit, mount_point=self._transit_mount),
            )
        except NotFound:
            raise NotFound(f"Vault/OpenBao has no transit key {transit!r}") from None
        return dict(response["data"])

    # --- KeyService ------------------------------------------------------------------------------------------
    def data_key(self, purpose: str) -> tuple[bytes, bytes]:
        """A fresh 256-bit data key from transit ``datakey/plaintext`` and its wrapped form."""
        response = self._with_key(
            "generate data key",
            purpose,
            AES,
            lambda t: self._client.secrets.transit.generate_data_key(
                t, key_type="plaintext", bits=256, mount_point=self._transit_mount
            ),
        )
        data = response["data"]
        plaintext = base64.b64decode(data["plaintext"])
        if len(plaintext) != 32:
            raise KeyUnavailable("Vault/OpenBao returned a data key that is not 256 bits")
        return plaintext, str(data["ciphertext"]).encode("ascii")

    def _ciphertext(self, purpose: str, wrapped: bytes) -> str:
        if isinstance(wrapped, bytes) and wrapped.startswith(b"local:"):
            raise KeyUnavailable(
                f"data key for {purpose!r} was wrapped by the local keystore; Vault/OpenBao cannot unwrap it"
            )
        try:
            text = wrapped.decode("ascii")
        except (AttributeError, UnicodeDecodeError):
            text = ""
        if not _VAULT_VALUE.match(text):
            raise IntegrityViolation(f"wrapped data key for {purpose!r} is not a Vault/OpenBao ciphertext")
        return text

    def unwrap(self, purpose: str, wrapped: bytes) -> bytes:
        """The data key inside wrapped, decrypted by transit (any version not below min_decryption_version)."""
        ciphertext = self._ciphertext(purpose, wrapped)
        response = self._with_key(
            "unwrap data key",
            purpose,
            None,
            lambda t: self._client.secrets.transit.decrypt_data(
                t, ciphertext=ciphertext, mount_point=self._transit_mount
            ),
        )
        return base64.b64decode(response["data"]["plaintext"])

    def rewrap(self, purpose: str, wrapped: bytes) -> bytes:
        """The same data key wrapped under the newest key version, without its plaintext leaving Vault."""
        ciphertext = self._ciphertext(purpose, wrapped)
        response = self._with_key(
            "rewrap data key",
            purpose,
            None,
            lambda t: self._client.secrets.transit.rewrap_data(
                t, ciphertext=ciphertext, mount_point=self._transit_mount
            ),
        )
        return str(response["data"]["ciphertext"]).encode("ascii")

    def rotate(self, name: str) -> None:
        """Make a new version of the transit key current (the key must exist)."""
        self._with_key(
            "rotate",
            name,
            None,
            lambda t: self._client.secrets.transit.rotate_key(t, mount_point=self._transit_mount),
        )
        log.info("keys.rotated", key=name, backend="vault")

    def hmac(self, name: str, data: bytes) -> bytes:
        """HMAC-SHA256 (transit ``hmac/<key>/sha2-256``) under the key's current version: 32 raw bytes."""
        return self.versioned_hmac(name, data)[1]

    def versioned_hmac(self, name: str, data: bytes, version: int | None = None) -> tuple[int, bytes]:
        """(version, HMAC-SHA256 of data) under transit ``key_version`` (the current one when None); the version
        is the one transit reports in its ``vault:v<N>:`` answer."""
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
            raise NotFound(f"key {name!r} has no version {version!r}")
        try:
            response = self._with_key(
                "hmac",
                name,
                AES if version is None else None,
                lambda t: self._client.secrets.transit.generate_hmac(
                    t, hash_input=_b64(data), key_version=version, algorithm="sha2-256", mount_point=self._transit_mount
                ),
            )
        except KeyUnavailable as exc:  # transit: "key version does not exist; latest key version is N"
            if version is not None and type(exc) is KeyUnavailable and "key version does not exist" in str(exc):
                raise NotFound(f"transit key {self._transit_name(name)!r} has no version {version}") from None
            raise
        used, raw = _split_vault_value(str(response["data"]["hmac"]), "HMAC")
        if version is not None and used != version:
            raise KeyUnavailable(f"Vault/OpenBao made the HMAC under version {used}, not the {version} asked for")
        return used, raw

    def sign(self, name: str, data: bytes) -> bytes:
        """Ed25519 signature (transit ``sign``) in the portable ``ed25519:v<N>:...`` form."""
        response = self._with_key(
            "sign",
            name,
            ED25519,
            lambda t: self._client.secrets.transit.sign_data(t, hash_input=_b64(data), mount_point=self._transit_mount),
        )
        version, raw = _split_vault_value(str(response["data"]["signature"]), "signature")
        return format_signature(version, raw)

    def verify(self, name: str, data: bytes, signature: bytes) -> bool:
        """Whether transit ``verify`` accepts signature (any version) for data; False on a bad one."""
        try:
            version, raw = parse_signature(signature)
        except ValidationFailed:
            return False
        vault_signature = f"vault:v{version}:{_b64(raw)}"
        try:
            response = self._with_key(
                "verify",
                name,
                None,
                lambda t: self._client.secrets.transit.verify_signed_data(
                    t, hash_input=_b64(data), signature=vault_signature, mount_point=self._transit_mount
                ),
            )
        except IntegrityViolation:
            return False
        return bool(response["data"]["valid"])

    def public_key(self, name: str) -> bytes:
        """The raw 32-byte public key of the signing key's current version."""
        versions = self.public_keys(name)
        return versions[max(versions)]

    def public_keys(self, name: str) -> dict[int, bytes]:
        """Every version's raw 32-byte public key of the signing key (created on first use when allowed)."""
        try:
            data = self._read_key(name)
        except NotFound:
            self._create(name, self._transit_name(name), ED25519)
            data = self._read_key(name)
        if data.get("type") != ED25519:
            raise KeyUnavailable(f"transit key {self._transit_name(name)!r} is {data.get('type')}, not an Ed25519 key")
        out: dict[int, bytes] = {}
        for version, info in data.get("keys", {}).items():
            raw = base64.b64decode(info["public_key"])
            if len(raw) != 32:
                raise KeyUnavailable("Vault/OpenBao returned an Ed25519 public key that is not 32 bytes")
            out[int(version)] = raw
        return out

    # --- secrets (KV v2) -------------------------------------------------------------------------------------
    def get_secret(self, path: str) -> dict[str, str]:
        """The secret at ``<kv mount>/<prefix>/<path>``; NotFound when there is none (or it was deleted)."""
        full = f"{self._prefix}/{check_secret_path(path)}"
        try:
            response = self._call(
                f"read secret {path!r}",
                lambda: self._client.secrets.kv.v2.read_secret_version(
                    full, mount_point=self._kv_mount, raise_on_deleted_version=True
                ),
            )
        except NotFound:
            raise NotFound(f"no secret at {path!r} in Vault/OpenBao KV {self._kv_mount!r}") from None
        return {str(k): str(v) for k, v in response["data"]["data"].items()}

    def put_secret(self, path: str, data: Mapping[str, str]) -> None:
        """Store a new version of the secret at ``<kv mount>/<prefix>/<path>``."""
        full = f"{self._prefix}/{check_secret_path(path)}"
        if not data or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise KeyUnavailable(f"secret {path!r} must be a non-empty mapping of strings to strings")
        self._call(
            f"write secret {path!r}",
            lambda: self._client.secrets.kv.v2.create_or_update_secret(
                full, secret=dict(data), mount_point=self._kv_mount
            ),
        )
        log.info("keys.secret_written", path=path, backend="vault")

    def add_secret(self, path: str, data: Mapping[str, str]) -> None:
        """Create the secret at ``<kv mount>/<prefix>/<path>`` only if it does not exist (KV v2 ``cas=0``): an
        existing one is ``Conflict`` (or ``VaultForbidden`` under a policy that may create but not update)."""
        full = f"{self._prefix}/{check_secret_path(path)}"
        if not data or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise KeyUnavailable(f"secret {path!r} must be a non-empty mapping of strings to strings")
        try:
            self._call(
                f"add secret {path!r}",
                lambda: self._client.secrets.kv.v2.create_or_update_secret(
                    full, secret=dict(data), cas=0, mount_point=self._kv_mount
                ),
            )
        except KeyUnavailable as exc:
            if type(exc) is KeyUnavailable and "check-and-set" in exc.message:
                raise Conflict(f"secret {path!r} exists already (add-only)") from None
            raise

    def list_secrets(self, path: str) -> list[str]:
        """The names under ``<kv mount>/<prefix>/<path>/`` (a folder ends with '/'); NotFound when there are none."""
        full = f"{self._prefix}/{check_secret_path(path)}"
        response = self._call(
            f"list secrets {path!r}",
            lambda: self._client.secrets.kv.v2.list_secrets(full, mount_point=self._kv_mount),
        )
        return [str(k) for k in response["data"]["keys"]]

    # --- operator view ---------------------------------------------------------------------------------------
    def create(self, name: str, key_type: str = AES) -> None:
        """Create a transit key ahead of use (operator), of type aes256-gcm96 or ed25519."""
        if key_type not in (AES, ED25519):
            raise ValidationFailed(f"key type must be {AES!r} or {ED25519!r}, not {key_type!r}")
        self._create(name, self._transit_name(name), key_type)

    def status(self) -> KeyServiceStatus:
        """Seal state and, when the token may list them, this prefix's transit keys with their versions."""
        seal = self._call("read seal status", lambda: self._client.sys.read_seal_status())
        sealed = bool(seal.get("sealed", True))
        if sealed:
            return KeyServiceStatus(backend="vault", location=self._addr, sealed=True, detail="sealed")
        try:
            listed = self._call(
                "list transit keys",
                lambda: self._client.secrets.transit.list_keys(mount_point=self._transit_mount),
            )
        except VaultForbidden:
            return KeyServiceStatus(
                backend="vault", location=self._addr, sealed=False, detail="this token may not list transit keys"
            )
        except NotFound:
            listed = {"data": {"keys": []}}
        keys: list[KeyInfo] = []
        start = f"{self._prefix}-"
        for transit in sorted(listed["data"]["keys"]):
            if not transit.startswith(start):
                continue
            name = transit[len(start) :]
            try:
                data = self._read_key(name)
            except (VaultForbidden, NotFound, ValidationFailed):
                continue
            keys.append(
                KeyInfo(
                    name=name,
                    type=str(data.get("type")),
                    latest_version=int(data.get("latest_version", 0)),
                    versions=len(data.get("keys", {})),
                    min_decryption_version=int(data.get("min_decryption_version", 1)),
                )
            )
        return KeyServiceStatus(backend="vault", location=self._addr, sealed=False, keys=keys)
