"""What the national insurance claim (XML1 of Decision 130/QĐ-BYT) needs of a person beyond the
demographics: nationality, ethnic group, occupation and the address of residence. Pure.

Codes are checked for their shape and, where the list is known here, their range:

- nationality (MA_QUOCTICH): 3 characters (digits or capital letters). Vietnamese is ``000``, the code
  the claim layout uses for Vietnamese citizens; the rest of the national list is not shipped, so
  other codes are checked for their shape only. A registration with a CCCD and no nationality is
  Vietnamese: a CCCD is issued to Vietnamese citizens only.
- ethnic group (MA_DANTOC): ``01``..``54``, the 54 groups of the national list (General Statistics
  Office); the names are not shipped.
- occupation (MA_NGHE_NGHIEP): 2 digits, the occupation classification to its second level, ``00``
  when the person has none; the list is not shipped, so the shape only.
- address: text (at most 1024 characters), the commune or ward code (5 digits) and, for an address
  written before 1 July 2025 when districts still existed, the district code (3 digits). The
  province is the registration's ``province_code``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from emr_runtime.errors import Violations

VIETNAMESE_NATIONALITY = "000"
ETHNIC_GROUP_COUNT = 54
MAX_ADDRESS_LENGTH = 1024

_NATIONALITY = re.compile(r"[0-9A-Z]{3}")
_TWO_DIGITS = re.compile(r"[0-9]{2}")
_COMMUNE = re.compile(r"[0-9]{5}")
_DISTRICT = re.compile(r"[0-9]{3}")


@dataclass(frozen=True)
class ClaimProfile:
    """Validated and normalised; an empty field is not known."""

    nationality_code: str = ""
    ethnicity_code: str = ""
    occupation_code: str = ""
    address: str = ""
    commune_code: str = ""
    district_code: str = ""

    def is_empty(self) -> bool:
        return self == NO_CLAIM_PROFILE


NO_CLAIM_PROFILE = ClaimProfile()


def is_ethnicity_code(code: str) -> bool:
    return bool(_TWO_DIGITS.fullmatch(code)) and 1 <= int(code) <= ETHNIC_GROUP_COUNT


def validate_claim_profile(violations: Violations, raw: ClaimProfile, has_cccd: bool) -> ClaimProfile:
    """The profile with its codes checked (each bad field named in ``violations``), spaces trimmed,
    the nationality in capitals and Vietnamese when a CCCD is given without one."""
    nationality = raw.nationality_code.strip().upper()
    if nationality and not _NATIONALITY.fullmatch(nationality):
        violations.add("nationality_code", "3 characters (digits or capital letters) of the national list")
    if not nationality and has_cccd:
        nationality = VIETNAMESE_NATIONALITY
    ethnicity = raw.ethnicity_code.strip()
    if ethnicity and not is_ethnicity_code(ethnicity):
        violations.add("ethnicity_code", f"2 digits, 01..{ETHNIC_GROUP_COUNT} of the national list")
    occupation = raw.occupation_code.strip()
    if occupation and not _TWO_DIGITS.fullmatch(occupation):
        violations.add("occupation_code", "2 digits (the occupation's second-level code; 00 for none)")
    address = " ".join(raw.address.split())
    if len(address) > MAX_ADDRESS_LENGTH:
        violations.add("address", f"at most {MAX_ADDRESS_LENGTH} characters")
    commune = raw.commune_code.strip()
    if commune and not _COMMUNE.fullmatch(commune):
        violations.add("commune_code", "the 5-digit code of a commune or ward")
    district = raw.district_code.strip()
    if district and not _DISTRICT.fullmatch(district):
        violations.add("district_code", "the 3-digit code of a district (addresses before 1 July 2025)")
    return ClaimProfile(nationality, ethnicity, occupation, address, commune, district)
