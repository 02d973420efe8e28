"""gRPC transport of record retention (emr.records.v1.RecordRetentionService): protobuf in,
protobuf out; the use cases are emr_records.retention_service's."""

from __future__ import annotations

from typing import Any

import grpc
from emr.audit.v1 import audit_pb2
from emr.records.v1 import retention_pb2, retention_pb2_grpc

from emr_records import converters
from emr_records.domain import visit_day
from emr_records.retention_service import RetentionService, check_as_of
from emr_runtime.caller import caller_from_metadata
from emr_runtime.clock import utc_now
from emr_runtime.interceptors import AuditRule
from emr_runtime.paging import page_size

RETENTION_SERVICE_NAME = "emr.records.v1.RecordRetentionService"
Context = grpc.aio.ServicerContext[Any, Any]


def _actor(context: Context) -> str:
    return caller_from_metadata(context.invocation_metadata()).actor_id


class RecordRetentionServicer(retention_pb2_grpc.RecordRetentionServiceServicer):
    def __init__(self, service: RetentionService) -> None:
        self._service = service

    async def GetRecordRetention(
        self, request: retention_pb2.GetRecordRetentionRequest, context: Context
    ) -> retention_pb2.GetRecordRetentionResponse:
        found = await self._service.retention(
            converters.resource_type(request.resource_type), request.resource_id
        )
        return converters.retention_message(found)

    async def ClassifyRecord(
        self, request: retention_pb2.ClassifyRecordRequest, context: Context
    ) -> retention_pb2.ClassifyRecordResponse:
        found = await self._service.classify(
            request.request_id,
            converters.resource_type(request.resource_type),
            request.resource_id,
            converters.retention_class(request.retention_class),
            request.reason,
            _actor(context),
        )
        return retention_pb2.ClassifyRecordResponse(retention=converters.retention_message(found))

    async def PlaceLegalHold(
        self, request: retention_pb2.PlaceLegalHoldRequest, context: Context
    ) -> retention_pb2.PlaceLegalHoldResponse:
        hold, release = await self._service.place_hold(
            request.request_id,
            converters.hold_target(request.target),
            request.target_id,
            request.reason,
            _actor(context),
        )
        return retention_pb2.PlaceLegalHoldResponse(hold=converters.legal_hold_message(hold, release))

    async def ReleaseLegalHold(
        self, request: retention_pb2.ReleaseLegalHoldRequest, context: Context
    ) -> retention_pb2.ReleaseLegalHoldResponse:
        hold, release = await self._service.release_hold(request.hold_id, request.reason, _actor(context))
        return retention_pb2.ReleaseLegalHoldResponse(hold=converters.legal_hold_message(hold, release))

    async def ListDueRecords(
        self, request: retention_pb2.ListDueRecordsRequest, context: Context
    ) -> retention_pb2.ListDueRecordsResponse:
        as_of = check_as_of(request.as_of, visit_day(utc_now()))
        due, more = await self._service.due(as_of, page_size(request.page_size, default=100, maximum=500))
        return retention_pb2.ListDueRecordsResponse(
            episodes=[converters.due_episode_message(item) for item in due], more=more
        )

    async def RequestDisposal(
        self, request: retention_pb2.RequestDisposalRequest, context: Context
    ) -> retention_pb2.RequestDisposalResponse:
        plan = await self._service.request_disposal(
            request.request_id, request.as_of, request.reason, _actor(context)
        )
        return retention_pb2.RequestDisposalResponse(disposal=converters.disposal_message(plan, None, None))

    async def ApproveDisposal(
        self, request: retention_pb2.ApproveDisposalRequest, context: Context
    ) -> retention_pb2.ApproveDisposalResponse:
        plan, approval, certificate = await self._service.approve_disposal(
            request.disposal_id, _actor(context)
        )
        return retention_pb2.ApproveDisposalResponse(
            disposal=converters.disposal_message(plan, approval, certificate)
        )

    async def GetDisposal(
        self, request: retention_pb2.GetDisposalRequest, context: Context
    ) -> retention_pb2.GetDisposalResponse:
        plan, approval, certificate = await self._service.disposal(request.disposal_id)
        return retention_pb2.GetDisposalResponse(
            disposal=converters.disposal_message(plan, approval, certificate)
        )


# --- audit: every call names the patients whose records it touched -------------------------------


def _retention_patient(request: Any, response: Any) -> str:
    return str(response.patient_id) if response is not None else ""


def _classified_patient(request: Any, response: Any) -> str:
    return str(response.retention.patient_id) if response is not None else ""


def _hold_patient(request: Any, response: Any) -> str:
    return str(response.hold.patient_id) if response is not None else ""


def _hold_id(request: Any, response: Any) -> str:
    return str(response.hold.hold_id) if response is not None else str(getattr(request, "hold_id", ""))


def _due_patients(request: Any, response: Any) -> list[str]:
    return list(dict.fromkeys(e.patient_id for e in response.episodes))


def _listed_patients(request: Any, response: Any) -> list[str]:
    return list(dict.fromkeys(e.patient_id for e in response.disposal.episodes))


def _disposed_patients(request: Any, response: Any) -> list[str]:
    disposed = {r.resource_id for r in response.disposal.certificate.disposed}
    return list(
        dict.fromkeys(
            e.patient_id
            for e in response.disposal.episodes
            if any(r.resource_id in disposed for r in e.records)
        )
    )


def _disposal_id(request: Any, response: Any) -> str:
    return (
        str(response.disposal.disposal_id)
        if response is not None
        else str(getattr(request, "disposal_id", ""))
    )


def _no_patient(request: Any, response: Any) -> str:
    return ""


_METHODS = {
    "GetRecordRetention": AuditRule(
        audit_pb2.AUDIT_ACTION_READ,
        "RecordRetention",
        _retention_patient,
        lambda request, response: str(request.resource_id),
    ),
    "ClassifyRecord": AuditRule(
        audit_pb2.AUDIT_ACTION_UPDATE,
        "RecordRetention",
        _classified_patient,
        lambda request, response: str(request.resource_id),
    ),
    "PlaceLegalHold": AuditRule(audit_pb2.AUDIT_ACTION_CREATE, "LegalHold", _hold_patient, _hold_id),
    "ReleaseLegalHold": AuditRule(audit_pb2.AUDIT_ACTION_UPDATE, "LegalHold", _hold_patient, _hold_id),
    "ListDueRecords": AuditRule(
        audit_pb2.AUDIT_ACTION_SEARCH, "ClinicalResource", _no_patient, patient_ids=_due_patients
    ),
    "RequestDisposal": AuditRule(
        audit_pb2.AUDIT_ACTION_EXECUTE, "Disposal", _no_patient, _disposal_id, patient_ids=_listed_patients
    ),
    # One DELETE event per patient whose records the disposal removed; the certificate lists them.
    "ApproveDisposal": AuditRule(
        audit_pb2.AUDIT_ACTION_DELETE,
        "ClinicalResource",
        _no_patient,
        _disposal_id,
        patient_ids=_disposed_patients,
    ),
    "GetDisposal": AuditRule(audit_pb2.AUDIT_ACTION_READ, "Disposal", _no_patient, _disposal_id),
}
RETENTION_AUDIT_RULES = {f"/{RETENTION_SERVICE_NAME}/{method}": rule for method, rule in _METHODS.items()}
