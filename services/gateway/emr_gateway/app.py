"""FHIR R4 REST facade over the gRPC services. Thin: HTTP in, gRPC call, FHIR JSON out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import grpc
from emr.identity.v1 import identity_pb2, identity_pb2_grpc
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse

from emr_fhir.resources import operation_outcome, patient_resource
from emr_gateway.settings import GatewaySettings
from emr_runtime.caller import caller_metadata
from emr_runtime.channels import create_channel

FHIR_JSON = "application/fhir+json"
IDENTITY_SERVICE = "emr.identity.v1.PatientIdentityService"

# gRPC status -> (HTTP status, FHIR issue type)
_HTTP_FOR_GRPC = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid"),
    grpc.StatusCode.NOT_FOUND: (404, "not-found"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "forbidden"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "login"),
    grpc.StatusCode.ABORTED: (409, "conflict"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "throttled"),
    grpc.StatusCode.UNAVAILABLE: (503, "transient"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
}


def fhir_response(body: dict[str, Any], status_code: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status_code, media_type=FHIR_JSON)


def outcome_for(error: grpc.aio.AioRpcError) -> JSONResponse:
    status_code, issue_type = _HTTP_FOR_GRPC.get(error.code(), (500, "exception"))
    return fhir_response(operation_outcome(issue_type, error.details() or error.code().name), status_code)


def create_app(settings: GatewaySettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        channel = create_channel(settings.identity_target, IDENTITY_SERVICE)
        app.state.identity = identity_pb2_grpc.PatientIdentityServiceStub(channel)
        yield
        await channel.close()

    app = FastAPI(title="EMR platform FHIR R4 gateway", version="0.1.0", lifespan=lifespan)

    @app.exception_handler(grpc.aio.AioRpcError)
    async def grpc_error(request: Request, error: grpc.aio.AioRpcError) -> JSONResponse:
        return outcome_for(error)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/fhir/Patient/{patient_id}")
    async def read_patient(
        patient_id: str,
        request: Request,
        x_actor_id: Annotated[str, Header()] = "",
        x_facility_code: Annotated[str, Header()] = "",
        x_purpose_of_use: Annotated[str, Header()] = "",
    ) -> JSONResponse:
        metadata = caller_metadata(x_actor_id or "gateway-anonymous", x_facility_code, x_purpose_of_use)
        response = await request.app.state.identity.GetPatient(
            identity_pb2.GetPatientRequest(patient_id=patient_id), metadata=metadata
        )
        return fhir_response(patient_resource(response.patient))

    return app
