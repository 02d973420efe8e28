"""Patient identity domain: validation and normalisation of registrations. Pure; no I/O."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field, replace
from datetime import date, datetime

from emr_identity.birth_dates import BirthDate
from emr_identity.claim_profile import NO_CLAIM_PROFILE, ClaimProfile, validate_claim_profile
from emr_identity.vietnamese import (
    CCCD_PATTERN,
    CardSex,
    NameParts,
    bhyt_card_code_problem,
    bhyt_social_insurance_code,
    cccd_problem,
    is_province_code,
    normalize_name,
    normalize_phone,
    split_name,
)
from emr_runtime.errors import Violations
from emr_runtime.facility import is_facility_code, normalize_facility_code
from emr_runtime.idempotency import check_request_id

PASSPORT = re.compile(r"[0-9A-Z]{6,12}")
MRN = re.compile(r"[0-9A-Za-z][0-9A-Za-z._/-]{0,31}")
MAX_NAME_LENGTH = 200
EARLIEST_BIRTH_DATE = date(1900, 1, 1)


class IdentifierSystem(enum.Enum):
    CCCD = "CCCD"
    BHYT = "BHYT"
    PASSPORT = "PASSPORT"
    MRN = "MRN"


# Key prefixes per system; MRN keys also carry the facility (an MRN is unique per facility only).
_KEY_PREFIXES = {
    IdentifierSystem.CCCD: "cccd",
    IdentifierSystem.BHYT: "bhyt",
    IdentifierSystem.PASSPORT: "pp",
    IdentifierSystem.MRN: "mrn",
}


def identifier_key(system: IdentifierSystem, value: str, facility_code: str = "") -> str:
    """The one key an identifier is stored and looked up under (uniqueness claims, blocks, search):
    every place that keys by an identifier value calls this, so the value can become a blind index
    (e.g. an HMAC) here alone. ``value`` is normalised (a BHYT: its 10-digit social insurance code)."""
    if system is IdentifierSystem.MRN:
        return f"mrn:{facility_code}:{value}"
    return f"{_KEY_PREFIXES[system]}:{value}"


def phone_key(phone: str) -> str:
    """The one key a normalised phone number is stored and looked up under (see identifier_key)."""
    return f"ph:{phone}"


class Sex(enum.Enum):
    MALE = "male"
    FEMALE = "female"
    OTHER = "other"
    UNKNOWN = "unknown"


class PersonStatus(enum.Enum):
    # Written, identifiers not yet all claimed: invisible to readers.
    PROVISIONAL = "provisional"
    ACTIVE = "active"
    # Lost an identifier race: the registration resolved to the person in ``superseded_by``.
    SUPERSEDED = "superseded"
    # Merged into the person in ``merged_into``; reads follow it there; UnmergePatients restores it.
    MERGED = "merged"


_CARD_SEXES = {Sex.MALE: CardSex.MALE, Sex.FEMALE: CardSex.FEMALE}


class DataQualityWarning(enum.Enum):
    """A doubt about a person's data that does not stop registration: the data is kept as given
    and the doubt shown with it (Patient.data_quality_warnings), for the desk or a steward to clear."""

    # The CCCD's century and birth-year digits name another birth year than birth_date. People's
    # birth years are often wrong on other papers (or only the year was guessed), and the card
    # number is what links them: refusing the registration would leave the patient unregistered.
    CCCD_BIRTH_YEAR_MISMATCH = "cccd_birth_year_mismatch"


def cccd_birth_year(value: str) -> int:
    """The birth year a valid 12-digit CCCD encodes: century from digit 4, year from digits 5-6."""
    return 1900 + 100 * (int(value[3]) // 2) + int(value[4:6])


def cccd_card_sex(value: str) -> CardSex:
    """The sex a valid 12-digit CCCD encodes in digit 4 (odd: female)."""
    return CardSex.FEMALE if int(value[3]) % 2 else CardSex.MALE


def data_quality_warnings(
    identifiers: tuple[Identifier, ...], birth_date: BirthDate
) -> tuple[DataQualityWarning, ...]:
    """What is doubtful in these data (derived on every read, so a corrected birth date clears it)."""
    cccds = [i.value for i in identifiers if i.system is IdentifierSystem.CCCD]
    if any(CCCD_PATTERN.fullmatch(v) and cccd_birth_year(v) != birth_date.year for v in cccds):
        return (DataQualityWarning.CCCD_BIRTH_YEAR_MISMATCH,)
    return ()


class Outcome(enum.Enum):
    CREATED = "created"
    EXISTING = "existing"
    LINKED = "linked"
    REVIEW = "review"
    # An identifier of the registration belongs to a person known by another name or birth date
    # (matching.identifier_conflict): a person of its own, and a review task.
    CONFLICT = "identifier_conflict"


class EventKind(enum.Enum):
    CREATED = "created"
    LINKED = "linked"
    MERGED = "merged"
    UNMERGED = "unmerged"
    REJECTED = "rejected"
    REVIEW_OPENED = "review_opened"
    UPDATED = "updated"
    # A facility that sees only its own data updated its record of the person (UpdatePatient); a
    # change of the shared demographics became a proposal (review task) instead.
    RECORD_UPDATED = "record_updated"
    # A reviewer rejected a proposed change of the shared demographics.
    CHANGE_REJECTED = "change_rejected"


@dataclass(frozen=True)
class BhytCard:
    """What a BHYT card says beyond its code, for the insurance claim: validity (GT_THE_TU,
    GT_THE_DEN) and the facility registered for primary care (MA_DKBD); each may be unknown."""

    valid_from: date | None = None
    valid_to: date | None = None
    primary_care_facility_code: str = ""


@dataclass(frozen=True)
class Identifier:
    system: IdentifierSystem
    value: str
    facility_code: str = ""
    # BHYT identifiers only.
    bhyt_card: BhytCard | None = None

    @property
    def claim_key(self) -> str | None:
        """Key under which this identifier is unique across persons; None if it need not be."""
        if self.system in (IdentifierSystem.CCCD, IdentifierSystem.MRN):
            return identifier_key(self.system, self.value, self.facility_code)
        return None


@dataclass(frozen=True)
class RawBhytCard:
    """A BHYT card's validity and primary-care facility as received (dates as YYYY-MM-DD)."""

    valid_from: str = ""
    valid_to: str = ""
    primary_care_facility_code: str = ""


