"""The records service's view of the identity service: does a patient exist?"""

from __future__ import annotations

import grpc
from emr.identity.v1 import identity_pb2, identity_pb2_grpc

from emr_runtime.caller import caller_metadata
from emr_runtime.errors import DependencyUnavailableError

IDENTITY_SERVICE = "emr.identity.v1.PatientIdentityService"
# The check is made by this service on the caller's behalf; identity audits it as such.
_METADATA = caller_metadata("service:records", purpose_of_use="PATIENT_REFERENCE_CHECK")


class PatientDirectory:
    def __init__(self, channel: grpc.aio.Channel, deadline_seconds: float = 3.0) -> None:
        self._stub = identity_pb2_grpc.PatientIdentityServiceStub(channel)
        self._deadline = deadline_seconds

    async def exists(self, patient_id: str) -> bool:
        try:
            await self._stub.GetPatient(
                identity_pb2.GetPatientRequest(patient_id=patient_id),
                timeout=self._deadline,
                metadata=_METADATA,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return False
            raise DependencyUnavailableError("identity") from error
        return True
