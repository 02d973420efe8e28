"""Conversions between emr.records.v1 messages and records domain types."""

from __future__ import annotations

from datetime import UTC, datetime

from emr.records.v1 import records_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from emr_records.domain import Change, ChangeKind, Encounter, EncounterClass, EncounterInput, EncounterStatus
from emr_runtime.clock import to_storage_precision
from emr_runtime.idempotency import fingerprint

_CLASSES = {
    records_pb2.ENCOUNTER_CLASS_OUTPATIENT: EncounterClass.OUTPATIENT,
    records_pb2.ENCOUNTER_CLASS_INPATIENT: EncounterClass.INPATIENT,
    records_pb2.ENCOUNTER_CLASS_EMERGENCY: EncounterClass.EMERGENCY,
    records_pb2.ENCOUNTER_CLASS_DAY_CARE: EncounterClass.DAY_CARE,
}
_CLASSES_TO_PROTO = {value: key for key, value in _CLASSES.items()}
_STATUSES = {
    records_pb2.ENCOUNTER_STATUS_PLANNED: EncounterStatus.PLANNED,
    records_pb2.ENCOUNTER_STATUS_IN_PROGRESS: EncounterStatus.IN_PROGRESS,
    records_pb2.ENCOUNTER_STATUS_FINISHED: EncounterStatus.FINISHED,
    records_pb2.ENCOUNTER_STATUS_CANCELLED: EncounterStatus.CANCELLED,
}
_STATUSES_TO_PROTO = {value: key for key, value in _STATUSES.items()}
_KINDS_TO_PROTO = {
    ChangeKind.CREATED: records_pb2.CHANGE_KIND_CREATED,
    ChangeKind.UPDATED: records_pb2.CHANGE_KIND_UPDATED,
}


def _time(message: records_pb2.CreateEncounterRequest, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    stamp: Timestamp = getattr(message, field)
    return to_storage_precision(stamp.ToDatetime(tzinfo=UTC))


def encounter_input(request: records_pb2.CreateEncounterRequest) -> EncounterInput:
    return EncounterInput(
        request_id=request.request_id,
        patient_id=request.patient_id,
        facility_code=request.facility_code,
        encounter_class=_CLASSES.get(request.encounter_class),
        status=_STATUSES.get(request.status),
        start_time=_time(request, "start_time"),
        end_time=_time(request, "end_time"),
        reason=request.reason,
        fingerprint=fingerprint(request.SerializeToString(deterministic=True)),
    )


def encounter_message(encounter: Encounter) -> records_pb2.Encounter:
    message = records_pb2.Encounter(
        encounter_id=encounter.encounter_id,
        patient_id=encounter.patient_id,
        facility_code=encounter.facility_code,
        encounter_class=_CLASSES_TO_PROTO[encounter.encounter_class],
        status=_STATUSES_TO_PROTO[encounter.status],
        reason=encounter.reason,
        version=encounter.version,
    )
    message.start_time.FromDatetime(encounter.start_time)
    if encounter.end_time is not None:
        message.end_time.FromDatetime(encounter.end_time)
    message.create_time.FromDatetime(encounter.created_at)
    return message


def change_message(change: Change, encounter: Encounter) -> records_pb2.Change:
    assert change.kind is not None  # tombstones are never sent
    message = records_pb2.Change(
        sequence=change.sequence,
        kind=_KINDS_TO_PROTO[change.kind],
        resource_type=change.resource_type,
        resource_id=change.resource_id,
        resource_version=change.resource_version,
        patient_id=change.patient_id,
        facility_code=change.facility_code,
        encounter=encounter_message(encounter),
    )
    message.commit_time.FromDatetime(change.committed_at)
    return message
