"""Identity as other services see it: who a patient is, following merges. One client for every
service that looks patients up (records, sync), each naming itself and its purpose to identity,
which audits the look-up as made on the caller's behalf."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from emr.identity.v1 import identity_pb2, identity_pb2_grpc

from emr_runtime.caller import purpose_metadata
from emr_runtime.errors import DependencyUnavailableError

IDENTITY_SERVICE = "emr.identity.v1.PatientIdentityService"


class PatientDirectory:
    def __init__(
        self, channel: grpc.aio.Channel, service: str, purpose_of_use: str, deadline_seconds: float = 5.0
    ) -> None:
        self._stub = identity_pb2_grpc.PatientIdentityServiceStub(channel)
        # The service's own token comes from the channel (emr_runtime.channels).
        self._metadata = purpose_metadata(purpose_of_use)
        self._deadline = deadline_seconds

    async def get(self, patient_id: str) -> PatientView | None:
        """The patient as identity knows it (following a merge to the survivor), with the persons
        merged into it; None if there is no such patient."""
        try:
            response = await self._stub.GetPatient(
                identity_pb2.GetPatientRequest(patient_id=patient_id),
                timeout=self._deadline,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return None
            raise DependencyUnavailableError("identity") from error
        return PatientView(response.patient, tuple(response.merged_patient_ids))

    async def exists(self, patient_id: str) -> bool:
        return await self.get(patient_id) is not None

    async def registered_at(self, patient_id: str, facility_code: str) -> bool:
        """Whether the facility registered the patient (the registration half of the access
        policy's treatment relationship, which identity owns)."""
        try:
            response = await self._stub.CheckRegistration(
                identity_pb2.CheckRegistrationRequest(patient_id=patient_id, facility_code=facility_code),
                timeout=self._deadline,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                return False
            raise DependencyUnavailableError("identity") from error
        return bool(response.registered)


@dataclass(frozen=True)
class PatientView:
    """A person and the persons currently merged into it: whose records make up its record."""

    patient: identity_pb2.Patient
    merged_patient_ids: tuple[str, ...]

    @property
    def record_owner_ids(self) -> tuple[str, ...]:
        return (self.patient.patient_id, *self.merged_patient_ids)
