"""One root error with a stable code per failure.

The CLI maps an :class:`ApplianceError` to ``CODE: message`` on stderr and its ``exit_code``; the gateway maps
it to ``http_status`` and a JSON body ``{"error": message, "error_type": code}``. Nothing else invents error
formats. Codes are stable strings: never reuse or rename one.

    ApplianceError
    ├── ConfigError              CONFIG_INVALID        500 / 78
    ├── ValidationFailed         VALIDATION_FAILED     422 / 65
    │   ├── IntakeRejected       INTAKE_REJECTED       422 / 65
    │   ├── RequestMalformed     REQUEST_MALFORMED     400 / 65
    │   └── RequestTooLarge      REQUEST_TOO_LARGE     413 / 65
    ├── NotFound                 NOT_FOUND             404 / 66
    ├── Conflict                 CONFLICT              409 / 65
    ├── PermissionDenied         PERMISSION_DENIED     403 / 77
    │   └── PolicyViolation      POLICY_VIOLATION      403 / 77
    ├── Unauthenticated          UNAUTHENTICATED       401 / 77
    ├── BudgetExhausted          PRIVACY_BUDGET_EXHAUSTED 403 / 77
    ├── IntegrityViolation       INTEGRITY_VIOLATION   409 / 65
    ├── KeyUnavailable           KEYS_UNAVAILABLE      503 / 69
    │   ├── VaultSealed          KEYS_VAULT_SEALED     503 / 69
    │   ├── VaultUnreachable     KEYS_VAULT_UNREACHABLE 503 / 69
    │   ├── VaultForbidden       KEYS_VAULT_FORBIDDEN  503 / 77
    │   └── KeystoreInsecure     KEYS_KEYSTORE_INSECURE 503 / 77
    ├── StorageUnavailable       STORAGE_UNAVAILABLE   503 / 74
    │   ├── MigrationMismatch    STORAGE_MIGRATION_MISMATCH 503 / 74
    │   └── StateStoreUnavailable STORAGE_STATE_UNAVAILABLE 503 / 74
    ├── AuditUnavailable         AUDIT_UNAVAILABLE     503 / 74
    ├── BackendError             BACKEND_ERROR         502 / 69
    │   ├── BackendUnavailable   BACKEND_UNAVAILABLE   503 / 69
    │   ├── BackendOverloaded    BACKEND_OVERLOADED    429 / 75
    │   ├── BackendTimeout       BACKEND_TIMEOUT       504 / 75
    │   └── BackendValidation    BACKEND_VALIDATION    422 / 65
    ├── RateLimited              RATE_LIMITED          429 / 75
    └── TrainingFailed           TRAINING_FAILED       500 / 70
"""

from __future__ import annotations

from typing import ClassVar, Literal


class ApplianceError(Exception):
    """Root of every domain error the appliance raises on purpose."""

    code: ClassVar[str] = "APPLIANCE_ERROR"
    http_status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.audit_id: str | None = None  # the audit record of this refusal, once recorded (the gateway's X-Audit-Id)

    def __str__(self) -> str:
        return self.message


class ConfigError(ApplianceError):
    """Settings, a policy file or a required secret is missing or invalid."""

    code = "CONFIG_INVALID"
    http_status = 500
    exit_code = 78


class ValidationFailed(ApplianceError):
    """Input from a user or client does not satisfy the rules."""

    code = "VALIDATION_FAILED"
    http_status = 422
    exit_code = 65


class IntakeRejected(ValidationFailed):
    """A dataset record or file is malformed (names the line and field)."""

    code = "INTAKE_REJECTED"


class RequestMalformed(ValidationFailed):
    """A request body cannot be decoded (not JSON, or nested deeper than the gateway accepts)."""

    code = "REQUEST_MALFORMED"
    http_status = 400


class RequestTooLarge(ValidationFailed):
    """A request body exceeds the gateway's size limit."""

    code = "REQUEST_TOO_LARGE"
    http_status = 413


class NotFound(ApplianceError):
    """A named thing (adapter, version, run, dataset, key) does not exist."""

    code = "NOT_FOUND"
    http_status = 404
    exit_code = 66


class Conflict(ApplianceError):
    """The request collides with existing state (duplicate registration, wrong lifecycle state)."""

    code = "CONFLICT"
    http_status = 409
    exit_code = 65