@dataclass(frozen=True)
class RawIdentifier:
    """An identifier as received; ``system`` is None when the caller sent an unknown system."""

    system: IdentifierSystem | None
    value: str
    facility_code: str
    bhyt_card: RawBhytCard | None = None


@dataclass(frozen=True)
class RegistrationInput:
    """A RegisterPatient request as received, before validation."""

    request_id: str
    identifiers: tuple[RawIdentifier, ...]
    full_name: str
    birth_date: str
    sex: Sex | None
    facility_code: str
    fingerprint: str
    phone: str = ""
    # 2-digit province code (GSO) of the address; empty when unknown.
    province_code: str = ""
    family_name: str = ""
    middle_name: str = ""
    given_name: str = ""
    # Accepts a CCCD whose century/sex digit disagrees with sex, or that encodes a birth year still
    # to come: cards with known issuing errors exist. (A birth year that merely disagrees with
    # birth_date is accepted without it, with a DataQualityWarning.)
    accept_inconsistent_cccd: bool = False
    # Accepts a CCCD whose first three digits are not a province code: the birth was registered
    # abroad (the code such cards carry there is not on the province list).
    cccd_registered_abroad: bool = False
    # What the insurance claim needs beyond the demographics, as received (not yet validated);
    # None in an update that leaves the held profile as it is.
    claim_profile: ClaimProfile | None = NO_CLAIM_PROFILE


@dataclass(frozen=True)
class Registration:
    """A validated, normalised registration."""

    request_id: str
    identifiers: tuple[Identifier, ...]
    full_name: str
    birth_date: BirthDate
    sex: Sex
    facility_code: str
    fingerprint: str
    name_parts: NameParts = field(default_factory=lambda: NameParts("", "", ""))
    phone: str = ""
    province_code: str = ""
    claim_profile: ClaimProfile = NO_CLAIM_PROFILE


