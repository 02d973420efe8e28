"""Claim signatures: what sync signs is what the portal (the emulator's check) accepts, and any
change, another facility's key or a missing key is caught with a reason naming CHUKYDONVI."""

from __future__ import annotations

import base64
import json
from datetime import date
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree

from emr_claims.build import submission
from emr_national_emulator.signature import ClaimRefusal, FacilityCertificates, check_claim
from emr_sync.claim_signing import (
    ClaimDocumentError,
    ClaimSigner,
    FacilitySigningKey,
    MissingSigningKeyError,
    SigningKeyError,
    cert_path,
    generate_dev_signing_key,
    key_path,
    load_signing_keys,
    sign_claim,
)
from emr_sync.clients import NationalCredentials, parse_credentials

FACILITY, OTHER = "79001", "79002"


def claim(facility: str = FACILITY, summary_facility: str | None = None) -> bytes:
    summary = f"<TONG_HOP><MA_LK>enc-1</MA_LK><MA_CSKCB>{summary_facility or facility}</MA_CSKCB></TONG_HOP>"
    return submission(facility, [{"XML1": summary.encode()}], date(2026, 3, 1))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, FacilitySigningKey]]:
    folder = tmp_path_factory.mktemp("signing")
    return folder, {code: generate_dev_signing_key(folder, code) for code in (FACILITY, OTHER)}


@pytest.fixture
def portal(keys: tuple[Path, dict[str, FacilitySigningKey]]) -> FacilityCertificates:
    return FacilityCertificates(str(keys[0]))


def refusal(document: bytes, portal: FacilityCertificates, token_facility: str | None = None) -> ClaimRefusal:
    refused = check_claim(document, token_facility, portal)
    assert refused is not None
    return refused


def test_a_signed_claim_verifies_with_its_facilitys_certificate_and_covers_the_whole_envelope(
    keys: tuple[Path, dict[str, FacilitySigningKey]], portal: FacilityCertificates
) -> None:
    signed = sign_claim(claim(), keys[1][FACILITY])
    assert check_claim(signed, None, portal) is None
    assert check_claim(signed, FACILITY, portal) is None
    root = etree.fromstring(signed)
    ds = {"ds": "http://www.w3.org/2000/09/xmldsig#"}
    # Where and how: in CHUKYDONVI, one reference to the whole document, the certificate in KeyInfo.
    (signature,) = root.findall("CHUKYDONVI/ds:Signature", ds)
    (reference,) = signature.findall("ds:SignedInfo/ds:Reference", ds)
    assert reference.get("URI") == ""
    assert signature.find("ds:SignedInfo/ds:CanonicalizationMethod", ds).get("Algorithm") == (
        "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
    )
    assert signature.find("ds:SignedInfo/ds:SignatureMethod", ds).get("Algorithm") == (
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
    )
    certificate = signature.findtext("ds:KeyInfo/ds:X509Data/ds:X509Certificate", namespaces=ds)
    assert base64.b64decode("".join(certificate.split())) == keys[1][FACILITY].certificate.public_bytes(
        serialization.Encoding.DER
    )


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"<NGAYLAP>20260301<", b"<NGAYLAP>20260302<"),  # the envelope
        (b"<NOIDUNGFILE>PFRP", b"<NOIDUNGFILE>PFRQ"),  # one byte of a table
    ],
)
def test_one_byte_changed_after_signing_is_refused(
    keys: tuple[Path, dict[str, FacilitySigningKey]], portal: FacilityCertificates, old: bytes, new: bytes
) -> None:
    signed = sign_claim(claim(), keys[1][FACILITY])
    assert signed.count(old) == 1
    refused = refusal(signed.replace(old, new), portal)
    assert (refused.status, refused.expression) == (422, "CHUKYDONVI")
    assert "changed after signing" in refused.diagnostics


def test_a_changed_signature_value_is_refused(
    keys: tuple[Path, dict[str, FacilitySigningKey]], portal: FacilityCertificates
) -> None:
    signed = sign_claim(claim(), keys[1][FACILITY])
    start = signed.index(b"SignatureValue>") + len(b"SignatureValue>")
    flipped = b"A" if signed[start + 10 : start + 11] != b"A" else b"B"
    refused = refusal(signed[: start + 10] + flipped + signed[start + 11 :], portal)
    assert refused.expression == "CHUKYDONVI"
    assert "does not verify" in refused.diagnostics


def test_a_claim_signed_with_another_facilitys_key_is_refused(
    keys: tuple[Path, dict[str, FacilitySigningKey]], portal: FacilityCertificates
) -> None:
    other = keys[1][OTHER]
    impostor = FacilitySigningKey(FACILITY, other.key, other.certificate)
    refused = refusal(sign_claim(claim(), impostor), portal)
    assert refused.expression == "CHUKYDONVI"
    assert "not facility 79001's" in refused.diagnostics
    # Another facility's key behind this facility's certificate: the signature does not verify.
    forged = FacilitySigningKey(FACILITY, other.key, keys[1][FACILITY].certificate)
    refused = refusal(sign_claim(claim(), forged), portal)
    assert "does not verify" in refused.diagnostics