class PermissionDenied(ApplianceError):
    """The principal is known but not allowed to do this."""

    code = "PERMISSION_DENIED"
    http_status = 403
    exit_code = 77


class PolicyViolation(PermissionDenied):
    """A rule in policies/ refuses the action (the message names the rule)."""

    code = "POLICY_VIOLATION"


class Unauthenticated(ApplianceError):
    """No valid credential was presented."""

    code = "UNAUTHENTICATED"
    http_status = 401
    exit_code = 77


class BudgetExhausted(ApplianceError):
    """A training run would spend more privacy budget than the dataset has left."""

    code = "PRIVACY_BUDGET_EXHAUSTED"
    http_status = 403
    exit_code = 77


class IntegrityViolation(ApplianceError):
    """Stored data failed a fingerprint, MAC, signature or hash-chain check."""

    code = "INTEGRITY_VIOLATION"
    http_status = 409
    exit_code = 65


class KeyUnavailable(ApplianceError):
    """The key service cannot perform the operation; nothing falls back."""

    code = "KEYS_UNAVAILABLE"
    http_status = 503
    exit_code = 69


class VaultSealed(KeyUnavailable):
    """Vault/OpenBao answered that it is sealed."""

    code = "KEYS_VAULT_SEALED"


class VaultUnreachable(KeyUnavailable):
    """Vault/OpenBao could not be reached."""

    code = "KEYS_VAULT_UNREACHABLE"


class VaultForbidden(KeyUnavailable):
    """Vault/OpenBao refused the operation under the token's policy."""

    code = "KEYS_VAULT_FORBIDDEN"
    exit_code = 77


class KeystoreInsecure(KeyUnavailable):
    """The local keystore file is readable by others, owned by someone else, or not a regular file."""

    code = "KEYS_KEYSTORE_INSECURE"
    exit_code = 77


class StorageUnavailable(ApplianceError):
    """The database or a data volume cannot be read or written."""

    code = "STORAGE_UNAVAILABLE"
    http_status = 503
    exit_code = 74


class MigrationMismatch(StorageUnavailable):
    """A database is at a schema revision this code does not know (written by a newer version, or unversioned)."""

    code = "STORAGE_MIGRATION_MISMATCH"


class StateStoreUnavailable(StorageUnavailable):
    """The gateways' shared state store (Redis: rate limits, extraction detector, sessions) cannot be reached."""

    code = "STORAGE_STATE_UNAVAILABLE"


class AuditUnavailable(ApplianceError):
    """A record could not be made durable; the caller must not proceed."""

    code = "AUDIT_UNAVAILABLE"
    http_status = 503
    exit_code = 74


class BackendError(ApplianceError):
    """The inference backend failed to generate."""

    code = "BACKEND_ERROR"
    http_status = 502
    exit_code = 69


class BackendUnavailable(BackendError):
    """The inference backend cannot be reached or is not ready."""

    code = "BACKEND_UNAVAILABLE"
    http_status = 503


class BackendOverloaded(BackendError):
    """The inference backend's queue is full."""

    code = "BACKEND_OVERLOADED"
    http_status = 429
    exit_code = 75


class BackendTimeout(BackendError):
    """The inference backend did not answer in time."""

    code = "BACKEND_TIMEOUT"
    http_status = 504
    exit_code = 75


class BackendValidation(BackendError):
    """The inference backend rejected the request's parameters."""

    code = "BACKEND_VALIDATION"
    http_status = 422
    exit_code = 65


LimitKind = Literal["principal.requests", "principal.tokens", "adapter.requests", "adapter.tokens", "extraction"]


class RateLimited(ApplianceError):
    """A per-principal or per-adapter limit was reached, or the extraction detector throttles the principal
    (``kind`` says which; carries retry_after seconds)."""

    code = "RATE_LIMITED"
    http_status = 429
    exit_code = 75

    def __init__(self, message: str, *, kind: LimitKind, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.kind: LimitKind = kind


class TrainingFailed(ApplianceError):
    """A training run could not complete (nothing that looks complete is left behind)."""

    code = "TRAINING_FAILED"
    http_status = 500
    exit_code = 70


def all_error_types() -> list[type[ApplianceError]]:
    """Every ApplianceError subclass, for the meta-tests and the edge mappings."""
    seen: list[type[ApplianceError]] = [ApplianceError]
    stack = [ApplianceError]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub not in seen:
                seen.append(sub)
                stack.append(sub)
    return seen