@dataclass(frozen=True)
class Person:
    person_id: str
    identifiers: tuple[Identifier, ...]
    full_name: str
    birth_date: BirthDate
    sex: Sex
    registering_facility_code: str
    created_at: datetime
    status: PersonStatus
    request_fingerprint: str
    superseded_by: str = ""
    claim_keys: tuple[str, ...] = field(default=())
    phone: str = ""
    province_code: str = ""
    # Facility records registered to this very person (merged persons keep their own).
    record_ids: tuple[str, ...] = ()
    merged_into: str = ""
    merged_person_ids: tuple[str, ...] = ()
    # Persons a reviewer judged different from this one: never proposed as its match.
    rejected_person_ids: tuple[str, ...] = ()
    event_ids: tuple[str, ...] = ()
    version: int = 1
    # Nationality, ethnic group, occupation and address of the first registration (the claim's).
    claim_profile: ClaimProfile = NO_CLAIM_PROFILE

    @property
    def data_quality_warnings(self) -> tuple[DataQualityWarning, ...]:
        return data_quality_warnings(self.identifiers, self.birth_date)


@dataclass(frozen=True)
class LinkEvent:
    """One entry of a person's link log."""

    event_id: str
    kind: EventKind
    person_id: str
    at: datetime
    actor_id: str
    other_person_id: str = ""
    record_id: str = ""
    reason: str = ""
    # For UPDATED: the version the update produced and the review task it opened, if any.
    version: int = 0
    review_task_id: str = ""
    request_fingerprint: str = ""


def normalize_identifier_value(raw: str) -> str:
    return "".join(raw.split()).upper()


def validate_identifier(
    violations: Violations, path: str, raw: RawIdentifier, today: date
) -> Identifier | None:
    if raw.system is None:
        violations.add(f"{path}.system", "unknown identifier system; use CCCD, BHYT, PASSPORT or MRN")
        return None
    value = (
        normalize_identifier_value(raw.value) if raw.system is not IdentifierSystem.MRN else raw.value.strip()
    )
    facility_code = normalize_facility_code(raw.facility_code)
    problem = {
        IdentifierSystem.CCCD: None if CCCD_PATTERN.fullmatch(value) else "a CCCD has exactly 12 digits",
        IdentifierSystem.BHYT: None
        if bhyt_social_insurance_code(value)
        else "a BHYT number has 15 characters (e.g. DN4790123456789) or 10 digits",
        IdentifierSystem.PASSPORT: None if PASSPORT.fullmatch(value) else "6 to 12 letters or digits",
        IdentifierSystem.MRN: None if MRN.fullmatch(value) else "1 to 32 letters, digits or . _ / -",
    }[raw.system]
    if not problem and raw.system is IdentifierSystem.BHYT:
        problem = bhyt_card_code_problem(value, today)
    if not value:
        problem = "required"
    if problem:
        violations.add(f"{path}.value", problem)
    card = None
    if raw.bhyt_card is not None:
        if raw.system is IdentifierSystem.BHYT:
            card = validate_bhyt_card(violations, f"{path}.bhyt_card", raw.bhyt_card)
        else:
            violations.add(f"{path}.bhyt_card", "only BHYT identifiers carry a card")
    if raw.system is IdentifierSystem.MRN:
        if not is_facility_code(facility_code):
            violations.add(f"{path}.facility_code", "an MRN needs the 5-character code of its facility")
    elif facility_code:
        violations.add(f"{path}.facility_code", "only MRN identifiers carry a facility code")
    if problem:
        return None
    return Identifier(
        raw.system, value, facility_code if raw.system is IdentifierSystem.MRN else "", bhyt_card=card
    )


def _card_date(violations: Violations, path: str, raw: str) -> date | None:
    if not raw:
        return None
    try:
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", raw):
            raise ValueError(raw)
        return date.fromisoformat(raw)
    except ValueError:
        violations.add(path, "not a calendar date in the form YYYY-MM-DD")
        return None


def validate_bhyt_card(violations: Violations, path: str, raw: RawBhytCard) -> BhytCard:
    """The card's validity dates (YYYY-MM-DD, from not after to) and primary-care facility code."""
    valid_from = _card_date(violations, f"{path}.valid_from", raw.valid_from.strip())
    valid_to = _card_date(violations, f"{path}.valid_to", raw.valid_to.strip())
    if valid_from and valid_to and valid_from > valid_to:
        violations.add(f"{path}.valid_to", "is before valid_from")
    facility = normalize_facility_code(raw.primary_care_facility_code)
    if facility and not is_facility_code(facility):
        violations.add(f"{path}.primary_care_facility_code", "the 5-character code of a facility")
    return BhytCard(valid_from, valid_to, facility)


