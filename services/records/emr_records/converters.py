"""Conversions between emr.records.v1 messages and records domain types: one table per enum, one
function per resource type in each direction."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from emr.records.v1 import records_pb2
from google.protobuf.message import Message

from emr_records.domain import (
    Change,
    ChangeKind,
    ClinicalRecord,
    Coding,
    ConditionClinicalStatus,
    ConditionContent,
    DiagnosisRole,
    DocumentContent,
    DocumentStatus,
    EncounterClass,
    EncounterContent,
    EncounterStatus,
    MedicationRequestContent,
    MedicationRequestStatus,
    ObservationContent,
    ObservationStatus,
    ProcedureContent,
    ProcedureStatus,
    Quantity,
    ResourceInput,
    ResourceType,
)
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


def resource_type(value: int) -> ResourceType | None:
    return _RESOURCE_TYPES.get(value)


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


_CONTENT_FROM_PROTO: dict[str, Any] = {
    "encounter": (_encounter_content, "encounter_id"),
    "observation": (_observation_content, "observation_id"),
    "condition": (_condition_content, "condition_id"),
    "medication_request": (_medication_request_content, "medication_request_id"),
    "procedure": (_procedure_content, "procedure_id"),
    "document_reference": (_document_content, "document_id"),
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
    _stamp_common(message, record)
    return message


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


_MESSAGE_BUILDERS: dict[ResourceType, Any] = {
    ResourceType.ENCOUNTER: encounter_message,
    ResourceType.OBSERVATION: observation_message,
    ResourceType.CONDITION: _condition_message,
    ResourceType.MEDICATION_REQUEST: _medication_request_message,
    ResourceType.PROCEDURE: _procedure_message,
    ResourceType.DOCUMENT_REFERENCE: _document_message,
}


def resource_message(record: ClinicalRecord) -> records_pb2.ClinicalResource:
    message = records_pb2.ClinicalResource()
    getattr(message, ONEOF_FIELDS[record.resource_type]).CopyFrom(
        _MESSAGE_BUILDERS[record.resource_type](record)
    )
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


def timeline_entry(record: ClinicalRecord) -> records_pb2.TimelineEntry:
    entry = records_pb2.TimelineEntry(resource=resource_message(record))
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
