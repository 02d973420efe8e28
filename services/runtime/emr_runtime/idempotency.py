"""Idempotency by client-supplied request_id: the id of what a request creates is derived from its
request_id, so a repeated request collides with its first write on a unique ``_id`` instead of
creating a twin. A request_id reused for different content is refused.

The digest of a request's content stored for that check is keyed (HMAC-SHA256 under a key derived
with ``emr_runtime.keys.REQUEST_FINGERPRINT``): an unkeyed hash of a request holding a 12-digit CCCD
would give the CCCD back to anyone with a database dump, by trying every number."""

from __future__ import annotations

import hashlib
import hmac
import uuid

from emr_runtime.errors import Violations

_NAMESPACE = uuid.UUID("6f1d3c62-8a53-4f0e-9a57-2f3f3e9a1c01")
MAX_REQUEST_ID_LENGTH = 128


def check_request_id(violations: Violations, request_id: str, field: str = "request_id") -> None:
    if not request_id.strip():
        violations.add(field, "required: a unique id of this request, e.g. a UUID")
    elif len(request_id) > MAX_REQUEST_ID_LENGTH:
        violations.add(field, f"at most {MAX_REQUEST_ID_LENGTH} characters")
    elif not request_id.isprintable():
        violations.add(field, "must be printable text")


def derive_id(kind: str, request_id: str) -> str:
    """The id that the request with this request_id creates for a resource of this kind."""
    return str(uuid.uuid5(_NAMESPACE, f"{kind}\x00{request_id}"))


def fingerprint(key: bytes, payload: bytes) -> str:
    """A keyed digest of a request's content, stored with what it created to detect request_id
    reuse; ``key`` is the service's fingerprint key (``FieldCrypt.derived_key(REQUEST_FINGERPRINT)``)."""
    if not key:
        raise ValueError("a request fingerprint needs its key")
    return hmac.new(key, payload, hashlib.sha256).hexdigest()
