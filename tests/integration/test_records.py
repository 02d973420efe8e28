"""The clinical store through the real records service: every resource type, versions and
optimistic concurrency, reads, bad input, and an export that validates as FHIR R4."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from typing import Any

import grpc
import pytest
from emr.identity.v1 import identity_pb2
from emr.records.v1 import records_pb2
from fhir.resources.R4B.bundle import Bundle

from emr_devstack.tokens import caller_metadata

DOCTOR = caller_metadata("dr-synthetic-02", "79001", "TREATMENT")


def resource_of(message: records_pb2.ClinicalResource) -> Any:
    return getattr(message, message.WhichOneof("resource"))


def id_of(message: records_pb2.ClinicalResource) -> str:
    resource = resource_of(message)
    return str(getattr(resource, resource.DESCRIPTOR.fields_by_number[1].name))


async def test_every_resource_type_is_stored_versioned_and_exported_as_fhir(
    clinical: Any, records: Any, facility_code: str
) -> None:
    patient_id = await clinical.patient(facility_code)
    encounter_id = await clinical.encounter(patient_id, facility_code)
    created = [
        await clinical.create(r) for r in clinical.every_resource(patient_id, facility_code, encounter_id)
    ]

    # every type of every_resource: all but UNSPECIFIED, ENCOUNTER and the claim lines and notes
    kinds: list[Any] = records_pb2.ResourceType.values()[2:7]
    for stored, kind in zip(created, kinds, strict=True):
        assert resource_of(stored).version == 1
        got = await records.GetResource(
            records_pb2.GetResourceRequest(resource_type=kind, resource_id=id_of(stored))
        )
        assert got.resource == stored
    document = resource_of(created[-1])
    assert document.content_sha256 == hashlib.sha256(document.content).hexdigest()

    bundle = await records.GetEncounterBundle(
        records_pb2.GetEncounterBundleRequest(encounter_id=encounter_id)
    )
    assert bundle.encounter.encounter_id == encounter_id
    assert sorted(id_of(r) for r in bundle.resources) == sorted(id_of(r) for r in created)

    export = await records.ExportPatient(
        records_pb2.ExportPatientRequest(patient_id=patient_id), metadata=DOCTOR
    )
    fhir = Bundle.model_validate(json.loads(export.fhir_bundle_json))
    types = sorted(entry.resource.get_resource_type() for entry in fhir.entry)
    assert types == sorted(
        [
            "Patient",
            "Encounter",
            "Observation",
            "Condition",
            "MedicationRequest",
            "Procedure",
            "DocumentReference",
        ]
    )
    assert export.resource_count == 7


async def test_update_makes_a_new_version_and_a_stale_one_is_aborted(
    clinical: Any, records: Any, facility_code: str
) -> None:
    patient_id = await clinical.patient(facility_code)
    encounter_id = await clinical.encounter(patient_id, facility_code)
    observation = await clinical.create(clinical.every_resource(patient_id, facility_code, encounter_id)[0])
    corrected = records_pb2.ClinicalResource()
    corrected.CopyFrom(observation)
    corrected.observation.value_quantity.value = 92
    corrected.observation.status = records_pb2.OBSERVATION_STATUS_AMENDED
    update = records_pb2.UpdateResourceRequest(
        request_id=str(uuid.uuid4()), resource=corrected, expected_version=1
    )

    updated = (await records.UpdateResource(update, metadata=DOCTOR)).resource
    assert updated.observation.version == 2
    assert updated.observation.value_quantity.value == 92
    assert (await records.UpdateResource(update)).resource == updated  # a repeat returns the first result

    stale = records_pb2.UpdateResourceRequest(
        request_id=str(uuid.uuid4()), resource=corrected, expected_version=1
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await records.UpdateResource(stale)
    assert caught.value.code() == grpc.StatusCode.ABORTED
    assert "expected_version" in (caught.value.details() or "")

    history = await records.GetResourceHistory(
        records_pb2.GetResourceHistoryRequest(
            resource_type=records_pb2.RESOURCE_TYPE_OBSERVATION, resource_id=id_of(observation)
        )
    )
    assert [v.version for v in history.versions] == [1, 2]
    assert history.versions[0].resource == observation
    assert history.versions[0].content_sha256 != history.versions[1].content_sha256
    assert history.versions[1].author_id == "dr-synthetic-02"

    # Nothing is deleted: a wrong entry is marked entered-in-error and stays readable.
    withdrawn = records_pb2.ClinicalResource()
    withdrawn.CopyFrom(updated)
    withdrawn.observation.status = records_pb2.OBSERVATION_STATUS_ENTERED_IN_ERROR
    marked = await records.UpdateResource(
        records_pb2.UpdateResourceRequest(
            request_id=str(uuid.uuid4()), resource=withdrawn, expected_version=2
        )
    )
    assert marked.resource.observation.status == records_pb2.OBSERVATION_STATUS_ENTERED_IN_ERROR
    assert marked.resource.observation.version == 3


async def test_concurrent_updates_of_one_version_one_wins(
    clinical: Any, records: Any, facility_code: str
) -> None:
    patient_id = await clinical.patient(facility_code)
    encounter_id = await clinical.encounter(patient_id, facility_code)
    condition = await clinical.create(clinical.every_resource(patient_id, facility_code, encounter_id)[1])

    def update(status: int) -> records_pb2.UpdateResourceRequest:
        changed = records_pb2.ClinicalResource()
        changed.CopyFrom(condition)
        changed.condition.clinical_status = status  # type: ignore[assignment]
        return records_pb2.UpdateResourceRequest(
            request_id=str(uuid.uuid4()), resource=changed, expected_version=1
        )

    statuses = [
        records_pb2.CONDITION_CLINICAL_STATUS_RESOLVED,
        records_pb2.CONDITION_CLINICAL_STATUS_REMISSION,
    ] * 6
    outcomes = await asyncio.gather(
        *(records.UpdateResource(update(s)) for s in statuses), return_exceptions=True
    )
    winners = [o for o in outcomes if not isinstance(o, BaseException)]
    losers = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(winners) == 1
    assert len(losers) == len(statuses) - 1
    assert all(e.code() == grpc.StatusCode.ABORTED for e in losers)
    current = await records.GetResource(
        records_pb2.GetResourceRequest(
            resource_type=records_pb2.RESOURCE_TYPE_CONDITION, resource_id=id_of(condition)
        )
    )
    assert current.resource == winners[0].resource
    history = await records.GetResourceHistory(
        records_pb2.GetResourceHistoryRequest(
            resource_type=records_pb2.RESOURCE_TYPE_CONDITION, resource_id=id_of(condition)
        )
    )
    assert [v.version for v in history.versions] == [1, 2]


async def test_timeline_pages_are_stable_and_filters_apply(
    clinical: Any, records: Any, facility_code: str
) -> None:
    patient_id = await clinical.patient(facility_code)
    encounters = [await clinical.encounter(patient_id, facility_code, 86400 * day) for day in range(1, 5)]
    for index, encounter_id in enumerate(encounters):
        for resource in clinical.every_resource(patient_id, facility_code, encounter_id)[:3]:
            time_field = {
                "observation": "effective_time",
                "condition": "recorded_time",
                "medication_request": "authored_time",
            }
            if resource.HasField("condition"):
                resource.condition.ClearField("onset_time")  # would follow the back-dated recorded_time
            getattr(resource_of(resource), time_field[resource.WhichOneof("resource")]).CopyFrom(
                clinical.timestamp(-86400 * (index + 1) + 60)
            )
            await clinical.create(resource)

    async def all_pages(**filters: Any) -> list[records_pb2.TimelineEntry]:
        entries: list[records_pb2.TimelineEntry] = []
        token = ""
        while True:
            page = await records.GetPatientTimeline(
                records_pb2.GetPatientTimelineRequest(
                    patient_id=patient_id, page_size=5, page_token=token, **filters
                )
            )
            entries.extend(page.entries)
            token = page.next_page_token
            if not token:
                return entries

    everything = await all_pages()
    assert len(everything) == 16
    times = [e.time.ToDatetime() for e in everything]
    assert times == sorted(times, reverse=True)
    assert len({id_of(e.resource) for e in everything}) == 16

    only_conditions = await all_pages(resource_types=[records_pb2.RESOURCE_TYPE_CONDITION])
    assert [e.resource.WhichOneof("resource") for e in only_conditions] == ["condition"] * 4
    recent = await all_pages(start_time=clinical.timestamp(-86400 * 2 - 3600))  # days 1 and 2
    assert len(recent) == 8
    assert await all_pages(facility_code="00000") == []

    observations = await records.ListObservations(
        records_pb2.ListObservationsRequest(patient_id=patient_id, loinc_code="8867-4")
    )
    assert len(observations.observations) == 4
    listed = await records.ListEncounters(
        records_pb2.ListEncountersRequest(patient_id=patient_id, page_size=3)
    )
    assert [e.encounter_id for e in listed.encounters] == encounters[:3]
    assert listed.next_page_token


@pytest.mark.parametrize(
    ("mutate", "code", "field"),
    [
        (
            lambda r: setattr(r.observation.value_quantity, "unit", "beats"),
            "INVALID_ARGUMENT",
            "resource.observation.value_quantity.unit",
        ),
        (
            lambda r: r.observation.ClearField("value_quantity"),
            "INVALID_ARGUMENT",
            "resource.observation.value",
        ),
        (
            lambda r: setattr(r.observation, "loinc_code", "8867-5"),
            "INVALID_ARGUMENT",
            "resource.observation.loinc_code",
        ),
        (
            lambda r: r.observation.effective_time.FromSeconds(int(time.time()) + 86400),
            "INVALID_ARGUMENT",
            "resource.observation.effective_time",
        ),
        (
            lambda r: setattr(r.observation, "patient_id", str(uuid.uuid4())),
            "NOT_FOUND",
            "resource.observation.patient_id",
        ),
        (
            lambda r: setattr(r.observation, "encounter_id", str(uuid.uuid4())),
            "NOT_FOUND",
            "resource.observation.encounter_id",
        ),
    ],
)
async def test_bad_observations_are_refused_and_nothing_is_written(
    clinical: Any,
    records: Any,
    stored_documents: Any,
    facility_code: str,
    bad_fields: Any,
    mutate: Any,
    code: str,
    field: str,
) -> None:
    patient_id = await clinical.patient(facility_code)
    encounter_id = await clinical.encounter(patient_id, facility_code)
    resource = clinical.every_resource(patient_id, facility_code, encounter_id)[0]
    mutate(resource)
    before = await stored_documents()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clinical.create(resource)
    assert caught.value.code().name == code
    if code == "INVALID_ARGUMENT":
        assert bad_fields(caught.value) == [field]
    else:
        assert field in (caught.value.details() or "")
    assert await stored_documents() == before


async def test_procedure_ending_before_it_starts_and_oversized_documents_are_refused(
    clinical: Any, records: Any, stored_documents: Any, facility_code: str, bad_fields: Any
) -> None:
    patient_id = await clinical.patient(facility_code)
    encounter_id = await clinical.encounter(patient_id, facility_code)
    resources = clinical.every_resource(patient_id, facility_code, encounter_id)
    procedure, document = resources[3], resources[4]
    procedure.procedure.performed_end_time.CopyFrom(clinical.timestamp(-7200))
    document.document_reference.content = b"x" * (1024 * 1024 + 1)
    before = await stored_documents()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clinical.create(procedure)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(caught.value) == ["resource.procedure.performed_end_time"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clinical.create(document)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert bad_fields(caught.value) == ["resource.document_reference.content"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await records.CreateResource(records_pb2.CreateResourceRequest(request_id=str(uuid.uuid4())))
    assert bad_fields(caught.value) == ["resource"]
    assert await stored_documents() == before


async def test_tampered_document_bytes_are_detected_on_read(
    clinical: Any, records: Any, mongo: Any, facility_code: str
) -> None:
    patient_id = await clinical.patient(facility_code)
    encounter_id = await clinical.encounter(patient_id, facility_code)
    document = await clinical.create(clinical.every_resource(patient_id, facility_code, encounter_id)[4])
    document_id = id_of(document)
    await mongo["emr_records"]["resources"].update_one(
        {"_id": document_id}, {"$set": {"content.content": b"%PDF-1.4 altered afterwards"}}
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await records.GetResource(
            records_pb2.GetResourceRequest(
                resource_type=records_pb2.RESOURCE_TYPE_DOCUMENT_REFERENCE, resource_id=document_id
            )
        )
    assert caught.value.code() == grpc.StatusCode.DATA_LOSS


async def test_timeline_includes_merged_persons_until_they_are_unmerged(
    clinical: Any, identity: Any, records: Any, facility_code: str
) -> None:
    survivor, merged = await clinical.patient(facility_code), await clinical.patient(facility_code)
    survivor_visit = await clinical.encounter(survivor, facility_code, 7200)
    merged_visit = await clinical.encounter(merged, facility_code, 3600)

    async def timeline_of(patient_id: str) -> set[str]:
        page = await records.GetPatientTimeline(records_pb2.GetPatientTimelineRequest(patient_id=patient_id))
        return {id_of(entry.resource) for entry in page.entries}

    assert await timeline_of(survivor) == {survivor_visit}
    await identity.MergePatients(
        identity_pb2.MergePatientsRequest(
            request_id=str(uuid.uuid4()),
            survivor_patient_id=survivor,
            merged_patient_id=merged,
            reason="duplicate",
        )
    )
    assert await timeline_of(survivor) == {survivor_visit, merged_visit}
    assert await timeline_of(merged) == {survivor_visit, merged_visit}  # a merged id reads as its survivor

    await identity.UnmergePatients(
        identity_pb2.UnmergePatientsRequest(
            request_id=str(uuid.uuid4()), merged_patient_id=merged, reason="not the same"
        )
    )
    assert await timeline_of(survivor) == {survivor_visit}
    assert await timeline_of(merged) == {merged_visit}
