"""Conversions between emr.records.v1 messages and records domain types: one table per enum, one
function per resource type in each direction."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from emr.records.v1 import records_pb2, retention_pb2, sensitivity_pb2
from google.protobuf.message import Message

from emr_records.domain import (
    Change,
    ChangeKind,
    ChargeLineContent,
    ChargeLineKind,
    ChargeLineStatus,
    ClinicalRecord,
    Coding,
    ConditionClinicalStatus,
    ConditionContent,
    Department,
    DiagnosisRole,
    DocumentContent,
    DocumentStatus,
    DrugDetails,
    EncounterClass,
    EncounterContent,
    EncounterStatus,
    InsuranceCard,
    MedicationRequestContent,
    MedicationRequestStatus,
    ObservationContent,
    ObservationStatus,
    ProcedureContent,
    ProcedureStatus,
    ProgressNoteContent,
    ProgressNoteStatus,
    Quantity,
    ResourceInput,
    ResourceType,
    ServiceDetails,
)
from emr_records.retention import RetentionClass
from emr_records.retention_service import DueEpisode, RecordRetention
from emr_records.sensitivity import Restricted
from emr_runtime.clock import to_storage_precision
from emr_runtime.idempotency import fingerprint

E = TypeVar("E", bound=enum.Enum)


def _by_suffix(proto_enum: Any, domain_enum: type[E], prefix: str) -> dict[int, E]:
    """Maps proto enum numbers to domain members by name: ENCOUNTER_STATUS_FINISHED -> FINISHED."""
    return {
        number: domain_enum[name.removeprefix(prefix)]
        for name, number in proto_enum.items()
        if not name.endswith("_UNSPECIFIED")
    }


_CLASSES = _by_suffix(records_pb2.EncounterClass, EncounterClass, "ENCOUNTER_CLASS_")
_ENCOUNTER_STATUSES = _by_suffix(records_pb2.EncounterStatus, EncounterStatus, "ENCOUNTER_STATUS_")
_OBSERVATION_STATUSES = _by_suffix(records_pb2.ObservationStatus, ObservationStatus, "OBSERVATION_STATUS_")
_CLINICAL_STATUSES = _by_suffix(
    records_pb2.ConditionClinicalStatus, ConditionClinicalStatus, "CONDITION_CLINICAL_STATUS_"
)
_ROLES = _by_suffix(records_pb2.DiagnosisRole, DiagnosisRole, "DIAGNOSIS_ROLE_")
_MEDICATION_STATUSES = _by_suffix(
    records_pb2.MedicationRequestStatus, MedicationRequestStatus, "MEDICATION_REQUEST_STATUS_"
)
_PROCEDURE_STATUSES = _by_suffix(records_pb2.ProcedureStatus, ProcedureStatus, "PROCEDURE_STATUS_")
_DOCUMENT_STATUSES = _by_suffix(records_pb2.DocumentStatus, DocumentStatus, "DOCUMENT_STATUS_")
_RESOURCE_TYPES = _by_suffix(records_pb2.ResourceType, ResourceType, "RESOURCE_TYPE_")
_CHARGE_LINE_KINDS = _by_suffix(records_pb2.ChargeLineKind, ChargeLineKind, "CHARGE_LINE_KIND_")
_CHARGE_LINE_STATUSES = _by_suffix(records_pb2.ChargeLineStatus, ChargeLineStatus, "CHARGE_LINE_STATUS_")
_PROGRESS_NOTE_STATUSES = _by_suffix(
    records_pb2.ProgressNoteStatus, ProgressNoteStatus, "PROGRESS_NOTE_STATUS_"
)
# SurgeryClass numbers and the classes they name; an unknown number stays visible so that
# validation refuses it.
_SURGERY_CLASSES = {
    records_pb2.SURGERY_CLASS_SPECIAL: "special",
    records_pb2.SURGERY_CLASS_1: "1",
    records_pb2.SURGERY_CLASS_2: "2",
    records_pb2.SURGERY_CLASS_3: "3",
}
_CHANGE_KINDS = {
    ChangeKind.CREATED: records_pb2.CHANGE_KIND_CREATED,
    ChangeKind.UPDATED: records_pb2.CHANGE_KIND_UPDATED,
}
# oneof field of ClinicalResource for each resource type
ONEOF_FIELDS = {
    ResourceType.ENCOUNTER: "encounter",
    ResourceType.OBSERVATION: "observation",
    ResourceType.CONDITION: "condition",
    ResourceType.MEDICATION_REQUEST: "medication_request",
    ResourceType.PROCEDURE: "procedure",
    ResourceType.DOCUMENT_REFERENCE: "document_reference",
    ResourceType.CHARGE_LINE: "charge_line",
    ResourceType.PROGRESS_NOTE: "progress_note",
}


def _to_proto(table: Mapping[int, E], member: E | None) -> Any:
    return next(number for number, value in table.items() if value is member) if member is not None else 0


def time_filter(message: Message, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    return to_storage_precision(getattr(message, field).ToDatetime(tzinfo=UTC))


def _set_time(message: Message, field: str, value: datetime | None) -> None:
    if value is not None:
        getattr(message, field).FromDatetime(value)


def _quantity(message: Message, field: str) -> Quantity | None:
    if not message.HasField(field):
        return None
    value = getattr(message, field)
    return Quantity(value.value, value.unit)


def _set_quantity(message: Message, field: str, value: Quantity | None) -> None:
    if value is not None:
        getattr(message, field).CopyFrom(records_pb2.Quantity(value=value.value, unit=value.unit))


def _national_code(number: int, width: int = 1) -> str:
    """The national code an enum number stands for (enum numbers are the codes): 3 -> "03"."""
    return f"{number:0{width}d}" if number else ""


def _code_number(code: str) -> int:
    return int(code) if code.isdigit() else 0


def resource_type(value: int) -> ResourceType | None:
    return _RESOURCE_TYPES.get(value)


_CATEGORY_PREFIX = "SENSITIVITY_CATEGORY_"


def _category_names(values: Iterable[int]) -> tuple[str | None, ...]:
    """SensitivityCategory values as names without prefix ("HIV"); None for unset or unknown."""
    return tuple(
        sensitivity_pb2.SensitivityCategory.Name(value).removeprefix(_CATEGORY_PREFIX)
        if value in sensitivity_pb2.SensitivityCategory.values()
        and value != sensitivity_pb2.SENSITIVITY_CATEGORY_UNSPECIFIED
        else None
        for value in values
    )


def _category_values(names: Iterable[str]) -> list[Any]:
    return [sensitivity_pb2.SensitivityCategory.Value(_CATEGORY_PREFIX + name) for name in sorted(names)]


# --- proto -> domain ------------------------------------------------------------------------------


def _encounter_content(m: records_pb2.Encounter | records_pb2.CreateEncounterRequest) -> EncounterContent:
    return EncounterContent(
        encounter_class=_CLASSES.get(m.encounter_class),
        status=_ENCOUNTER_STATUSES.get(m.status),
        start_time=time_filter(m, "start_time"),
        end_time=time_filter(m, "end_time"),
        reason=m.reason,
        department=m.department,
        practitioner_id=m.practitioner_id,
        discharge_disposition=m.discharge_disposition,
        bhyt_number=m.insurance.bhyt_number if m.HasField("insurance") else "",
        benefit_level=m.insurance.benefit_level if m.HasField("insurance") else 0,
        insurance_cards=tuple(
            InsuranceCard(c.card_number, c.registered_facility_code, c.valid_from, c.valid_to)
            for c in m.insurance_cards
        ),
        visit_type_code=_national_code(m.visit_type, width=2),
        admission_reason=m.admission.reason,
        admission_diagnosis=m.admission.admission_diagnosis,
        inpatient_admission_time=time_filter(m.admission, "inpatient_admission_time"),
        referred_from_facility_code=m.admission.referred_from_facility_code,
        referral_paper_number=m.admission.referral_paper_number,
        accident_code=m.admission.accident_code,
        inpatient_reason=m.admission.inpatient_reason,
        inpatient_reason_code=m.admission.inpatient_reason_code,
        visit_subject_code=m.admission.visit_subject_code,
        discharge_diagnosis=m.discharge.discharge_diagnosis,
        outcome_code=_national_code(m.discharge.outcome),
        discharge_kind_code=_national_code(m.discharge.kind),
        referred_to_facility_code=m.discharge.referred_to_facility_code,
        follow_up_date=m.discharge.follow_up_date,
        departments=tuple(Department(d.department_code, time_filter(d, "start_time")) for d in m.departments),
        weight_kg=m.weight_kg,
        medical_record_number=m.medical_record_number,
        treatment_method=m.treatment_method,
    )


def _observation_content(m: records_pb2.Observation) -> ObservationContent:
    coding = m.value_coding if m.HasField("value_coding") else None
    return ObservationContent(
        loinc_code=m.loinc_code,
        status=_OBSERVATION_STATUSES.get(m.status),
        effective_time=time_filter(m, "effective_time"),
        value_quantity=_quantity(m, "value_quantity"),
        value_coding=Coding(coding.system, coding.code, coding.display) if coding is not None else None,
        value_text=m.value_text,
        range_low=_quantity(m.reference_range, "low"),
        range_high=_quantity(m.reference_range, "high"),
        interpretation=m.interpretation,
        index_code=m.index_code,
        index_name=m.index_name,
        service_code=m.service_code,
        reading_practitioner_code=m.reading_practitioner_code,
        description=m.description,
        conclusion=m.conclusion,
    )


def _condition_content(m: records_pb2.Condition) -> ConditionContent:
    return ConditionContent(
        icd10_code=m.icd10_code,
        clinical_status=_CLINICAL_STATUSES.get(m.clinical_status),
        role=_ROLES.get(m.role),
        recorded_time=time_filter(m, "recorded_time"),
        onset_time=time_filter(m, "onset_time"),
    )


def _medication_request_content(m: records_pb2.MedicationRequest) -> MedicationRequestContent:
    return MedicationRequestContent(
        drug_code=m.drug_code,
        drug_name=m.drug_name,
        status=_MEDICATION_STATUSES.get(m.status),
        authored_time=time_filter(m, "authored_time"),
        dose=_quantity(m, "dose"),
        route=m.route,
        doses_per_day=m.doses_per_day,
        duration_days=m.duration_days,
        quantity=_quantity(m, "quantity"),
    )


def _procedure_content(m: records_pb2.Procedure) -> ProcedureContent:
    return ProcedureContent(
        code=m.code,
        status=_PROCEDURE_STATUSES.get(m.status),
        performed_start_time=time_filter(m, "performed_start_time"),
        performed_end_time=time_filter(m, "performed_end_time"),
        performer_id=m.performer_id,
    )


def _document_content(m: records_pb2.DocumentReference) -> DocumentContent:
    signature = m.signature
    return DocumentContent(
        type_code=m.type_code,
        status=_DOCUMENT_STATUSES.get(m.status),
        content_type=m.content_type,
        content=m.content,
        document_time=time_filter(m, "document_time"),
        content_sha256=m.content_sha256,
        signer_id=signature.signer_id,
        certificate_thumbprint=signature.certificate_thumbprint,
        signature_algorithm=signature.algorithm,
        signed_time=time_filter(signature, "signed_time") if m.HasField("signature") else None,
    )


def _charge_line_content(m: records_pb2.ChargeLine) -> ChargeLineContent:
    drug = (
        DrugDetails(
            strength=m.drug.strength,
            route_code=m.drug.route_code,
            dose=m.drug.dose,
            usage=m.drug.usage,
            registration_number=m.drug.registration_number,
            dosage_form=m.drug.dosage_form,
        )
        if m.HasField("drug")
        else None
    )
    service = (
        ServiceDetails(
            bed_code=m.service.bed_code,
            anaesthesia_method_code=_national_code(m.service.anaesthesia_method),
            surgery_class=_SURGERY_CLASSES.get(m.service.surgery_class, f"unknown:{m.service.surgery_class}")
            if m.service.surgery_class
            else "",
            diagnosis_codes=tuple(m.service.diagnosis_codes),
        )
        if m.HasField("service")
        else None
    )
    return ChargeLineContent(
        kind=_CHARGE_LINE_KINDS.get(m.kind),
        status=_CHARGE_LINE_STATUSES.get(m.status),
        code=m.code,
        name=m.name,
        unit=m.unit,
        payment_group=m.payment_group,
        scope=m.scope,
        quantity=m.quantity,
        hospital_unit_price=m.hospital_unit_price,
        order_time=time_filter(m, "order_time"),
        insurance_unit_price=m.insurance_unit_price,
        bid_info=m.bid_info,
        service_payment_ratio=m.service_payment_ratio,
        insurance_payment_ratio=m.insurance_payment_ratio,
        department_code=m.department_code,
        ordering_practitioner_code=m.ordering_practitioner_code,
        performer_code=m.performer_code,
        execution_time=time_filter(m, "execution_time"),
        result_time=time_filter(m, "result_time"),
        drug=drug,
        service=service,
    )


def _progress_note_content(m: records_pb2.ProgressNote) -> ProgressNoteContent:
    return ProgressNoteContent(
        status=_PROGRESS_NOTE_STATUSES.get(m.status),
        clinical_course=m.clinical_course,
        note_time=time_filter(m, "note_time"),
        disease_stage=m.disease_stage,
        consultation=m.consultation,
        surgery=m.surgery,
        performer_code=m.performer_code,
    )


_CONTENT_FROM_PROTO: dict[str, Any] = {
    "encounter": (_encounter_content, "encounter_id"),
    "observation": (_observation_content, "observation_id"),
    "condition": (_condition_content, "condition_id"),
    "medication_request": (_medication_request_content, "medication_request_id"),
    "procedure": (_procedure_content, "procedure_id"),
    "document_reference": (_document_content, "document_id"),
    "charge_line": (_charge_line_content, "charge_line_id"),
    "progress_note": (_progress_note_content, "progress_note_id"),
}


def resource_input(
    request: records_pb2.CreateResourceRequest | records_pb2.UpdateResourceRequest,
    author_id: str,
    fingerprint_key: bytes,
) -> ResourceInput | None:
    """The resource of a create/update request; None when the request carries no resource."""
    which = request.resource.WhichOneof("resource")
    if which is None:
        return None
    message = getattr(request.resource, which)
    to_content, id_field = _CONTENT_FROM_PROTO[which]
    return ResourceInput(
        request_id=request.request_id,
        resource_id=getattr(message, id_field),
        patient_id=message.patient_id,
        facility_code=message.facility_code,
        encounter_id="" if which == "encounter" else message.encounter_id,
        content=to_content(message),
        fingerprint=fingerprint(fingerprint_key, request.SerializeToString(deterministic=True)),
        author_id=author_id,
        path=f"resource.{which}",
        sensitivity=_category_names(
            [*request.resource.sensitivity, *(message.sensitivity if which == "encounter" else ())]
        ),
    )


def encounter_input(
    request: records_pb2.CreateEncounterRequest, author_id: str, fingerprint_key: bytes
) -> ResourceInput:
    return ResourceInput(
        request_id=request.request_id,
        resource_id="",
        patient_id=request.patient_id,
        facility_code=request.facility_code,
        encounter_id="",
        content=_encounter_content(request),
        fingerprint=fingerprint(fingerprint_key, request.SerializeToString(deterministic=True)),
        author_id=author_id,
        sensitivity=_category_names(request.sensitivity),
    )


# --- domain -> proto ------------------------------------------------------------------------------


def _stamp_common(message: Message, record: ClinicalRecord) -> None:
    message.patient_id = record.patient_id  # type: ignore[attr-defined]
    message.facility_code = record.facility_code  # type: ignore[attr-defined]
    message.version = record.version  # type: ignore[attr-defined]
    _set_time(message, "create_time", record.created_at)
    _set_time(message, "update_time", record.updated_at)


def encounter_message(record: ClinicalRecord) -> records_pb2.Encounter:
    c = record.content
    assert isinstance(c, EncounterContent)
    message = records_pb2.Encounter(
        encounter_id=record.resource_id,
        encounter_class=_to_proto(_CLASSES, c.encounter_class),
        status=_to_proto(_ENCOUNTER_STATUSES, c.status),
        reason=c.reason,
        department=c.department,
        practitioner_id=c.practitioner_id,
        discharge_disposition=c.discharge_disposition,
    )
    if c.bhyt_number:
        message.insurance.CopyFrom(
            records_pb2.EncounterInsurance(bhyt_number=c.bhyt_number, benefit_level=c.benefit_level)
        )
    _set_time(message, "start_time", c.start_time)
    _set_time(message, "end_time", c.end_time)
    _set_claim_facts(message, c)
    _stamp_common(message, record)
    message.sensitivity.extend(_category_values(record.sensitivity))
    return message


def _set_claim_facts(message: records_pb2.Encounter, c: EncounterContent) -> None:
    for card in c.insurance_cards:
        message.insurance_cards.add(
            card_number=card.card_number,
            registered_facility_code=card.registered_facility_code,
            valid_from=card.valid_from,
            valid_to=card.valid_to,
        )
    message.visit_type = _code_number(c.visit_type_code)  # type: ignore[assignment]
    admission = records_pb2.EncounterAdmission(
        reason=c.admission_reason,
        admission_diagnosis=c.admission_diagnosis,
        referred_from_facility_code=c.referred_from_facility_code,
        referral_paper_number=c.referral_paper_number,
        accident_code=c.accident_code,
        inpatient_reason=c.inpatient_reason,
        inpatient_reason_code=c.inpatient_reason_code,
        visit_subject_code=c.visit_subject_code,
    )
    _set_time(admission, "inpatient_admission_time", c.inpatient_admission_time)
    if admission.ByteSize():
        message.admission.CopyFrom(admission)
    discharge = records_pb2.EncounterDischarge(
        discharge_diagnosis=c.discharge_diagnosis,
        outcome=_code_number(c.outcome_code),  # type: ignore[arg-type]
        kind=_code_number(c.discharge_kind_code),  # type: ignore[arg-type]
        referred_to_facility_code=c.referred_to_facility_code,
        follow_up_date=c.follow_up_date,
    )
    if discharge.ByteSize():
        message.discharge.CopyFrom(discharge)
    for department in c.departments:
        added = message.departments.add(department_code=department.department_code)
        _set_time(added, "start_time", department.start_time)
    message.weight_kg = c.weight_kg
    message.medical_record_number = c.medical_record_number
    message.treatment_method = c.treatment_method


def observation_message(record: ClinicalRecord) -> records_pb2.Observation:
    c = record.content
    assert isinstance(c, ObservationContent)
    message = records_pb2.Observation(
        observation_id=record.resource_id,
        encounter_id=record.encounter_id,
        loinc_code=c.loinc_code,
        status=_to_proto(_OBSERVATION_STATUSES, c.status),
        interpretation=c.interpretation,
    )
    _set_quantity(message, "value_quantity", c.value_quantity)
    if c.value_coding is not None:
        message.value_coding.CopyFrom(
            records_pb2.Coding(
                system=c.value_coding.system, code=c.value_coding.code, display=c.value_coding.display
            )
        )
    if c.value_text:
        message.value_text = c.value_text
    _set_quantity(message.reference_range, "low", c.range_low)
    _set_quantity(message.reference_range, "high", c.range_high)
    _set_time(message, "effective_time", c.effective_time)
    message.index_code = c.index_code
    message.index_name = c.index_name
    message.service_code = c.service_code
    message.reading_practitioner_code = c.reading_practitioner_code
    message.description = c.description
    message.conclusion = c.conclusion
    _stamp_common(message, record)
    return message


def _condition_message(record: ClinicalRecord) -> records_pb2.Condition:
    c = record.content
    assert isinstance(c, ConditionContent)
    message = records_pb2.Condition(
        condition_id=record.resource_id,
        encounter_id=record.encounter_id,
        icd10_code=c.icd10_code,
        clinical_status=_to_proto(_CLINICAL_STATUSES, c.clinical_status),
        role=_to_proto(_ROLES, c.role),
    )
    _set_time(message, "recorded_time", c.recorded_time)
    _set_time(message, "onset_time", c.onset_time)
    _stamp_common(message, record)
    return message


def _medication_request_message(record: ClinicalRecord) -> records_pb2.MedicationRequest:
    c = record.content
    assert isinstance(c, MedicationRequestContent)
    message = records_pb2.MedicationRequest(
        medication_request_id=record.resource_id,
        encounter_id=record.encounter_id,
        drug_code=c.drug_code,
        drug_name=c.drug_name,
        status=_to_proto(_MEDICATION_STATUSES, c.status),
        route=c.route,
        doses_per_day=c.doses_per_day,
        duration_days=c.duration_days,
    )
    _set_quantity(message, "dose", c.dose)
    _set_quantity(message, "quantity", c.quantity)
    _set_time(message, "authored_time", c.authored_time)
    _stamp_common(message, record)
    return message


def _procedure_message(record: ClinicalRecord) -> records_pb2.Procedure:
    c = record.content
    assert isinstance(c, ProcedureContent)
    message = records_pb2.Procedure(
        procedure_id=record.resource_id,
        encounter_id=record.encounter_id,
        code=c.code,
        status=_to_proto(_PROCEDURE_STATUSES, c.status),
        performer_id=c.performer_id,
    )
    _set_time(message, "performed_start_time", c.performed_start_time)
    _set_time(message, "performed_end_time", c.performed_end_time)
    _stamp_common(message, record)
    return message


def _document_message(record: ClinicalRecord) -> records_pb2.DocumentReference:
    c = record.content
    assert isinstance(c, DocumentContent)
    message = records_pb2.DocumentReference(
        document_id=record.resource_id,
        encounter_id=record.encounter_id,
        type_code=c.type_code,
        status=_to_proto(_DOCUMENT_STATUSES, c.status),
        content_type=c.content_type,
        content=c.content,
        content_sha256=c.content_sha256,
    )
    if c.signer_id:
        message.signature.CopyFrom(
            records_pb2.DocumentSignature(
                signer_id=c.signer_id,
                certificate_thumbprint=c.certificate_thumbprint,
                algorithm=c.signature_algorithm,
            )
        )
        _set_time(message.signature, "signed_time", c.signed_time)
    _set_time(message, "document_time", c.document_time)
    _stamp_common(message, record)
    return message


def _charge_line_message(record: ClinicalRecord) -> records_pb2.ChargeLine:
    c = record.content
    assert isinstance(c, ChargeLineContent)
    message = records_pb2.ChargeLine(
        charge_line_id=record.resource_id,
        encounter_id=record.encounter_id,
        kind=_to_proto(_CHARGE_LINE_KINDS, c.kind),
        status=_to_proto(_CHARGE_LINE_STATUSES, c.status),
        code=c.code,
        name=c.name,
        unit=c.unit,
        payment_group=c.payment_group,
        scope=c.scope,
        quantity=c.quantity,
        hospital_unit_price=c.hospital_unit_price,
        insurance_unit_price=c.insurance_unit_price,
        bid_info=c.bid_info,
        service_payment_ratio=c.service_payment_ratio,
        insurance_payment_ratio=c.insurance_payment_ratio,
        department_code=c.department_code,
        ordering_practitioner_code=c.ordering_practitioner_code,
        performer_code=c.performer_code,
    )
    if c.drug is not None:
        message.drug.CopyFrom(
            records_pb2.ChargeLineDrug(
                strength=c.drug.strength,
                route_code=c.drug.route_code,
                dose=c.drug.dose,
                usage=c.drug.usage,
                registration_number=c.drug.registration_number,
                dosage_form=c.drug.dosage_form,
            )
        )
    if c.service is not None:
        classes: dict[str, Any] = {name: number for number, name in _SURGERY_CLASSES.items()}
        message.service.CopyFrom(
            records_pb2.ChargeLineService(
                bed_code=c.service.bed_code,
                anaesthesia_method=_code_number(c.service.anaesthesia_method_code),  # type: ignore[arg-type]
                surgery_class=classes.get(c.service.surgery_class, 0),
                diagnosis_codes=c.service.diagnosis_codes,
            )
        )
    _set_time(message, "order_time", c.order_time)
    _set_time(message, "execution_time", c.execution_time)
    _set_time(message, "result_time", c.result_time)
    _stamp_common(message, record)
    return message


def _progress_note_message(record: ClinicalRecord) -> records_pb2.ProgressNote:
    c = record.content
    assert isinstance(c, ProgressNoteContent)
    message = records_pb2.ProgressNote(
        progress_note_id=record.resource_id,
        encounter_id=record.encounter_id,
        status=_to_proto(_PROGRESS_NOTE_STATUSES, c.status),
        clinical_course=c.clinical_course,
        disease_stage=c.disease_stage,
        consultation=c.consultation,
        surgery=c.surgery,
        performer_code=c.performer_code,
    )
    _set_time(message, "note_time", c.note_time)
    _stamp_common(message, record)
    return message


_MESSAGE_BUILDERS: dict[ResourceType, Any] = {
    ResourceType.ENCOUNTER: encounter_message,
    ResourceType.OBSERVATION: observation_message,
    ResourceType.CONDITION: _condition_message,
    ResourceType.MEDICATION_REQUEST: _medication_request_message,
    ResourceType.PROCEDURE: _procedure_message,
    ResourceType.DOCUMENT_REFERENCE: _document_message,
    ResourceType.CHARGE_LINE: _charge_line_message,
    ResourceType.PROGRESS_NOTE: _progress_note_message,
}


def resource_message(record: ClinicalRecord) -> records_pb2.ClinicalResource:
    message = records_pb2.ClinicalResource()
    getattr(message, ONEOF_FIELDS[record.resource_type]).CopyFrom(
        _MESSAGE_BUILDERS[record.resource_type](record)
    )
    message.sensitivity.extend(_category_values(record.sensitivity))
    return message


def version_message(record: ClinicalRecord) -> records_pb2.ResourceVersion:
    message = records_pb2.ResourceVersion(
        version=record.version,
        content_sha256=record.content_sha256,
        author_id=record.author_id,
        resource=resource_message(record),
    )
    message.recorded_time.FromDatetime(record.updated_at)
    return message


def timeline_entry(record: ClinicalRecord | Restricted) -> records_pb2.TimelineEntry:
    """A timeline entry; a restricted one names type, time and facility, and nothing else."""
    entry = records_pb2.TimelineEntry(
        resource_type=_to_proto(_RESOURCE_TYPES, record.resource_type), facility_code=record.facility_code
    )
    if isinstance(record, Restricted):
        entry.restricted = True
    else:
        entry.resource.CopyFrom(resource_message(record))
    entry.time.FromDatetime(record.time)
    return entry


def change_message(change: Change, record: ClinicalRecord) -> records_pb2.Change:
    assert change.kind is not None  # tombstones are never sent
    message = records_pb2.Change(
        sequence=change.sequence,
        kind=_CHANGE_KINDS[change.kind],
        resource_type=change.resource_type,
        resource_id=change.resource_id,
        resource_version=change.resource_version,
        patient_id=change.patient_id,
        facility_code=change.facility_code,
        resource=resource_message(record),
    )
    if record.resource_type is ResourceType.ENCOUNTER:
        message.encounter.CopyFrom(encounter_message(record))
    message.commit_time.FromDatetime(change.committed_at)
    return message


# --- retention (emr_records.retention_service) ----------------------------------------------------

_RETENTION_CLASSES: dict[int, RetentionClass] = {
    retention_pb2.RETENTION_CLASS_STANDARD_10_YEARS: RetentionClass.STANDARD_10_YEARS,
    retention_pb2.RETENTION_CLASS_SPECIAL_20_YEARS: RetentionClass.SPECIAL_20_YEARS,
    retention_pb2.RETENTION_CLASS_DEATH_30_YEARS: RetentionClass.DEATH_30_YEARS,
    retention_pb2.RETENTION_CLASS_PERMANENT: RetentionClass.PERMANENT,
}
_HOLD_TARGETS: dict[int, str] = {
    retention_pb2.LEGAL_HOLD_TARGET_PATIENT: "patient",
    retention_pb2.LEGAL_HOLD_TARGET_ENCOUNTER: "encounter",
}


def retention_class(value: int) -> RetentionClass | None:
    return _RETENTION_CLASSES.get(value)


def _retention_class_number(value: RetentionClass | str) -> Any:
    member = value if isinstance(value, RetentionClass) else RetentionClass(value)
    return _to_proto(_RETENTION_CLASSES, member)


def hold_target(value: int) -> str | None:
    return _HOLD_TARGETS.get(value)


def retention_message(found: RecordRetention) -> retention_pb2.GetRecordRetentionResponse:
    message = retention_pb2.GetRecordRetentionResponse(
        own_class=_retention_class_number(found.own_class),
        effective_class=_retention_class_number(found.episode.retention_class),
        episode_key=found.episode.key,
        disposal_date=found.disposal_date.isoformat() if found.disposal_date else "",
        hold_ids=found.hold_ids,
        patient_id=found.record.patient_id,
    )
    _set_time(message, "clock_start_time", found.episode.clock_start)
    return message


def legal_hold_message(hold: Mapping[str, Any], release: Mapping[str, Any] | None) -> retention_pb2.LegalHold:
    message = retention_pb2.LegalHold(
        hold_id=hold["_id"],
        target=next(number for number, name in _HOLD_TARGETS.items() if name == hold["target"]),  # type: ignore[arg-type]
        target_id=hold["target_id"],
        patient_id=hold["patient_id"],
        reason=hold["reason"],
        placed_by=hold["placed_by"],
    )
    _set_time(message, "place_time", hold["placed_at"])
    if release is not None:
        message.released_by = release["released_by"]
        message.release_reason = release["reason"]
        _set_time(message, "release_time", release["released_at"])
    return message


def _disposed_records(items: list[Mapping[str, Any]]) -> list[retention_pb2.DisposedRecord]:
    return [
        retention_pb2.DisposedRecord(
            resource_type=_to_proto(_RESOURCE_TYPES, ResourceType(item["resource_type"])),
            resource_id=item["resource_id"],
        )
        for item in items
    ]


def due_episode_message(due: DueEpisode) -> retention_pb2.DueEpisode:
    return _due_episode(
        {
            "key": due.episode.key,
            "patient_id": due.episode.patient_id,
            "retention_class": due.episode.retention_class.value,
            "clock_start": due.episode.clock_start,
            "disposal_date": due.disposal_date.isoformat(),
            "records": [
                {"resource_type": r.resource_type.value, "resource_id": r.resource_id}
                for r in due.episode.records
            ],
        }
    )


def _due_episode(listed: Mapping[str, Any]) -> retention_pb2.DueEpisode:
    message = retention_pb2.DueEpisode(
        episode_key=listed["key"],
        patient_id=listed["patient_id"],
        retention_class=_retention_class_number(listed["retention_class"]),
        disposal_date=listed["disposal_date"],
        records=_disposed_records(listed["records"]),
    )
    _set_time(message, "clock_start_time", listed["clock_start"])
    return message


def disposal_message(
    plan: Mapping[str, Any], approval: Mapping[str, Any] | None, certificate: Mapping[str, Any] | None
) -> retention_pb2.Disposal:
    status = (
        retention_pb2.DISPOSAL_STATUS_COMPLETED
        if certificate is not None
        else retention_pb2.DISPOSAL_STATUS_IN_PROGRESS
        if approval is not None
        else retention_pb2.DISPOSAL_STATUS_AWAITING_APPROVAL
    )
    message = retention_pb2.Disposal(
        disposal_id=plan["_id"],
        status=status,
        as_of=plan["as_of"],
        reason=plan["reason"],
        requested_by=plan["requested_by"],
        episodes=[_due_episode(listed) for listed in plan["episodes"]],
        list_sha256=plan["list_sha256"],
    )
    _set_time(message, "request_time", plan["requested_at"])
    if approval is not None:
        message.approved_by = approval["approved_by"]
        _set_time(message, "approve_time", approval["approved_at"])
    if certificate is not None:
        message.certificate.CopyFrom(
            retention_pb2.DisposalCertificate(
                disposal_id=certificate["_id"],
                requested_by=certificate["requested_by"],
                approved_by=certificate["approved_by"],
                disposed=_disposed_records(certificate["disposed"]),
                kept=_disposed_records(certificate["kept"]),
                disposed_count=certificate["disposed_count"],
                episode_count=certificate["episode_count"],
                disposed_sha256=certificate["disposed_sha256"],
                as_of=certificate["as_of"],
            )
        )
        _set_time(message.certificate, "complete_time", certificate["completed_at"])
    return message
