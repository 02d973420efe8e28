"""The portal's checks of a signed document's signature and of who may submit it (the /claims
hooks): a GIAMDINHHS claim, an XML0 check-in or a withdrawal (emr_claims.spec.FACILITY_PATHS names
where each names its facility; the check-in and the withdrawal are checked like the claim).

A GIAMDINHHS envelope must carry, in CHUKYDONVI, one W3C XMLDSig enveloped signature of the whole
document (Reference URI=""), RSA-SHA256 over SHA-256 digests, inclusive Canonical XML 1.0, whose
KeyInfo carries the X.509 certificate of the facility named by THONGTINDONVI/MACSKCB; that
certificate must be the one the portal holds for the facility (emr_sync.claim_signing says where
this profile comes from). The XML1 summary inside must name the same facility (MA_CSKCB), and a
token bound to a facility may only submit that facility's claims.

Each refusal names the field: CHUKYDONVI for the signature, THONGTINDONVI.MACSKCB and
XML1.MA_CSKCB for the facility. Reasons never quote the claim's content.
"""

from __future__ import annotations

import base64
import binascii
import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from lxml import etree
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.exceptions import InvalidDigest, InvalidSignature, SignXMLException
from signxml.verifier import SignatureConfiguration, XMLVerifier

from emr_claims.spec import ENVELOPE_ROOT, FACILITY_PATHS, SIGNATURE_ELEMENT
from emr_runtime.facility import is_facility_code

XMLDSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
C14N_1_0 = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
CERT_SUFFIX = ".cert.pem"
_NS = {"ds": XMLDSIG_NS}
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
_CONFIG = SignatureConfiguration(
    location=f"./{SIGNATURE_ELEMENT}/",
    expect_references=1,
    signature_methods=frozenset({SignatureMethod.RSA_SHA256}),
    digest_algorithms=frozenset({DigestAlgorithm.SHA256}),
)


@dataclass(frozen=True)
class ClaimRefusal:
    """Why a claim is refused: HTTP status, reason and the field it concerns."""

    status: int
    diagnostics: str
    expression: str


def _refused(diagnostics: str, expression: str = SIGNATURE_ELEMENT, status: int = 422) -> ClaimRefusal:
    return ClaimRefusal(status, diagnostics, expression)


class FacilityCertificates:
    """The certificates the portal holds, ``<facility_code>.cert.pem`` in a folder, read when a
    claim needs one (a facility registered later is found without a restart)."""

    def __init__(self, directory: str) -> None:
        self._directory = Path(directory) if directory else None
        self._cache: dict[str, tuple[float, x509.Certificate]] = {}

    def get(self, facility_code: str) -> x509.Certificate | None:
        if self._directory is None or not is_facility_code(facility_code):
            return None
        path = self._directory / f"{facility_code}{CERT_SUFFIX}"
        try:
            modified = path.stat().st_mtime
        except OSError:
            return None
        cached = self._cache.get(facility_code)
        if cached is not None and cached[0] == modified:
            return cached[1]
        try:
            certificate = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            return None
        self._cache[facility_code] = (modified, certificate)
        return certificate


def _summary_facility(root: etree._Element) -> str | None:
    """MA_CSKCB of the XML1 table, or None when XML1 is absent or unreadable (the claim's own
    validation reports that)."""
    for element in root.iter("FILEHOSO"):
        if element.findtext("LOAIHOSO") != "XML1":
            continue
        try:
            summary = etree.fromstring(
                base64.b64decode(element.findtext("NOIDUNGFILE") or "", validate=True), _PARSER
            )
        except (binascii.Error, ValueError, etree.XMLSyntaxError):
            return None
        return str(summary.findtext(".//MA_CSKCB") or "")
    return None


