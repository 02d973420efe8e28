"""Domain errors: raised by domain and repository code, mapped to gRPC status codes in one place
(``emr_runtime.interceptors``). Pure Python; no transport types here."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field: ``field`` is the request field path (``identifiers[0].value``)."""

    field: str
    description: str


class DomainError(Exception):
    """Base of errors that are the caller's or a dependency's doing, never a bug of ours."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(DomainError):
    """The request is malformed; carries every violation found, not only the first."""

    def __init__(self, violations: Iterable[FieldViolation]) -> None:
        self.violations = tuple(violations)
        fields = ", ".join(v.field for v in self.violations)
        super().__init__(f"invalid request: {fields}" if fields else "invalid request")


class NotFoundError(DomainError):
    """A resource named in the request does not exist; ``field`` is the request field naming it."""

    def __init__(self, resource_type: str, field: str, resource_id: str) -> None:
        self.resource_type = resource_type
        self.field = field
        self.resource_id = resource_id
        super().__init__(f"{resource_type} named by {field} was not found")


class ConflictError(DomainError):
    """The request lost a race or reused a request_id for different content (ABORTED)."""

    def __init__(self, message: str, field: str = "") -> None:
        self.field = field
        super().__init__(message)


class TooLargeError(DomainError):
    """A field exceeds a documented size limit (RESOURCE_EXHAUSTED)."""

    def __init__(self, field: str, limit_bytes: int) -> None:
        self.field = field
        self.limit_bytes = limit_bytes
        super().__init__(f"{field} is larger than {limit_bytes} bytes")


class RateLimitedError(DomainError):
    """The calling client application used up its request rate (RESOURCE_EXHAUSTED; retry later)."""

    def __init__(self, retry_after_seconds: float) -> None:
        self.retry_after_seconds = retry_after_seconds
        super().__init__("request rate of this client application exceeded; retry later")


class DataIntegrityError(DomainError):
    """Stored data no longer matches its recorded hash (DATA_LOSS); never the caller's fault."""

    def __init__(self, resource_type: str, resource_id: str) -> None:
        self.resource_type = resource_type
        super().__init__(f"stored {resource_type} {resource_id} failed its integrity check")


class DependencyUnavailableError(DomainError):
    """A service or database this call needs did not answer in time (UNAVAILABLE; retry later)."""

    def __init__(self, dependency: str) -> None:
        self.dependency = dependency
        super().__init__(f"{dependency} is unavailable; retry later")


class Violations:
    """Collects field violations so that a request reports all its problems at once."""

    def __init__(self) -> None:
        self._items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self._items.append(FieldViolation(field, description))

    def has(self, field: str) -> bool:
        """Whether a violation of this field was recorded already."""
        return any(item.field == field for item in self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def raise_if_any(self) -> None:
        if self._items:
            raise InvalidArgumentError(self._items)


# Why a token was refused, as counted (emr_unauthenticated_calls_total{reason}) and logged.
UNAUTHENTICATED_REASONS = frozenset(
    {
        "missing",  # no authorization metadata, or not "Bearer <token>"
        "malformed",  # not a JWT, or an algorithm other than RS256/ES256
        "unknown_key",  # kid names no key of the JWKS (e.g. signed by a stranger's key)
        "bad_signature",
        "expired",
        "not_yet_valid",
        "wrong_audience",
        "untrusted_issuer",  # also service tokens signed by the identity provider's keys
        "invalid",  # anything else (missing or ill-typed claims)
    }
)


class UnauthenticatedError(DomainError):
    """No valid bearer token (UNAUTHENTICATED); the message says what is wrong with the token, the
    ``reason`` says it as one of ``UNAUTHENTICATED_REASONS`` (a metric label: a small fixed set)."""

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason if reason in UNAUTHENTICATED_REASONS else "invalid"


class PermissionDeniedError(DomainError):
    """The verified caller may not make this call (PERMISSION_DENIED); the message says which rule."""
