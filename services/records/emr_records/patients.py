"""The records service's view of the identity service."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from emr.identity.v1 import identity_pb2, identity_pb2_grpc

from emr_runtime.caller import caller_metadata
from emr_runtime.errors import DependencyUnavailableError

IDENTITY_SERVICE = "emr.identity.v1.PatientIdentityService"
# The look-up is made by this service on the caller's behalf; identity audits it as such.
_METADATA = caller_metadata("service:records", purpose_of_use="PATIENT_REFERENCE_CHECK")


class PatientDirectory:
    def __init__(self, channel: grpc.aio.Channel, deadline_seconds: float = 3.0) -> None:
        self._stub = identity_pb2_grpc.PatientIdentityServiceStub(channel)
        self._deadline = deadline_seconds

    async def get(self, patient_id: str) -> PatientView | None:
        """The patient as identity knows it (following a merge to the survivor), with the persons
        merged into it; None if there is no such patient."""
        try:
            response = await self._stub.GetPatient(
                identity_pb2.GetPatientRequest(patient_id=patient_id),
                timeout=self._deadline,
                metadata=_METADATA,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return None
            raise DependencyUnavailableError("identity") from error
        return PatientView(response.patient, tuple(response.merged_patient_ids))

    async def exists(self, patient_id: str) -> bool:
        return await self.get(patient_id) is not None


@dataclass(frozen=True)
class PatientView:
    """A person and the persons currently merged into it: whose records make up its record."""

    patient: identity_pb2.Patient
    merged_patient_ids: tuple[str, ...]

    @property
    def record_owner_ids(self) -> tuple[str, ...]:
        return (self.patient.patient_id, *self.merged_patient_ids)
