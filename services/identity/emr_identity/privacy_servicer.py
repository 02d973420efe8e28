"""gRPC transport of data-subject requests (emr.identity.v1.PrivacyRequestService): protobuf in,
protobuf out, nothing else. Every call is audited in the patient's access report."""

from __future__ import annotations

from typing import Any

import grpc
from emr.audit.v1 import audit_pb2
from emr.identity.v1 import privacy_pb2, privacy_pb2_grpc

from emr_identity import privacy_converters as converters
from emr_identity.privacy_service import PrivacyService
from emr_runtime.caller import Caller, caller_from_metadata
from emr_runtime.clock import utc_now
from emr_runtime.interceptors import AuditRule

PRIVACY_SERVICE_NAME = "emr.identity.v1.PrivacyRequestService"
Context = grpc.aio.ServicerContext[Any, Any]


def _caller(context: Context) -> Caller:
    return caller_from_metadata(context.invocation_metadata())


class PrivacyRequestServicer(privacy_pb2_grpc.PrivacyRequestServiceServicer):
    def __init__(self, privacy: PrivacyService, fingerprint_key: bytes) -> None:
        self._privacy = privacy
        self._fingerprint_key = fingerprint_key

    async def FileDataSubjectRequest(
        self, request: privacy_pb2.FileDataSubjectRequestRequest, context: Context
    ) -> privacy_pb2.FileDataSubjectRequestResponse:
        filed = await self._privacy.file(
            converters.filing_input(request, self._fingerprint_key), _caller(context)
        )
        return privacy_pb2.FileDataSubjectRequestResponse(
            data_subject_request=converters.request_message(filed, utc_now())
        )

    async def GetDataSubjectRequest(
        self, request: privacy_pb2.GetDataSubjectRequestRequest, context: Context
    ) -> privacy_pb2.GetDataSubjectRequestResponse:
        found = await self._privacy.get(request.data_subject_request_id, _caller(context))
        return privacy_pb2.GetDataSubjectRequestResponse(
            data_subject_request=converters.request_message(found, utc_now())
        )

    async def ListDataSubjectRequests(
        self, request: privacy_pb2.ListDataSubjectRequestsRequest, context: Context
    ) -> privacy_pb2.ListDataSubjectRequestsResponse:
        found, token = await self._privacy.list_requests(converters.request_filter(request), _caller(context))
        now = utc_now()
        return privacy_pb2.ListDataSubjectRequestsResponse(
            data_subject_requests=[converters.request_message(r, now) for r in found],
            next_page_token=token,
        )

    async def UpdateDataSubjectRequestStatus(
        self, request: privacy_pb2.UpdateDataSubjectRequestStatusRequest, context: Context
    ) -> privacy_pb2.UpdateDataSubjectRequestStatusResponse:
        updated = await self._privacy.update_status(
            converters.status_input(request, self._fingerprint_key), _caller(context)
        )
        return privacy_pb2.UpdateDataSubjectRequestStatusResponse(
            data_subject_request=converters.request_message(updated, utc_now())
        )


def _filed_patient_id(request: Any, response: Any) -> str:
    return str(response.data_subject_request.patient_id) if response is not None else str(request.patient_id)


def _answered_patient_id(request: Any, response: Any) -> str:
    return str(response.data_subject_request.patient_id) if response is not None else ""


def _request_id(request: Any, response: Any) -> str:
    return str(response.data_subject_request.data_subject_request_id) if response is not None else ""


def _named_request_id(request: Any, response: Any) -> str:
    return str(request.data_subject_request_id)


def _nobody(request: Any, response: Any) -> str:
    return ""


def _listed_patient_ids(request: Any, response: Any) -> list[str]:
    return list(dict.fromkeys(str(r.patient_id) for r in response.data_subject_requests))


PRIVACY_AUDIT_RULES = {
    f"/{PRIVACY_SERVICE_NAME}/FileDataSubjectRequest": AuditRule(
        audit_pb2.AUDIT_ACTION_CREATE, "DataSubjectRequest", _filed_patient_id, _request_id
    ),
    f"/{PRIVACY_SERVICE_NAME}/GetDataSubjectRequest": AuditRule(
        audit_pb2.AUDIT_ACTION_READ, "DataSubjectRequest", _answered_patient_id, _named_request_id
    ),
    f"/{PRIVACY_SERVICE_NAME}/ListDataSubjectRequests": AuditRule(
        audit_pb2.AUDIT_ACTION_SEARCH,
        "DataSubjectRequest",
        _nobody,
        _nobody,
        patient_ids=_listed_patient_ids,
    ),
    f"/{PRIVACY_SERVICE_NAME}/UpdateDataSubjectRequestStatus": AuditRule(
        audit_pb2.AUDIT_ACTION_UPDATE, "DataSubjectRequest", _answered_patient_id, _named_request_id
    ),
}
