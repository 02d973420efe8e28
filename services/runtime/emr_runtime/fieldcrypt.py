"""Field encryption at rest: national identifiers (CCCD, BHYT, passport) and phone numbers never
reach the database in plaintext.

- ``encrypt``/``decrypt`` (text) and ``seal``/``unseal`` (bytes): AES-256-GCM with a random 96-bit
  nonce. The id of the key travels with each value, so keys rotate: new writes use the current key,
  values written under older keys stay readable as long as those keys are configured. The field's
  kind (e.g. ``identity.cccd``) is the associated data: a ciphertext copied into another field does
  not decrypt.
- ``blind_index``: HMAC-SHA256 under a separate key, for exact look-ups (unique claims, blocks)
  without storing the value. The same value of the same kind always gives the same index.
- ``derived_key``: further keys (request fingerprints, page tokens) derived from the blind-index
  key, so that they need no secret of their own.

Keys come from configuration (``FieldEncryptionSettings``, mixed into each storing service's
settings); errors name the variable at fault and never show key material.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings

from emr_runtime.keys import derive_key

KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
KEY_BYTES = 32
NONCE_BYTES = 12
# Prefix of encrypted text values, then ``<key id>:<base64url(nonce || ciphertext || tag)>``.
TEXT_PREFIX = "enc1:"
# First byte of sealed byte values, then the key id's length, the key id, nonce, ciphertext and tag.
SEALED_VERSION = 1
# Blind indexes keep 128 of HMAC-SHA256's 256 bits: collisions stay out of reach, documents smaller.
BLIND_INDEX_BYTES = 16


class FieldCryptConfigError(ValueError):
    """The keys in the configuration are missing or malformed (raised at startup)."""


class FieldDecryptionError(Exception):
    """A stored value does not decrypt: altered, moved from another field, or its key is gone."""


class FieldEncryptionSettings(BaseSettings):
    """The keys, platform-wide (no prefix): mixed into the settings of every service that stores
    identifiers (identity, records, sync)."""

    field_encryption_keys: SecretStr = Field(
        SecretStr(""),
        validation_alias=AliasChoices("FIELD_ENCRYPTION_KEYS"),
        description="Comma-separated <key id>:<base64 of 32 random bytes>, current and older keys",
    )
    field_encryption_current_key_id: str = Field(
        "",
        validation_alias=AliasChoices("FIELD_ENCRYPTION_CURRENT_KEY_ID"),
        description="Id of the key in FIELD_ENCRYPTION_KEYS that encrypts new writes",
    )
    field_blind_index_key: SecretStr = Field(
        SecretStr(""),
        validation_alias=AliasChoices("FIELD_BLIND_INDEX_KEY"),
        description="Base64 of at least 32 random bytes: the HMAC key of exact-lookup indexes",
    )


def _decode_key(text: str, variable: str, what: str, exact: bool) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise FieldCryptConfigError(f"{variable}: {what} is not valid base64") from None
    if (exact and len(key) != KEY_BYTES) or len(key) < KEY_BYTES:
        need = "exactly" if exact else "at least"
        raise FieldCryptConfigError(
            f"{variable}: {what} decodes to {len(key)} bytes; it must be {need} {KEY_BYTES} "
            "(e.g. `openssl rand -base64 32`)"
        )
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class FieldCrypt:
    """Encrypts and blind-indexes field values with the configured keys."""

    keys: dict[str, bytes] = field(repr=False)
    current_key_id: str
    blind_index_key: bytes = field(repr=False)
    _ciphers: dict[str, AESGCM] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ciphers", {key_id: AESGCM(key) for key_id, key in self.keys.items()})
        if self.current_key_id not in self.keys:
            raise FieldCryptConfigError(
                f"FIELD_ENCRYPTION_CURRENT_KEY_ID: key id {self.current_key_id!r} is not in "
                f"FIELD_ENCRYPTION_KEYS (ids there: {', '.join(sorted(self.keys)) or 'none'})"
            )

    @classmethod
    def from_settings(cls, settings: FieldEncryptionSettings) -> FieldCrypt:
        """The keyring of a service's settings; FieldCryptConfigError names what is wrong."""
        listed = settings.field_encryption_keys.get_secret_value().strip()
        if not listed:
            raise FieldCryptConfigError(
                "FIELD_ENCRYPTION_KEYS is not set: identifiers and phone numbers are stored encrypted; "
                "give <key id>:<base64 of 32 random bytes>[,...] (see README, 'Encryption at rest')"
            )
        keys: dict[str, bytes] = {}
        for position, entry in enumerate(listed.split(","), start=1):
            key_id, separator, encoded = entry.strip().partition(":")
            if not separator or not KEY_ID.fullmatch(key_id):
                raise FieldCryptConfigError(
                    f"FIELD_ENCRYPTION_KEYS: entry {position} is not <key id>:<base64 key> with a key id "
                    "of 1 to 32 letters, digits, _ or -"
                )
            if key_id in keys:
                raise FieldCryptConfigError(f"FIELD_ENCRYPTION_KEYS: key id {key_id!r} appears twice")
            keys[key_id] = _decode_key(encoded, "FIELD_ENCRYPTION_KEYS", f"key {key_id!r}", exact=True)
        current = settings.field_encryption_current_key_id.strip()
        if not current:
            raise FieldCryptConfigError(
                "FIELD_ENCRYPTION_CURRENT_KEY_ID is not set: name the key of FIELD_ENCRYPTION_KEYS "
                "that encrypts new writes"
            )
        index_key = settings.field_blind_index_key.get_secret_value()
        if not index_key.strip():
            raise FieldCryptConfigError(
                "FIELD_BLIND_INDEX_KEY is not set: give base64 of at least 32 random bytes"
            )
        return cls(keys, current, _decode_key(index_key, "FIELD_BLIND_INDEX_KEY", "the key", exact=False))

    @classmethod
    def from_variables(cls, variables: Mapping[str, str]) -> FieldCrypt:
        """The keyring of these environment variables (e.g. the dev stack's), not of this process's."""
        return cls.from_settings(FieldEncryptionSettings.model_validate(dict(variables)))

    @staticmethod
    def generate_key() -> str:
        """A fresh key, base64, as FIELD_ENCRYPTION_KEYS and FIELD_BLIND_INDEX_KEY take it."""
        return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")

    # --- bytes ----------------------------------------------------------------------------------
    @staticmethod
    def _associated_data(kind: str, key_id: str) -> bytes:
        return f"emr-field-v1\x00{kind}\x00{key_id}".encode()

    def _encrypt(self, kind: str, plaintext: bytes) -> tuple[str, bytes]:
        nonce = os.urandom(NONCE_BYTES)
        key_id = self.current_key_id
        sealed = self._ciphers[key_id].encrypt(nonce, plaintext, self._associated_data(kind, key_id))
        return key_id, nonce + sealed

    def _decrypt(self, kind: str, key_id: str, data: bytes) -> bytes:
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise FieldDecryptionError(
                f"a {kind} value was encrypted with key id {key_id!r}, which is not in FIELD_ENCRYPTION_KEYS"
            )
        try:
            return cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], self._associated_data(kind, key_id))
        except (InvalidTag, ValueError):
            raise FieldDecryptionError(
                f"a {kind} value does not decrypt with key {key_id!r}: altered, or copied from another field"
            ) from None

    def seal(self, kind: str, plaintext: bytes) -> bytes:
        """``plaintext`` encrypted under the current key, with the key id in front."""
        key_id, data = self._encrypt(kind, plaintext)
        return bytes([SEALED_VERSION, len(key_id)]) + key_id.encode("ascii") + data

    def unseal(self, kind: str, sealed: bytes) -> bytes:
        if len(sealed) < 2 or sealed[0] != SEALED_VERSION:
            raise FieldDecryptionError(f"a {kind} value is not sealed by this platform")
        end = 2 + sealed[1]
        return self._decrypt(kind, sealed[2:end].decode("ascii", "replace"), sealed[end:])

    # --- text -----------------------------------------------------------------------------------
    def encrypt(self, kind: str, value: str) -> str:
        """``value`` encrypted as text (``enc1:<key id>:<base64url>``); empty stays empty, so that
        "not given" needs no decryption."""
        if not value:
            return ""
        key_id, data = self._encrypt(kind, value.encode("utf-8"))
        return f"{TEXT_PREFIX}{key_id}:{_b64(data)}"

    def decrypt(self, kind: str, stored: str) -> str:
        if not stored:
            return ""
        key_id, separator, encoded = stored.removeprefix(TEXT_PREFIX).partition(":")
        if not stored.startswith(TEXT_PREFIX) or not separator:
            raise FieldDecryptionError(f"a {kind} value is stored unencrypted or malformed")
        try:
            data = _unb64(encoded)
        except (binascii.Error, ValueError):
            raise FieldDecryptionError(f"a {kind} value is not valid base64") from None
        return self._decrypt(kind, key_id, data).decode("utf-8")

    def key_id_of(self, stored: str) -> str:
        """The id of the key a stored text value was encrypted with ("" for an empty value)."""
        return stored.removeprefix(TEXT_PREFIX).partition(":")[0] if stored else ""

    # --- derived keys ---------------------------------------------------------------------------
    def derived_key(self, purpose: str) -> bytes:
        """A key of its own for ``purpose`` (``emr_runtime.keys``), derived from the blind-index key:
        the secret every replica of a storing service holds and that never rotates."""
        return derive_key(self.blind_index_key, purpose)

    # --- blind index ----------------------------------------------------------------------------
    def blind_index(self, kind: str, normalized_value: str) -> str:
        """A stable, keyed digest of a normalised value for exact look-up; kinds never collide."""
        digest = hmac.new(
            self.blind_index_key, f"{kind}\x00{normalized_value}".encode(), hashlib.sha256
        ).digest()
        return _b64(digest[:BLIND_INDEX_BYTES])