def _key_info_certificate(signature: etree._Element) -> x509.Certificate | ClaimRefusal:
    texts = signature.findall("ds:KeyInfo/ds:X509Data/ds:X509Certificate", _NS)
    if len(texts) != 1:
        return _refused("CHUKYDONVI: KeyInfo must carry exactly one X509Certificate")
    try:
        der = base64.b64decode("".join((texts[0].text or "").split()), validate=True)
        return x509.load_der_x509_certificate(der)
    except (binascii.Error, ValueError):
        return _refused("CHUKYDONVI: the KeyInfo X509Certificate is not a DER certificate in base64")


def check_claim(
    document: bytes,
    token_facility: str | None,
    certificates: FacilityCertificates,
    expected_root: str = ENVELOPE_ROOT,
) -> ClaimRefusal | None:
    """None when the claim is signed by its facility's registered certificate, covers the whole
    envelope, names one facility throughout and may be submitted with this token; else why not.
    ``token_facility`` is the facility the bearer token is bound to (None: the shared dev client)."""
    try:
        root = etree.fromstring(document, _PARSER)
    except etree.XMLSyntaxError:
        return _refused("body is not well-formed XML", expected_root)
    if root.tag != expected_root:
        return _refused(f"root element must be {expected_root}", expected_root)
    facility_path = FACILITY_PATHS[expected_root]
    facility_field = facility_path.replace("/", ".")
    named = {(element.text or "").strip() for element in root.findall(facility_path)}
    facility = named.pop() if len(named) == 1 else ""
    if not is_facility_code(facility):
        return _refused("the document must name one 5-character facility code", facility_field)
    if token_facility is not None and facility != token_facility:
        return _refused(
            f"this client may submit claims of facility {token_facility} only, not {facility}",
            facility_field,
            status=403,
        )
    summary_facility = _summary_facility(root)
    if summary_facility is not None and summary_facility != facility:
        return _refused("XML1.MA_CSKCB must be the envelope's MACSKCB", "XML1.MA_CSKCB")
    places = root.findall(SIGNATURE_ELEMENT)
    if len(places) != 1:
        return _refused("exactly one CHUKYDONVI element is required")
    signatures = places[0].findall("ds:Signature", _NS)
    if not signatures:
        return _refused("CHUKYDONVI: the claim is not signed (a facility's XMLDSig is required)")
    if len(signatures) > 1 or len(places[0]) > 1:
        return _refused("CHUKYDONVI must hold exactly one ds:Signature")
    registered = certificates.get(facility)
    if registered is None:
        return _refused(f"CHUKYDONVI: the portal holds no certificate of facility {facility}")
    now = datetime.datetime.now(datetime.UTC)
    if not registered.not_valid_before_utc <= now <= registered.not_valid_after_utc:
        return _refused(f"CHUKYDONVI: facility {facility}'s certificate is not valid now")
    presented = _key_info_certificate(signatures[0])
    if isinstance(presented, ClaimRefusal):
        return presented
    if presented != registered:
        return _refused(f"CHUKYDONVI: signed with a certificate that is not facility {facility}'s")
    if signatures[0].find("ds:SignedInfo/ds:CanonicalizationMethod", _NS) is None or (
        signatures[0].find("ds:SignedInfo/ds:CanonicalizationMethod", _NS).get("Algorithm") != C14N_1_0
    ):
        return _refused(f"CHUKYDONVI: SignedInfo must be canonicalized with {C14N_1_0}")
    try:
        verified = XMLVerifier().verify(document, x509_cert=registered, expect_config=_CONFIG)
    except InvalidDigest:
        return _refused("CHUKYDONVI: the signed content was changed after signing (digest mismatch)")
    except InvalidSignature:
        return _refused(f"CHUKYDONVI: the signature does not verify with facility {facility}'s certificate")
    except SignXMLException as error:
        return _refused(f"CHUKYDONVI: invalid signature ({type(error).__name__})")
    signed = verified[0] if isinstance(verified, list) else verified
    if getattr(signed.signed_xml, "tag", None) != expected_root:
        return _refused('CHUKYDONVI: the signature must cover the whole document (Reference URI="")')
    return None
