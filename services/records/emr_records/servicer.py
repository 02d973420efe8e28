"""gRPC transport of the records service."""

from __future__ import annotations

from typing import Any

import grpc
from emr.audit.v1 import audit_pb2
from emr.records.v1 import records_pb2, records_pb2_grpc

from emr_records import converters
from emr_records.service import RecordsService
from emr_runtime.interceptors import AuditRule

SERVICE_NAME = "emr.records.v1.ClinicalRecordsService"
Context = grpc.aio.ServicerContext[Any, Any]


class ClinicalRecordsServicer(records_pb2_grpc.ClinicalRecordsServiceServicer):
    def __init__(self, service: RecordsService) -> None:
        self._service = service

    async def CreateEncounter(
        self, request: records_pb2.CreateEncounterRequest, context: Context
    ) -> records_pb2.CreateEncounterResponse:
        encounter = await self._service.create_encounter(converters.encounter_input(request))
        return records_pb2.CreateEncounterResponse(encounter=converters.encounter_message(encounter))

    async def GetEncounter(
        self, request: records_pb2.GetEncounterRequest, context: Context
    ) -> records_pb2.GetEncounterResponse:
        encounter = await self._service.get_encounter(request.encounter_id)
        return records_pb2.GetEncounterResponse(encounter=converters.encounter_message(encounter))

    async def ListEncounters(
        self, request: records_pb2.ListEncountersRequest, context: Context
    ) -> records_pb2.ListEncountersResponse:
        encounters, next_token = await self._service.list_encounters(
            request.patient_id, request.page_size, request.page_token
        )
        return records_pb2.ListEncountersResponse(
            encounters=[converters.encounter_message(e) for e in encounters], next_page_token=next_token
        )

    async def ListChanges(
        self, request: records_pb2.ListChangesRequest, context: Context
    ) -> records_pb2.ListChangesResponse:
        changes, next_after = await self._service.list_changes(request.after_sequence, request.limit)
        return records_pb2.ListChangesResponse(
            changes=[converters.change_message(change, encounter) for change, encounter in changes],
            next_after_sequence=next_after,
        )


def _request_patient(request: Any, response: Any) -> str:
    return str(request.patient_id)


def _encounter_id(request: Any, response: Any) -> str:
    return (
        str(response.encounter.encounter_id)
        if response is not None
        else str(getattr(request, "encounter_id", ""))
    )


# ListChanges is the platform's own feed to sync, not an access on a patient's behalf; sync audits
# what it exports.
AUDIT_RULES = {
    f"/{SERVICE_NAME}/CreateEncounter": AuditRule(
        audit_pb2.AUDIT_ACTION_CREATE, "Encounter", _request_patient, _encounter_id
    ),
    f"/{SERVICE_NAME}/GetEncounter": AuditRule(
        audit_pb2.AUDIT_ACTION_READ,
        "Encounter",
        lambda request, response: str(response.encounter.patient_id) if response is not None else "",
        _encounter_id,
    ),
    f"/{SERVICE_NAME}/ListEncounters": AuditRule(
        audit_pb2.AUDIT_ACTION_SEARCH, "Encounter", _request_patient
    ),
}
