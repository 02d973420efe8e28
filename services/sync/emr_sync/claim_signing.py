"""Digital signature of health-insurance claims, per facility (CHUKYDONVI of the GIAMDINHHS envelope).

What the portal expects: the BHXH assessment portal takes a W3C XMLDSig *enveloped* signature of
the whole GIAMDINHHS document, made with the facility's own certificate, placed inside the
envelope's CHUKYDONVI element. Public integration guides of QĐ 130/4750 submitters describe it as:
RSA-SHA256 (http://www.w3.org/2001/04/xmldsig-more#rsa-sha256), SHA-256 digests, inclusive
Canonical XML 1.0 (http://www.w3.org/TR/2001/REC-xml-c14n-20010315), one Reference with URI=""
(the whole document) and the enveloped-signature transform, KeyInfo carrying the X509Certificate,
the ds:Signature appended to CHUKYDONVI. BHXH publishes no normative schema for it that we could
cite; this follows those guides, and the national emulator checks exactly this (see
emr_national_emulator.signature).

Keys and certificates come from a folder (SYNC_FACILITY_SIGNING_DIR) holding, per facility,
``<facility_code>.key.pem`` (PKCS#8 or PKCS#1 RSA) and ``<facility_code>.cert.pem``. They are read
at start; a missing half or a key that does not match its certificate stops the start. In
development (SYNC_FACILITY_SIGNING_GENERATE) a facility's key and a self-signed certificate are made
in that folder on first use, where the emulator finds the certificate.
"""

from __future__ import annotations

import datetime
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from signxml.algorithms import (
    CanonicalizationMethod,
    DigestAlgorithm,
    SignatureConstructionMethod,
    SignatureMethod,
)
from signxml.signer import XMLSigner

from emr_claims.spec import FACILITY_PATHS, SIGNATURE_ELEMENT
from emr_runtime.facility import is_facility_code

KEY_SUFFIX = ".key.pem"
CERT_SUFFIX = ".cert.pem"
XMLDSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
# The algorithms of the portal's signature (module docstring); the emulator expects the same.
C14N_METHOD = CanonicalizationMethod.CANONICAL_XML_1_0
SIGNATURE_METHOD = SignatureMethod.RSA_SHA256
DIGEST_METHOD = DigestAlgorithm.SHA256
MIN_RSA_BITS = 2048
DEV_CERT_DAYS = 825
# A facility's development key another replica is making: how long to wait for its certificate.
GENERATION_WAIT_SECONDS = 5.0
# Claims are our own documents; still, no entity expansion and no network access while parsing.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=False)


class SigningKeyError(ValueError):
    """A facility's signing material is missing, unreadable or inconsistent; says which file."""


class MissingSigningKeyError(SigningKeyError):
    """No key and certificate are configured for the claim's facility: the claim cannot be signed."""


class ClaimDocumentError(ValueError):
    """The claim document cannot be signed as it is (not a GIAMDINHHS envelope of that facility)."""


@dataclass(frozen=True)
class FacilitySigningKey:
    """One facility's private key and the X.509 certificate that goes into KeyInfo."""

    facility_code: str
    key: rsa.RSAPrivateKey
    certificate: x509.Certificate

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def key_path(directory: Path, facility_code: str) -> Path:
    return directory / f"{facility_code}{KEY_SUFFIX}"


def cert_path(directory: Path, facility_code: str) -> Path:
    return directory / f"{facility_code}{CERT_SUFFIX}"


def load_signing_key(directory: Path, facility_code: str) -> FacilitySigningKey:
    """A facility's pair from ``directory``; SigningKeyError naming the file when it is not usable."""
    key_file, cert_file = key_path(directory, facility_code), cert_path(directory, facility_code)
    if not key_file.is_file() and not cert_file.is_file():
        raise MissingSigningKeyError(f"no signing key for facility {facility_code} in {directory}")
    for path in (key_file, cert_file):
        if not path.is_file():
            raise SigningKeyError(f"{path} is missing: a facility needs both {KEY_SUFFIX} and {CERT_SUFFIX}")
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (ValueError, TypeError) as error:
        raise SigningKeyError(f"{key_file} is not an unencrypted PEM private key: {error}") from error
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SigningKeyError(f"{key_file} must be an RSA key (the portal verifies RSA-SHA256)")
    if key.key_size < MIN_RSA_BITS:
        raise SigningKeyError(f"{key_file} is a {key.key_size}-bit key; at least {MIN_RSA_BITS} bits")
    try:
        certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except ValueError as error:
        raise SigningKeyError(f"{cert_file} is not a PEM X.509 certificate: {error}") from error
    if certificate.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        raise SigningKeyError(f"{cert_file} does not match {key_file}: they are not one key pair")
    return FacilitySigningKey(facility_code, key, certificate)


def load_signing_keys(directory: Path) -> dict[str, FacilitySigningKey]:
    """Every facility's pair in ``directory`` (files named ``<facility_code>.key.pem`` and
    ``.cert.pem``); SigningKeyError on a half pair, a mismatched pair or a file of another name."""
    if not directory.is_dir():
        raise SigningKeyError(f"SYNC_FACILITY_SIGNING_DIR {directory} is not a directory")
    facilities: set[str] = set()
    for path in directory.iterdir():
        # Kubernetes mounts a Secret's files through hidden ..data links: only visible names count.
        if path.name.startswith("."):
            continue
        name = path.name
        code = name.removesuffix(KEY_SUFFIX).removesuffix(CERT_SUFFIX)
        if code == name or not is_facility_code(code):
            raise SigningKeyError(
                f"{path}: expected <facility_code>{KEY_SUFFIX} or <facility_code>{CERT_SUFFIX} "
                "with a 5-character facility code"
            )
        facilities.add(code)
    return {code: load_signing_key(directory, code) for code in sorted(facilities)}


