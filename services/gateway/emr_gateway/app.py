"""FHIR R4 REST facade over the gRPC services. Thin: HTTP in, gRPC call, FHIR JSON out."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import grpc
from emr.audit.v1 import audit_pb2, audit_pb2_grpc
from emr.identity.v1 import identity_pb2, identity_pb2_grpc, privacy_pb2, privacy_pb2_grpc
from emr.records.v1 import records_pb2, records_pb2_grpc
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from emr_fhir.resources import everything_bundle, operation_outcome, patient_resource, searchset_bundle
from emr_gateway import search
from emr_gateway.headers import HeaderError, checked_header
from emr_gateway.privacy_export import ExportRefused, check_access_request, subject_export
from emr_gateway.settings import GatewaySettings
from emr_runtime.audit import AUDIT_SERVICE
from emr_runtime.auth import AUTHORIZATION_KEY
from emr_runtime.caller import purpose_metadata
from emr_runtime.channels import create_channel
from emr_runtime.web import create_web_app

FHIR_JSON = "application/fhir+json"
IDENTITY_SERVICE = "emr.identity.v1.PatientIdentityService"
RECORDS_SERVICE = "emr.records.v1.ClinicalRecordsService"
# Largest page_size each list RPC accepts (see records.proto).
MAX_ENCOUNTER_PAGE = 100
MAX_OBSERVATION_PAGE = 200
# A whole-record export carries documents (up to 1 MiB each, base64 in the JSON): more than gRPC's
# 4 MiB default answer size, and more time than a single read.
MAX_EXPORT_BYTES = 64 * 1024 * 1024
EXPORT_DEADLINE_SECONDS = 30.0
# The access report pages a data-subject export reads (500 accesses each) before it stops.
MAX_REPORT_PAGES = 40
REPORT_PAGE_SIZE = 500
# The opaque search parameter that carries the records service's page token in `next` links.
CURSOR_PARAMETER = "_cursor"

# gRPC status -> (HTTP status, FHIR issue type)
_HTTP_FOR_GRPC = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid"),
    grpc.StatusCode.NOT_FOUND: (404, "not-found"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "forbidden"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "login"),
    grpc.StatusCode.ABORTED: (409, "conflict"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "throttled"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "not-supported"),
    grpc.StatusCode.UNAVAILABLE: (503, "transient"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
}
# HTTP errors raised by the framework itself (unknown path, wrong method) -> FHIR issue type
_ISSUE_FOR_HTTP = {404: "not-found", 405: "not-supported"}


def fhir_response(body: dict[str, Any], status_code: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status_code, media_type=FHIR_JSON)


# Transport failures: gRPC's own text names internal addresses, which HTTP callers must not see.
_TRANSPORT_DIAGNOSTICS = {
    grpc.StatusCode.UNAVAILABLE: "a platform service is unavailable; retry later",
    grpc.StatusCode.DEADLINE_EXCEEDED: "a platform service did not answer in time; retry later",
}


def outcome_for(error: grpc.aio.AioRpcError) -> JSONResponse:
    status_code, issue_type = _HTTP_FOR_GRPC.get(error.code(), (500, "exception"))
    diagnostics = _TRANSPORT_DIAGNOSTICS.get(error.code()) or error.details() or error.code().name
    return fhir_response(operation_outcome(issue_type, diagnostics), status_code)


def caller(
    authorization: Annotated[str, Header()] = "",
    x_purpose_of_use: Annotated[str, Header()] = "",
) -> list[tuple[str, str]]:
    """The HTTP caller's bearer token and purpose as gRPC metadata: the gateway has no identity of
    its own; every service verifies and authorizes the caller itself (an emergency access is
    declared with identity's DeclareEmergencyAccess, not per request). Each is checked first
    (emr_gateway.headers): a value gRPC cannot carry is HTTP 400."""
    authorization = checked_header("Authorization", authorization)
    x_purpose_of_use = checked_header("X-Purpose-Of-Use", x_purpose_of_use)
    metadata = purpose_metadata(x_purpose_of_use)
    if authorization:
        metadata.append((AUTHORIZATION_KEY, authorization))
    return metadata


Caller = Annotated[list[tuple[str, str]], Depends(caller)]


def search_page(
    request: Request, resources: list[records_pb2.ClinicalResource], next_page_token: str
) -> JSONResponse:
    """A searchset Bundle of one page: ``self`` is this request, ``next`` this request with the
    records service's page token as the opaque cursor."""
    next_url = (
        str(request.url.include_query_params(**{CURSOR_PARAMETER: next_page_token}))
        if next_page_token
        else None
    )
    bundle = searchset_bundle(resources, str(request.url), next_url, base_url=f"{request.base_url}fhir")
    return fhir_response(bundle)


def create_app(settings: GatewaySettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        identity_channel = create_channel(settings.identity_target, IDENTITY_SERVICE)
        records_channel = create_channel(
            settings.records_target, RECORDS_SERVICE, max_receive_message_bytes=MAX_EXPORT_BYTES
        )
        audit_channel = create_channel(settings.audit_target, AUDIT_SERVICE)
        app.state.identity = identity_pb2_grpc.PatientIdentityServiceStub(identity_channel)
        app.state.privacy = privacy_pb2_grpc.PrivacyRequestServiceStub(identity_channel)
        app.state.records = records_pb2_grpc.ClinicalRecordsServiceStub(records_channel)
        app.state.audit = audit_pb2_grpc.AuditServiceStub(audit_channel)
        yield
        await identity_channel.close()
        await records_channel.close()
        await audit_channel.close()

    app = create_web_app("EMR platform FHIR R4 gateway", lifespan=lifespan)

    @app.exception_handler(grpc.aio.AioRpcError)
    async def grpc_error(request: Request, error: grpc.aio.AioRpcError) -> JSONResponse:
        return outcome_for(error)

    @app.exception_handler(search.SearchParameterError)
    async def search_parameter_error(request: Request, error: search.SearchParameterError) -> JSONResponse:
        return fhir_response(operation_outcome("invalid", str(error)), 400)

    @app.exception_handler(ExportRefused)
    async def export_refused(request: Request, error: ExportRefused) -> JSONResponse:
        issue_type = "not-found" if error.status_code == 404 else "business-rule"
        return fhir_response(operation_outcome(issue_type, str(error)), error.status_code)

    @app.exception_handler(HeaderError)
    async def header_error(request: Request, error: HeaderError) -> JSONResponse:
        return fhir_response(operation_outcome("invalid", str(error)), 400)

    @app.exception_handler(RequestValidationError)
    async def request_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return fhir_response(operation_outcome("invalid", "invalid request"), 400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        issue_type = _ISSUE_FOR_HTTP.get(error.status_code, "exception")
        return fhir_response(operation_outcome(issue_type, str(error.detail)), error.status_code)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        # No detail: it could carry patient data or internals; the traceback goes to the log.
        return fhir_response(operation_outcome("exception", "internal error"), 500)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/fhir/Patient/{patient_id}")
    async def read_patient(patient_id: str, request: Request, metadata: Caller) -> JSONResponse:
        response = await request.app.state.identity.GetPatient(
            identity_pb2.GetPatientRequest(patient_id=patient_id), metadata=metadata
        )
        return fhir_response(patient_resource(response.patient))

    @app.get("/fhir/Patient/{patient_id}/$everything")
    async def patient_everything(patient_id: str, request: Request, metadata: Caller) -> JSONResponse:
        request_message = records_pb2.ExportPatientRequest(patient_id=search.resource_id(patient_id, "id"))
        response = await request.app.state.records.ExportPatient(
            request_message, metadata=metadata, timeout=EXPORT_DEADLINE_SECONDS
        )
        collection = json.loads(response.fhir_bundle_json)
        return fhir_response(everything_bundle(collection, str(request.url)))

    @app.get("/fhir/Patient/{patient_id}/$data-subject-export")
    async def data_subject_export(
        patient_id: str,
        request: Request,
        metadata: Caller,
        data_subject_request: Annotated[str, Query(alias="request", max_length=64)] = "",
    ) -> JSONResponse:
        """The data subject's copy (docs/privacy-requests.md): every facility's data of the patient
        and their access report. With ``request``: only for that ACCESS request of the patient, once
        it is in progress or completed. The services authorize the caller (the patient's own token,
        or an operator); nothing of another patient can be in it (one patient's export)."""
        patient_id = search.resource_id(patient_id, "id")
        if data_subject_request:
            listed = await request.app.state.privacy.ListDataSubjectRequests(
                privacy_pb2.ListDataSubjectRequestsRequest(patient_id=patient_id, page_size=100),
                metadata=metadata,
            )
            check_access_request(listed.data_subject_requests, data_subject_request)
        exported = await request.app.state.records.ExportPatient(
            records_pb2.ExportPatientRequest(patient_id=patient_id),
            metadata=metadata,
            timeout=EXPORT_DEADLINE_SECONDS,
        )
        accesses: list[audit_pb2.PatientAccess] = []
        token = ""
        for _ in range(MAX_REPORT_PAGES):
            page = await request.app.state.audit.GetPatientAccessReport(
                audit_pb2.GetPatientAccessReportRequest(
                    patient_id=patient_id, page_size=REPORT_PAGE_SIZE, page_token=token
                ),
                metadata=metadata,
            )
            accesses.extend(page.accesses)
            token = page.next_page_token
            if not token:
                break
        return fhir_response(subject_export(json.loads(exported.fhir_bundle_json), accesses))

    @app.get("/fhir/Encounter")
    async def search_encounters(
        request: Request,
        metadata: Caller,
        patient: Annotated[str | None, Query()] = None,
        count: Annotated[str | None, Query(alias="_count")] = None,
        cursor: Annotated[str, Query(alias=CURSOR_PARAMETER)] = "",
    ) -> JSONResponse:
        request_message = records_pb2.ListEncountersRequest(
            patient_id=search.patient_reference(patient),
            page_size=search.page_count(count, MAX_ENCOUNTER_PAGE),
            page_token=cursor,
        )
        response = await request.app.state.records.ListEncounters(request_message, metadata=metadata)
        resources = [records_pb2.ClinicalResource(encounter=e) for e in response.encounters]
        return search_page(request, resources, response.next_page_token)

    @app.get("/fhir/Observation")
    async def search_observations(
        request: Request,
        metadata: Caller,
        patient: Annotated[str | None, Query()] = None,
        code: Annotated[str | None, Query()] = None,
        count: Annotated[str | None, Query(alias="_count")] = None,
        cursor: Annotated[str, Query(alias=CURSOR_PARAMETER)] = "",
    ) -> JSONResponse:
        request_message = records_pb2.ListObservationsRequest(
            patient_id=search.patient_reference(patient),
            loinc_code=search.loinc_code(code),
            page_size=search.page_count(count, MAX_OBSERVATION_PAGE),
            page_token=cursor,
        )
        response = await request.app.state.records.ListObservations(request_message, metadata=metadata)
        resources = [records_pb2.ClinicalResource(observation=o) for o in response.observations]
        return search_page(request, resources, response.next_page_token)

    return app