BIRTH_DATE_FORMS = "YYYY, YYYY-MM or YYYY-MM-DD"


def parse_birth_date(
    violations: Violations, raw: str, today: date, field_name: str = "birth_date"
) -> BirthDate | None:
    """A birth date known to the year (``1985``), the month (``1985-07``) or the day."""
    if not raw:
        violations.add(field_name, f"required, as {BIRTH_DATE_FORMS}")
        return None
    try:
        parsed = BirthDate.parse(raw)
    except ValueError:
        violations.add(field_name, f"not a date in one of the forms {BIRTH_DATE_FORMS}")
        return None
    if parsed.earliest() > today:
        violations.add(field_name, "is in the future")
    elif parsed.year < EARLIEST_BIRTH_DATE.year:
        violations.add(field_name, f"is before {EARLIEST_BIRTH_DATE.isoformat()}")
    return parsed


def _cccd_refusal(
    value: str, sex: Sex | None, today: date, accept_inconsistent: bool, registered_abroad: bool
) -> str | None:
    """Why a CCCD is refused, None if it is accepted. A province off the list is valid only for a
    birth registered abroad. The century/sex digit is refused when it disagrees with a male or
    female sex, and so is a card whose digits encode a birth year still to come: digit 4 is one
    digit standing for two facts, and a mismatch there (unlike a birth year that disagrees with the
    birth date, a warning: see DataQualityWarning) most often is a mistyped card number, which the
    desk can fix at once by reading the card again; a wrong number would otherwise claim another
    citizen's CCCD. ``accept_inconsistent`` accepts such a card as it is (known issuing errors)."""
    problem = cccd_problem(value, None, None, registered_abroad=registered_abroad)
    if problem or accept_inconsistent:
        return problem
    expected = _CARD_SEXES.get(sex) if sex is not None else None
    if expected is not None and cccd_card_sex(value) is not expected:
        return "century/sex digit disagrees with sex"
    if cccd_birth_year(value) > today.year:
        return "century digit and birth-year digits name a birth year still to come"
    return None


def validate_registration(raw: RegistrationInput, today: date) -> Registration:
    """Checks every field, reporting all violations at once; returns the normalised registration."""
    violations = Violations()
    check_request_id(violations, raw.request_id)
    full_name = normalize_name(raw.full_name)
    if not full_name:
        violations.add("full_name", "required")
    elif len(full_name) > MAX_NAME_LENGTH:
        violations.add("full_name", f"at most {MAX_NAME_LENGTH} characters")
    elif not any(character.isalpha() for character in full_name):
        violations.add("full_name", "must contain letters")
    birth_date = parse_birth_date(violations, raw.birth_date, today)
    if raw.sex is None:
        violations.add("sex", "required: MALE, FEMALE, OTHER or UNKNOWN")
    facility_code = normalize_facility_code(raw.facility_code)
    if not is_facility_code(facility_code):
        violations.add("facility_code", "the 5-character code of the registering facility")
    identifiers: list[Identifier] = []
    seen: set[tuple[IdentifierSystem, str]] = set()
    for index, raw_identifier in enumerate(raw.identifiers):
        path = f"identifiers[{index}]"
        identifier = validate_identifier(violations, path, raw_identifier, today)
        if identifier is None:
            continue
        slot = (identifier.system, identifier.facility_code)
        if slot in seen:
            violations.add(path, "a second identifier of the same system (and facility)")
            continue
        seen.add(slot)
        identifiers.append(identifier)
        if identifier.system is IdentifierSystem.CCCD:
            problem = _cccd_refusal(
                identifier.value, raw.sex, today, raw.accept_inconsistent_cccd, raw.cccd_registered_abroad
            )
            if problem:
                violations.add(f"{path}.value", problem)
    phone = ""
    if raw.phone.strip():
        phone = normalize_phone(raw.phone) or ""
        if not phone:
            violations.add("phone", "a Vietnamese mobile or landline number (+84 or 0 prefix)")
    province_code = raw.province_code.strip()
    if province_code and not is_province_code(province_code):
        violations.add("province_code", "the 2-digit code of a province (before or after 1 July 2025)")
    has_cccd = any(i.system is IdentifierSystem.CCCD for i in identifiers)
    claim_profile = validate_claim_profile(violations, raw.claim_profile or NO_CLAIM_PROFILE, has_cccd)
    violations.raise_if_any()
    assert birth_date is not None and raw.sex is not None  # guaranteed by the checks above
    return Registration(
        request_id=raw.request_id,
        identifiers=tuple(identifiers),
        full_name=full_name,
        birth_date=birth_date,
        sex=raw.sex,
        facility_code=facility_code,
        fingerprint=raw.fingerprint,
        name_parts=split_name(full_name, raw.family_name, raw.middle_name, raw.given_name),
        phone=phone,
        province_code=province_code,
        claim_profile=claim_profile,
    )


