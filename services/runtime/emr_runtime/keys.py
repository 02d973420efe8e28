"""Keys derived from a service's existing secret, one per purpose (HKDF-SHA256, RFC 5869).

A service already holds a high-entropy secret that its replicas share and that never rotates
lightly (the blind-index key of ``fieldcrypt``; audit's checkpoint signing key). Every further key
it needs (request fingerprints, page tokens) is derived from that secret with a distinct ``info``
label instead of being provisioned separately: one secret to keep, and no derived key reveals the
secret or another derived key.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

DERIVED_KEY_BYTES = 32
# The purposes (HKDF info labels) in use; a new purpose gets a new label, never a reused one.
REQUEST_FINGERPRINT = "request-fingerprint/v1"


def page_token_purpose(service: str) -> str:
    """The purpose of a service's page-token key: a token of one service is no token of another."""
    return f"page-token/v1/{service}"


def derive_key(secret: bytes, purpose: str) -> bytes:
    """The 32-byte key of ``purpose`` derived from ``secret`` (at least 32 bytes of entropy)."""
    if len(secret) < DERIVED_KEY_BYTES:
        raise ValueError(f"a key is derived from a secret of at least {DERIVED_KEY_BYTES} bytes")
    return HKDF(
        algorithm=hashes.SHA256(),
        length=DERIVED_KEY_BYTES,
        salt=None,
        info=f"emr-platform/{purpose}".encode(),
    ).derive(secret)