def _self_signed(facility_code: str, key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"Facility {facility_code} (development)"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "EMR platform development"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=DEV_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )


def _temporary(directory: Path, content: bytes) -> Path:
    handle, name = tempfile.mkstemp(dir=directory, prefix=".new-")
    with os.fdopen(handle, "wb") as file:
        file.write(content)
    return Path(name)


def generate_dev_signing_key(directory: Path, facility_code: str) -> FacilitySigningKey:
    """Makes a facility's development key and self-signed certificate in ``directory`` unless
    there (development only). Each file appears whole and only once (a hard link of a finished
    temporary file), so replicas making the same facility's key at once end up with one pair."""
    if not is_facility_code(facility_code):
        raise ClaimDocumentError(f"MACSKCB {facility_code!r} is not a 5-character facility code")
    directory.mkdir(parents=True, exist_ok=True)
    key_file, cert_file = key_path(directory, facility_code), cert_path(directory, facility_code)
    if not key_file.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=MIN_RSA_BITS)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        certificate = _self_signed(facility_code, key)
        new_key = _temporary(directory, key_pem)
        new_cert = _temporary(directory, certificate.public_bytes(serialization.Encoding.PEM))
        try:
            os.link(new_key, key_file)
            os.link(new_cert, cert_file)
        except FileExistsError:
            pass  # another process made this facility's key first: use theirs
        finally:
            new_key.unlink()
            new_cert.unlink()
    deadline = time.monotonic() + GENERATION_WAIT_SECONDS
    while not cert_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return load_signing_key(directory, facility_code)


def _envelope(document: bytes, facility_code: str) -> tuple[etree._Element, etree._Element]:
    """(root, empty CHUKYDONVI) of a document ``facility_code`` sends: a GIAMDINHHS claim, an XML0
    check-in or a withdrawal (emr_claims.spec.FACILITY_PATHS)."""
    try:
        root = etree.fromstring(document, _PARSER)
    except etree.XMLSyntaxError as error:
        raise ClaimDocumentError("the claim is not well-formed XML") from error
    facility_path = FACILITY_PATHS.get(root.tag)
    if facility_path is None:
        raise ClaimDocumentError(f"the claim's root element {root.tag!r} is not a document the portal takes")
    named = [(element.text or "").strip() for element in root.findall(facility_path)]
    if not named or any(name != facility_code for name in named):
        where = facility_path.rsplit("/", 1)[-1]
        raise ClaimDocumentError(f"the document's {where} is not facility {facility_code}")
    places = root.findall(SIGNATURE_ELEMENT)
    if len(places) != 1:
        raise ClaimDocumentError(f"the claim needs exactly one {SIGNATURE_ELEMENT} element")
    if len(places[0]) or (places[0].text or "").strip():
        raise ClaimDocumentError(f"the claim's {SIGNATURE_ELEMENT} is not empty: it is signed already")
    return root, places[0]


def sign_claim(document: bytes, signing_key: FacilitySigningKey) -> bytes:
    """The document (claim, check-in or withdrawal) with an enveloped XMLDSig of the whole document
    in its CHUKYDONVI."""
    root, place = _envelope(document, signing_key.facility_code)
    # signxml puts an enveloped signature where it finds this placeholder.
    etree.SubElement(place, f"{{{XMLDSIG_NS}}}Signature", Id="placeholder", nsmap={"ds": XMLDSIG_NS})
    signer = XMLSigner(
        method=SignatureConstructionMethod.enveloped,
        signature_algorithm=SIGNATURE_METHOD,
        digest_algorithm=DIGEST_METHOD,
        c14n_algorithm=C14N_METHOD,
    )
    signed = signer.sign(root, key=signing_key.key, cert=[signing_key.certificate_pem])
    result: bytes = etree.tostring(signed, encoding="utf-8", xml_declaration=True)
    return result


class ClaimSigner:
    """The signing keys of every facility this replica sends claims for."""

    def __init__(
        self, keys: dict[str, FacilitySigningKey], directory: Path | None = None, generate: bool = False
    ) -> None:
        self._keys = dict(keys)
        self._directory = directory
        self._generate = generate and directory is not None

    @classmethod
    def from_directory(cls, directory: str, generate: bool) -> ClaimSigner:
        """Loads every pair of ``directory`` (empty: no facility can sign; generate: made on
        first use, development only)."""
        if not directory:
            if generate:
                raise SigningKeyError("SYNC_FACILITY_SIGNING_GENERATE needs SYNC_FACILITY_SIGNING_DIR")
            return cls({})
        path = Path(directory)
        if generate:
            path.mkdir(parents=True, exist_ok=True)
        return cls(load_signing_keys(path), path, generate)

    @property
    def facilities(self) -> list[str]:
        return sorted(self._keys)

    def key_of(self, facility_code: str) -> FacilitySigningKey:
        """The facility's key; MissingSigningKeyError when it has none (and none may be made)."""
        key = self._keys.get(facility_code)
        if key is not None:
            return key
        if not self._generate or self._directory is None:
            raise MissingSigningKeyError(f"no signing key and certificate for facility {facility_code!r}")
        key = generate_dev_signing_key(self._directory, facility_code)
        self._keys[facility_code] = key
        return key

    def sign(self, facility_code: str, document: bytes) -> bytes:
        """The claim signed with its facility's key; SigningKeyError or ClaimDocumentError when
        it cannot be (the claim must then not be sent)."""
        return sign_claim(document, self.key_of(facility_code))
