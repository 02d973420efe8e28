"""gRPC transport of the identity service: protobuf in, protobuf out, nothing else."""

from __future__ import annotations

from typing import Any

import grpc
from emr.audit.v1 import audit_pb2
from emr.identity.v1 import identity_pb2, identity_pb2_grpc

from emr_identity import converters
from emr_identity.service import IdentityService
from emr_runtime.interceptors import AuditRule

SERVICE_NAME = "emr.identity.v1.PatientIdentityService"
Context = grpc.aio.ServicerContext[Any, Any]


class PatientIdentityServicer(identity_pb2_grpc.PatientIdentityServiceServicer):
    def __init__(self, service: IdentityService) -> None:
        self._service = service

    async def RegisterPatient(
        self, request: identity_pb2.RegisterPatientRequest, context: Context
    ) -> identity_pb2.RegisterPatientResponse:
        person, outcome = await self._service.register(converters.registration_input(request))
        return identity_pb2.RegisterPatientResponse(
            patient=converters.patient_message(person), outcome=converters.outcome_value(outcome)
        )

    async def GetPatient(
        self, request: identity_pb2.GetPatientRequest, context: Context
    ) -> identity_pb2.GetPatientResponse:
        person = await self._service.get(request.patient_id)
        return identity_pb2.GetPatientResponse(patient=converters.patient_message(person))


def _registered_patient_id(request: Any, response: Any) -> str:
    return str(response.patient.patient_id) if response is not None else ""


AUDIT_RULES = {
    f"/{SERVICE_NAME}/RegisterPatient": AuditRule(
        audit_pb2.AUDIT_ACTION_CREATE, "Patient", _registered_patient_id, _registered_patient_id
    ),
    f"/{SERVICE_NAME}/GetPatient": AuditRule(
        audit_pb2.AUDIT_ACTION_READ,
        "Patient",
        lambda request, response: str(request.patient_id),
        lambda request, response: str(request.patient_id),
    ),
}
