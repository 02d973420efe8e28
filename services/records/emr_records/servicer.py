"""gRPC transport of the records service: protobuf in, protobuf out."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from emr.audit.v1 import audit_pb2
from emr.records.v1 import records_pb2, records_pb2_grpc

from emr_fhir.resources import collection_bundle
from emr_records import converters
from emr_records.domain import ResourceType, check_timeline_query
from emr_records.service import RecordsService
from emr_runtime.caller import caller_from_metadata
from emr_runtime.errors import FieldViolation, InvalidArgumentError
from emr_runtime.interceptors import AuditRule
from emr_runtime.paging import page_size

SERVICE_NAME = "emr.records.v1.ClinicalRecordsService"
Context = grpc.aio.ServicerContext[Any, Any]


def _author(context: Context) -> str:
    return caller_from_metadata(context.invocation_metadata()).actor_id


class ClinicalRecordsServicer(records_pb2_grpc.ClinicalRecordsServiceServicer):
    def __init__(self, service: RecordsService, fingerprint_key: bytes) -> None:
        self._service = service
        self._fingerprint_key = fingerprint_key  # keys the request digests kept for idempotency

    async def CreateEncounter(
        self, request: records_pb2.CreateEncounterRequest, context: Context
    ) -> records_pb2.CreateEncounterResponse:
        record = await self._service.create(
            converters.encounter_input(request, _author(context), self._fingerprint_key)
        )
        return records_pb2.CreateEncounterResponse(encounter=converters.encounter_message(record))

    async def GetEncounter(
        self, request: records_pb2.GetEncounterRequest, context: Context
    ) -> records_pb2.GetEncounterResponse:
        record = await self._service.get(ResourceType.ENCOUNTER, request.encounter_id, field="encounter_id")
        return records_pb2.GetEncounterResponse(encounter=converters.encounter_message(record))

    async def ListEncounters(
        self, request: records_pb2.ListEncountersRequest, context: Context
    ) -> records_pb2.ListEncountersResponse:
        query = check_timeline_query(
            request.patient_id,
            (ResourceType.ENCOUNTER,),
            None,
            None,
            "",
            "",
            page_size(request.page_size, default=20, maximum=100),
            self._service.timeline_position(request.page_token),
        )
        records, token = await self._service.timeline(query)
        return records_pb2.ListEncountersResponse(
            encounters=[converters.encounter_message(r) for r in records], next_page_token=token
        )

    async def ListChanges(
        self, request: records_pb2.ListChangesRequest, context: Context
    ) -> records_pb2.ListChangesResponse:
        changes, next_after = await self._service.list_changes(request.after_sequence, request.limit)
        return records_pb2.ListChangesResponse(
            changes=[converters.change_message(change, record) for change, record in changes],
            next_after_sequence=next_after,
        )

    async def StreamChanges(
        self, request: records_pb2.StreamChangesRequest, context: Context
    ) -> AsyncIterator[records_pb2.StreamChangesResponse]:
        async for change, record in self._service.stream_changes(request.after_sequence):
            yield records_pb2.StreamChangesResponse(change=converters.change_message(change, record))

    async def CreateResource(
        self, request: records_pb2.CreateResourceRequest, context: Context
    ) -> records_pb2.CreateResourceResponse:
        raw = converters.resource_input(request, _author(context), self._fingerprint_key)
        if raw is None:
            raise InvalidArgumentError([FieldViolation("resource", "required: one resource")])
        record = await self._service.create(raw)
        return records_pb2.CreateResourceResponse(resource=converters.resource_message(record))

    async def UpdateResource(
        self, request: records_pb2.UpdateResourceRequest, context: Context
    ) -> records_pb2.UpdateResourceResponse:
        raw = converters.resource_input(request, _author(context), self._fingerprint_key)
        if raw is None:
            raise InvalidArgumentError([FieldViolation("resource", "required: one resource")])
        record = await self._service.update(raw, request.expected_version)
        return records_pb2.UpdateResourceResponse(resource=converters.resource_message(record))

    async def GetResource(
        self, request: records_pb2.GetResourceRequest, context: Context
    ) -> records_pb2.GetResourceResponse:
        record = await self._service.get(converters.resource_type(request.resource_type), request.resource_id)
        return records_pb2.GetResourceResponse(resource=converters.resource_message(record))

    async def GetResourceHistory(
        self, request: records_pb2.GetResourceHistoryRequest, context: Context
    ) -> records_pb2.GetResourceHistoryResponse:
        versions = await self._service.history(
            converters.resource_type(request.resource_type), request.resource_id
        )
        return records_pb2.GetResourceHistoryResponse(
            versions=[converters.version_message(v) for v in versions]
        )

    async def GetPatientTimeline(
        self, request: records_pb2.GetPatientTimelineRequest, context: Context
    ) -> records_pb2.GetPatientTimelineResponse:
        query = check_timeline_query(
            request.patient_id,
            tuple(converters.resource_type(t) for t in request.resource_types),
            converters.time_filter(request, "start_time"),
            converters.time_filter(request, "end_time"),
            request.facility_code,
            "",
            page_size(request.page_size, default=50, maximum=200),
            self._service.timeline_position(request.page_token),
        )
        records, token = await self._service.timeline_entries(query, include_merged=True)
        return records_pb2.GetPatientTimelineResponse(
            entries=[converters.timeline_entry(r) for r in records], next_page_token=token
        )

    async def ListObservations(
        self, request: records_pb2.ListObservationsRequest, context: Context
    ) -> records_pb2.ListObservationsResponse:
        query = check_timeline_query(
            request.patient_id,
            (ResourceType.OBSERVATION,),
            converters.time_filter(request, "start_time"),
            converters.time_filter(request, "end_time"),
            "",
            request.loinc_code,
            page_size(request.page_size, default=50, maximum=200),
            self._service.timeline_position(request.page_token),
        )
        records, token = await self._service.timeline(query)
        return records_pb2.ListObservationsResponse(
            observations=[converters.observation_message(r) for r in records], next_page_token=token
        )

    async def GetEncounterBundle(
        self, request: records_pb2.GetEncounterBundleRequest, context: Context
    ) -> records_pb2.GetEncounterBundleResponse:
        encounter, attached = await self._service.encounter_bundle(request.encounter_id)
        return records_pb2.GetEncounterBundleResponse(
            encounter=converters.encounter_message(encounter),
            resources=[converters.resource_message(r) for r in attached],
        )

    async def ExportPatient(
        self, request: records_pb2.ExportPatientRequest, context: Context
    ) -> records_pb2.ExportPatientResponse:
        patient, records = await self._service.export(request.patient_id)
        bundle = collection_bundle(patient, [converters.resource_message(r) for r in records])
        return records_pb2.ExportPatientResponse(
            fhir_bundle_json=json.dumps(bundle, ensure_ascii=False).encode(),
            resource_count=len(bundle["entry"]),
        )


def _request_patient(request: Any, response: Any) -> str:
    return str(request.patient_id)


def _resource_of(message: Any) -> Any:
    which = message.WhichOneof("resource")
    return getattr(message, which) if which else None


def _written_patient(request: Any, response: Any) -> str:
    resource = _resource_of(request.resource)
    return str(resource.patient_id) if resource is not None else ""


def _written_id(request: Any, response: Any) -> str:
    if response is None:
        return ""
    resource = _resource_of(response.resource)
    return str(
        next(
            getattr(resource, f.name)
            for f in resource.DESCRIPTOR.fields
            if f.name.endswith("_id") and f.number == 1
        )
    )


def _read_patient(request: Any, response: Any) -> str:
    resource = _resource_of(response.resource) if response is not None else None
    return str(resource.patient_id) if resource is not None else ""


def _encounter_id(request: Any, response: Any) -> str:
    return (
        str(response.encounter.encounter_id)
        if response is not None
        else str(getattr(request, "encounter_id", ""))
    )


def _encounter_patient(request: Any, response: Any) -> str:
    return str(response.encounter.patient_id) if response is not None else ""


def _history_patient(request: Any, response: Any) -> str:
    return _read_patient(request, response.versions[-1]) if response is not None and response.versions else ""


# The change feed (ListChanges, StreamChanges) is the platform's own feed to sync, not an access on a
# patient's behalf; sync audits what it exports.
_RESOURCE = "ClinicalResource"
AUDIT_RULES = {
    f"/{SERVICE_NAME}/{method}": rule
    for method, rule in {
        "CreateEncounter": AuditRule(
            audit_pb2.AUDIT_ACTION_CREATE, "Encounter", _request_patient, _encounter_id
        ),
        "GetEncounter": AuditRule(
            audit_pb2.AUDIT_ACTION_READ, "Encounter", _encounter_patient, _encounter_id
        ),
        "ListEncounters": AuditRule(audit_pb2.AUDIT_ACTION_SEARCH, "Encounter", _request_patient),
        "CreateResource": AuditRule(audit_pb2.AUDIT_ACTION_CREATE, _RESOURCE, _written_patient, _written_id),
        "UpdateResource": AuditRule(audit_pb2.AUDIT_ACTION_UPDATE, _RESOURCE, _written_patient, _written_id),
        "GetResource": AuditRule(
            audit_pb2.AUDIT_ACTION_READ,
            _RESOURCE,
            _read_patient,
            lambda request, response: str(request.resource_id),
        ),
        "GetResourceHistory": AuditRule(
            audit_pb2.AUDIT_ACTION_READ,
            _RESOURCE,
            _history_patient,
            lambda request, response: str(request.resource_id),
        ),
        "GetPatientTimeline": AuditRule(audit_pb2.AUDIT_ACTION_SEARCH, _RESOURCE, _request_patient),
        "ListObservations": AuditRule(audit_pb2.AUDIT_ACTION_SEARCH, "Observation", _request_patient),
        "GetEncounterBundle": AuditRule(
            audit_pb2.AUDIT_ACTION_READ, "Encounter", _encounter_patient, _encounter_id
        ),
        "ExportPatient": AuditRule(audit_pb2.AUDIT_ACTION_EXPORT, _RESOURCE, _request_patient),
    }.items()
}
