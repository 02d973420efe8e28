"""Protobuf <-> domain conversion of data-subject requests (emr.identity.v1 privacy.proto). Kept
apart from emr_identity.converters (the PatientIdentityService's) as the privacy service's own."""

from __future__ import annotations

from datetime import datetime

from emr.identity.v1 import privacy_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from emr_identity.privacy import (
    DataSubjectRequest,
    FilingInput,
    RequestKind,
    RequestStatus,
    StatusEvent,
    StatusInput,
)
from emr_identity.privacy_service import RequestFilter
from emr_runtime.idempotency import fingerprint

_KINDS = {
    privacy_pb2.DATA_SUBJECT_REQUEST_KIND_ACCESS: RequestKind.ACCESS,
    privacy_pb2.DATA_SUBJECT_REQUEST_KIND_CORRECTION: RequestKind.CORRECTION,
    privacy_pb2.DATA_SUBJECT_REQUEST_KIND_RESTRICTION: RequestKind.RESTRICTION,
    privacy_pb2.DATA_SUBJECT_REQUEST_KIND_OBJECTION: RequestKind.OBJECTION,
    privacy_pb2.DATA_SUBJECT_REQUEST_KIND_WITHDRAWAL: RequestKind.WITHDRAWAL,
}
_KINDS_TO_PROTO = {value: key for key, value in _KINDS.items()}
_STATUSES = {
    privacy_pb2.DATA_SUBJECT_REQUEST_STATUS_RECEIVED: RequestStatus.RECEIVED,
    privacy_pb2.DATA_SUBJECT_REQUEST_STATUS_IN_PROGRESS: RequestStatus.IN_PROGRESS,
    privacy_pb2.DATA_SUBJECT_REQUEST_STATUS_COMPLETED: RequestStatus.COMPLETED,
    privacy_pb2.DATA_SUBJECT_REQUEST_STATUS_REFUSED: RequestStatus.REFUSED,
}
_STATUSES_TO_PROTO = {value: key for key, value in _STATUSES.items()}


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def filing_input(request: privacy_pb2.FileDataSubjectRequestRequest, key: bytes) -> FilingInput:
    return FilingInput(
        request_id=request.request_id,
        patient_id=request.patient_id,
        kind=_KINDS.get(request.kind),
        facility_code=request.facility_code,
        data_facility_code=request.data_facility_code,
        resource_reference=request.resource_reference,
        details=request.details,
        sharing_grant_id=request.sharing_grant_id,
        fingerprint=fingerprint(key, request.SerializeToString(deterministic=True)),
    )


def status_input(request: privacy_pb2.UpdateDataSubjectRequestStatusRequest, key: bytes) -> StatusInput:
    return StatusInput(
        request_id=request.request_id,
        data_subject_request_id=request.data_subject_request_id,
        expected_status=_STATUSES.get(request.expected_status),
        status=_STATUSES.get(request.status),
        reason=request.reason,
        facility_code=request.facility_code,
        fingerprint=fingerprint(key, request.SerializeToString(deterministic=True)),
    )


def request_filter(request: privacy_pb2.ListDataSubjectRequestsRequest) -> RequestFilter:
    return RequestFilter(
        facility_code=request.facility_code,
        patient_id=request.patient_id,
        status=_STATUSES.get(request.status),
        overdue_only=request.overdue_only,
        page_size=request.page_size,
        page_token=request.page_token,
    )


def _event_message(event: StatusEvent) -> privacy_pb2.DataSubjectRequestEvent:
    return privacy_pb2.DataSubjectRequestEvent(
        status=_STATUSES_TO_PROTO[event.status],
        occurred_time=_timestamp(event.occurred_at),
        actor_id=event.actor_id,
        facility_code=event.facility_code,
        reason=event.reason,
    )


def request_message(request: DataSubjectRequest, now: datetime) -> privacy_pb2.DataSubjectRequest:
    return privacy_pb2.DataSubjectRequest(
        data_subject_request_id=request.request_id,
        kind=_KINDS_TO_PROTO[request.kind],
        patient_id=request.patient_id,
        filed_by_facility_code=request.filed_by_facility_code,
        handling_facility_code=request.handling_facility_code,
        filed_time=_timestamp(request.filed_at),
        due_time=_timestamp(request.due_at),
        status=_STATUSES_TO_PROTO[request.status],
        overdue=request.overdue_at(now),
        resource_reference=request.resource_reference,
        details=request.details,
        sharing_grant_id=request.sharing_grant_id,
        history=[_event_message(e) for e in request.events],
        filed_by=request.filed_by,
    )