# Search results show the last characters of identifiers and phones only: enough to tell two
# persons apart at the desk, not enough to learn a number one did not know.
MASK_VISIBLE_CHARACTERS = 4


def mask(value: str) -> str:
    """``value`` with all but its last MASK_VISIBLE_CHARACTERS characters replaced by ``*`` (a
    value that short entirely)."""
    if len(value) <= MASK_VISIBLE_CHARACTERS:
        return "*" * len(value)
    return "*" * (len(value) - MASK_VISIBLE_CHARACTERS) + value[-MASK_VISIBLE_CHARACTERS:]


def masked(person: Person) -> Person:
    """The person with national identifiers (CCCD, BHYT, passport) and phone masked; a facility's
    MRNs, its own numbers, stay readable."""
    return replace(
        person,
        identifiers=tuple(
            i if i.system is IdentifierSystem.MRN else replace(i, value=mask(i.value))
            for i in person.identifiers
        ),
        phone=mask(person.phone),
        # Search results tell persons apart; address and origin are for GetPatient only.
        claim_profile=NO_CLAIM_PROFILE,
    )


def check_patient_id(patient_id: str, field_name: str = "patient_id") -> str:
    violations = Violations()
    if not patient_id.strip():
        violations.add(field_name, "required")
    elif len(patient_id) > 64:
        violations.add(field_name, "at most 64 characters")
    violations.raise_if_any()
    return patient_id.strip()


def new_person(registration: Registration, person_id: str, now: datetime) -> Person:
    # CCCD first: it decides which person a registration resolves to.
    ordered = sorted(registration.identifiers, key=lambda i: i.system is not IdentifierSystem.CCCD)
    claim_keys = tuple(key for key in (i.claim_key for i in ordered) if key is not None)
    return Person(
        person_id=person_id,
        identifiers=registration.identifiers,
        full_name=registration.full_name,
        birth_date=registration.birth_date,
        sex=registration.sex,
        registering_facility_code=registration.facility_code,
        created_at=now,
        status=PersonStatus.PROVISIONAL,
        request_fingerprint=registration.fingerprint,
        claim_keys=claim_keys,
        phone=registration.phone,
        province_code=registration.province_code,
        claim_profile=registration.claim_profile,
    )


# --- patient change feed ------------------------------------------------------------------------


class PatientChangeKind(enum.Enum):
    """What changed a person, as the patient change feed tells it (what the national side must hold)."""

    REGISTERED = "registered"
    UPDATED = "updated"
    MERGED = "merged"  # the person was merged into ``other_person_id``
    MERGE_SURVIVOR = "merge_survivor"  # ``other_person_id`` was merged into the person
    UNMERGED = "unmerged"  # the person's merge into ``other_person_id`` was undone
    UNMERGE_SURVIVOR = "unmerge_survivor"  # ``other_person_id`` was restored from the person


@dataclass(frozen=True)
class PatientChange:
    """One position of the patient change feed; a tombstone fills a position whose write never
    completed. ``key`` names the change's cause (the link-log event it follows), so that a retried
    request records it once."""

    sequence: int
    committed_at: datetime
    kind: PatientChangeKind | None = None
    person_id: str = ""
    other_person_id: str = ""
    key: str = ""
    tombstone: bool = False
