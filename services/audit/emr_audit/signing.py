"""The Ed25519 key that signs checkpoints: loaded from a PEM file, or generated (development)."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from emr_runtime.keys import derive_key

log = logging.getLogger("emr.audit.signing")
ALGORITHM = "Ed25519"


def key_id(public_key_raw: bytes) -> str:
    return hashlib.sha256(public_key_raw).hexdigest()[:16]


class CheckpointSigner:
    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_key_raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_key_pem = (
            private_key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        self.key_id = key_id(self.public_key_raw)

    def derived_key(self, purpose: str) -> bytes:
        """A key of its own for ``purpose`` (``emr_runtime.keys``) derived from this private key."""
        raw = self._private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return derive_key(raw, purpose)

    def sign(self, payload: bytes) -> bytes:
        return self._private_key.sign(payload)


def load_signer(key_file: str, generate_if_missing: bool) -> CheckpointSigner:
    """The key in ``key_file`` (PKCS#8 PEM). A missing file is created when ``generate_if_missing``
    (development: every replica started with the same path shares the key). Without a file, an
    ephemeral key is used and the log says so: its checkpoints cannot be verified after a restart."""
    if not key_file:
        log.warning("no AUDIT_SIGNING_KEY_FILE: signing checkpoints with an ephemeral key (development only)")
        return CheckpointSigner(Ed25519PrivateKey.generate())
    path = Path(key_file)
    if generate_if_missing and not path.exists():
        _create_key_file(path)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{key_file} does not hold an Ed25519 private key")
    return CheckpointSigner(loaded)


def _create_key_file(path: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}")
    with os.fdopen(os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as file:
        file.write(pem)
    try:
        # A hard link appears complete or not at all: when two replicas start at once, one key wins.
        os.link(draft, path)
    except FileExistsError:
        return
    finally:
        draft.unlink()
    log.info("generated a development checkpoint signing key", extra={"key_file": str(path)})


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    loaded = serialization.load_pem_public_key(pem)
    if not isinstance(loaded, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return loaded


def signature_valid(public_key: Ed25519PublicKey, payload: bytes, signature: bytes) -> bool:
    try:
        public_key.verify(signature, payload)
    except InvalidSignature:
        return False
    return True


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
