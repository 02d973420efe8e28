"""Field encryption and blind indexes (pure: no I/O)."""

from __future__ import annotations

import base64

import pytest
from pydantic import SecretStr

from emr_runtime.fieldcrypt import (
    FieldCrypt,
    FieldCryptConfigError,
    FieldDecryptionError,
    FieldEncryptionSettings,
)

OLD_KEY = FieldCrypt.generate_key()
NEW_KEY = FieldCrypt.generate_key()
INDEX_KEY = FieldCrypt.generate_key()


def keyring(keys: str, current: str, index_key: str = INDEX_KEY) -> FieldCrypt:
    return FieldCrypt.from_settings(
        FieldEncryptionSettings(
            field_encryption_keys=SecretStr(keys),
            field_encryption_current_key_id=current,
            field_blind_index_key=SecretStr(index_key),
        )
    )


def test_text_roundtrip_hides_the_value_and_differs_each_time() -> None:
    crypt = keyring(f"k1:{OLD_KEY}", "k1")
    first, second = (
        crypt.encrypt("identity.cccd", "079190000001"),
        crypt.encrypt("identity.cccd", "079190000001"),
    )
    assert first != second  # a fresh nonce every time: equal values are not linkable
    assert "079190000001" not in first and first.startswith("enc1:k1:")
    assert crypt.decrypt("identity.cccd", first) == "079190000001"
    assert crypt.encrypt("identity.cccd", "") == "" and crypt.decrypt("identity.cccd", "") == ""


def test_bytes_roundtrip() -> None:
    crypt = keyring(f"k1:{OLD_KEY}", "k1")
    sealed = crypt.seal("sync.payload", b'{"cccd": "079190000001"}')
    assert b"079190000001" not in sealed
    assert crypt.unseal("sync.payload", sealed) == b'{"cccd": "079190000001"}'


def test_rotation_writes_with_the_current_key_and_reads_older_ones() -> None:
    before = keyring(f"k1:{OLD_KEY}", "k1")
    stored_text = before.encrypt("identity.phone", "0912345678")
    stored_bytes = before.seal("sync.payload", b"body")
    after = keyring(f"k2:{NEW_KEY},k1:{OLD_KEY}", "k2")
    assert after.decrypt("identity.phone", stored_text) == "0912345678"
    assert after.unseal("sync.payload", stored_bytes) == b"body"
    fresh = after.encrypt("identity.phone", "0912345678")
    assert after.key_id_of(fresh) == "k2" and after.key_id_of(stored_text) == "k1"
    retired = keyring(f"k2:{NEW_KEY}", "k2")
    with pytest.raises(FieldDecryptionError, match="key id 'k1'"):
        retired.decrypt("identity.phone", stored_text)


def test_tampering_is_a_clear_error() -> None:
    crypt = keyring(f"k1:{OLD_KEY}", "k1")
    stored = crypt.encrypt("identity.cccd", "079190000001")
    flipped = stored[:-2] + ("A" if stored[-2] != "A" else "B") + stored[-1]
    with pytest.raises(FieldDecryptionError, match="altered"):
        crypt.decrypt("identity.cccd", flipped)
    sealed = bytearray(crypt.seal("sync.payload", b"body"))
    sealed[-1] ^= 1
    with pytest.raises(FieldDecryptionError, match="altered"):
        crypt.unseal("sync.payload", bytes(sealed))
    with pytest.raises(FieldDecryptionError, match="unencrypted"):
        crypt.decrypt("identity.cccd", "079190000001")


def test_a_ciphertext_does_not_decrypt_as_another_field() -> None:
    crypt = keyring(f"k1:{OLD_KEY}", "k1")
    with pytest.raises(FieldDecryptionError, match="another field"):
        crypt.decrypt("identity.phone", crypt.encrypt("identity.cccd", "079190000001"))
    with pytest.raises(FieldDecryptionError):
        crypt.unseal("sync.claim", crypt.seal("sync.payload", b"body"))


def test_blind_index_is_stable_keyed_and_separates_kinds() -> None:
    crypt = keyring(f"k1:{OLD_KEY}", "k1")
    again = keyring(f"k2:{NEW_KEY},k1:{OLD_KEY}", "k2")  # encryption keys do not matter
    index = crypt.blind_index("cccd", "079190000001")
    assert index == again.blind_index("cccd", "079190000001")
    assert "079190000001" not in index
    assert index != crypt.blind_index("cccd", "079190000002")
    assert index != crypt.blind_index("phone", "079190000001")
    other_key = keyring(f"k1:{OLD_KEY}", "k1", index_key=FieldCrypt.generate_key())
    assert index != other_key.blind_index("cccd", "079190000001")


@pytest.mark.parametrize(
    ("keys", "current", "index_key", "message"),
    [
        ("", "k1", INDEX_KEY, "FIELD_ENCRYPTION_KEYS is not set"),
        (f"k1:{OLD_KEY}", "", INDEX_KEY, "FIELD_ENCRYPTION_CURRENT_KEY_ID is not set"),
        (f"k1:{OLD_KEY}", "k9", INDEX_KEY, "'k9' is not in FIELD_ENCRYPTION_KEYS"),
        (f"k1:{OLD_KEY}", "k1", "", "FIELD_BLIND_INDEX_KEY is not set"),
        (OLD_KEY, "k1", INDEX_KEY, "entry 1 is not <key id>:<base64 key>"),
        ("k1:not base64!", "k1", INDEX_KEY, "not valid base64"),
        (f"k1:{base64.b64encode(b'short').decode()}", "k1", INDEX_KEY, "decodes to 5 bytes"),
        (f"k1:{OLD_KEY},k1:{NEW_KEY}", "k1", INDEX_KEY, "appears twice"),
        (f"k1:{OLD_KEY}", "k1", base64.b64encode(b"short").decode(), "FIELD_BLIND_INDEX_KEY"),
    ],
)
def test_bad_configuration_is_named_without_showing_keys(
    keys: str, current: str, index_key: str, message: str
) -> None:
    with pytest.raises(FieldCryptConfigError, match=message) as raised:
        keyring(keys, current, index_key)
    for secret in (OLD_KEY, NEW_KEY, INDEX_KEY):
        assert secret not in str(raised.value)


def test_keys_never_appear_in_repr() -> None:
    crypt = keyring(f"k1:{OLD_KEY}", "k1")
    settings = FieldEncryptionSettings(field_encryption_keys=SecretStr(f"k1:{OLD_KEY}"))
    assert OLD_KEY not in repr(crypt) and OLD_KEY not in repr(settings)
    assert str(crypt.keys["k1"]) not in repr(crypt)