def test_an_unsigned_claim_and_a_foreign_facility_or_token_are_refused_with_the_field(
    keys: tuple[Path, dict[str, FacilitySigningKey]], portal: FacilityCertificates
) -> None:
    unsigned = refusal(claim(), portal)
    assert (unsigned.status, unsigned.expression) == (422, "CHUKYDONVI")
    assert "not signed" in unsigned.diagnostics
    signed = sign_claim(claim(), keys[1][FACILITY])
    token = refusal(signed, portal, token_facility=OTHER)
    assert (token.status, token.expression) == (403, "THONGTINDONVI.MACSKCB")
    mixed = refusal(sign_claim(claim(summary_facility=OTHER), keys[1][FACILITY]), portal)
    assert (mixed.status, mixed.expression) == (422, "XML1.MA_CSKCB")
    unknown = refusal(
        sign_claim(claim("79003"), generate_dev_signing_key(keys[0] / "elsewhere", "79003")), portal
    )
    assert "holds no certificate of facility 79003" in unknown.diagnostics


def test_a_facility_without_a_key_is_a_clear_error_and_nothing_is_signed() -> None:
    signer = ClaimSigner({})
    with pytest.raises(MissingSigningKeyError, match="facility '79001'"):
        signer.sign(FACILITY, claim())


def test_a_claim_is_only_signed_as_its_own_facilitys_unsigned_envelope(
    keys: tuple[Path, dict[str, FacilitySigningKey]],
) -> None:
    signer = ClaimSigner(keys[1])
    with pytest.raises(ClaimDocumentError, match="MACSKCB"):
        signer.sign(OTHER, claim(FACILITY))
    with pytest.raises(ClaimDocumentError, match="signed already"):
        signer.sign(FACILITY, signer.sign(FACILITY, claim()))


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def test_the_folder_loads_every_pair_and_refuses_half_or_mismatched_pairs(
    tmp_path: Path, keys: tuple[Path, dict[str, FacilitySigningKey]]
) -> None:
    source = keys[0]
    for name in (key_path(source, FACILITY).name, cert_path(source, FACILITY).name):
        (tmp_path / name).write_bytes((source / name).read_bytes())
    assert list(load_signing_keys(tmp_path)) == [FACILITY]
    # A certificate of another key: not one pair.
    (tmp_path / cert_path(source, FACILITY).name).write_bytes(cert_path(source, OTHER).read_bytes())
    with pytest.raises(SigningKeyError, match="does not match"):
        load_signing_keys(tmp_path)
    cert_path(tmp_path, FACILITY).unlink()
    with pytest.raises(SigningKeyError, match=r"79001\.cert\.pem is missing"):
        load_signing_keys(tmp_path)
    key_path(tmp_path, FACILITY).unlink()
    _write_key(key_path(tmp_path, FACILITY), rsa.generate_private_key(65537, 1024))
    (tmp_path / cert_path(source, FACILITY).name).write_bytes(cert_path(source, FACILITY).read_bytes())
    with pytest.raises(SigningKeyError, match="1024-bit"):
        load_signing_keys(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SigningKeyError, match=r"notes\.txt"):
        load_signing_keys(tmp_path)
    with pytest.raises(SigningKeyError, match="not a directory"):
        ClaimSigner.from_directory(str(tmp_path / "absent"), generate=False)


def test_in_development_a_facilitys_pair_is_made_once_on_first_use(tmp_path: Path) -> None:
    signer = ClaimSigner.from_directory(str(tmp_path), generate=True)
    signed = signer.sign("01001", claim("01001"))
    assert check_claim(signed, None, FacilityCertificates(str(tmp_path))) is None
    made = cert_path(tmp_path, "01001").read_bytes()
    assert ClaimSigner.from_directory(str(tmp_path), generate=True).facilities == ["01001"]
    generate_dev_signing_key(tmp_path, "01001")
    assert cert_path(tmp_path, "01001").read_bytes() == made


def test_national_credentials_are_per_facility_and_the_shared_client_only_a_fallback() -> None:
    text = json.dumps({FACILITY: {"client_id": "a", "client_secret": "s"}})
    own = parse_credentials(text, "test")
    strict = NationalCredentials(own, None)
    assert strict.for_facility(FACILITY).client_id == "a"
    assert "no national client credentials for facility '79002'" in strict.problem(OTHER)
    with pytest.raises(ValueError, match="needs a non-empty client_id"):
        parse_credentials(json.dumps({FACILITY: {"client_id": "a"}}), "test")
    with pytest.raises(ValueError, match="5-character facility code"):
        parse_credentials(json.dumps({"../x": {"client_id": "a", "client_secret": "s"}}), "test")
    with pytest.raises(ValueError, match="SYNC_NATIONAL_CREDENTIALS_FILE must name"):
        NationalCredentials.from_settings("", "dev", "dev-secret", shared_fallback=False)
    fallback = NationalCredentials.from_settings("", "dev", "dev-secret", shared_fallback=True)
    assert fallback.for_facility(OTHER).client_id == "dev"
