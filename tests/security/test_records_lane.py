"""Records' lanes against the real platform: a facility reads what it created and writes only to
its own encounters and resources, whatever it learns of another facility's ids. Facility A registers
a patient and records a visit; facility B (never registered there, no grant, no referral) opens a
planned encounter for the same patient and records an observation on it. Every attack B makes is a
row of the table; what B, A and the sync service read afterwards is checked record by record."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from emr.identity.v1 import identity_pb2
from emr.records.v1 import records_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from emr_devstack.stack import Stack
from emr_devstack.tokens import caller_metadata, issue_token

OK = grpc.StatusCode.OK
DENIED = grpc.StatusCode.PERMISSION_DENIED
OBSERVATION = records_pb2.RESOURCE_TYPE_OBSERVATION
Metadata = list[tuple[str, str]]


def seconds_ago(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromSeconds(int(time.time() - seconds))
    return stamp


@dataclass(frozen=True)
class Scene:
    """One patient, seen by two facilities: A registered them and holds an encounter and an
    observation; B opened a planned encounter without registering and recorded an observation."""

    a: str
    b: str
    patient_id: str
    a_mrn: str
    a_encounter_id: str
    a_observation: records_pb2.Observation
    b_encounter_id: str
    b_observation: records_pb2.Observation

    def doctor(self, facility: str) -> Metadata:
        return caller_metadata(f"dr-lane-{facility}", facility, "TREATMENT", role="doctor")

    @property
    def a_ids(self) -> set[str]:
        return {self.a_encounter_id, self.a_observation.observation_id}

    @property
    def b_ids(self) -> set[str]:
        return {self.b_encounter_id, self.b_observation.observation_id}


def sync_service() -> list[tuple[str, str]]:
    """The sync service's metadata, minted when used: a service token lives 10 minutes."""
    return caller_metadata("service:sync", purpose_of_use="TREATMENT", role="sync-service")


def encounter_request(patient_id: str, facility: str, finished: bool) -> records_pb2.CreateEncounterRequest:
    """A finished outpatient visit two hours ago, or a planned one starting now."""
    request = records_pb2.CreateEncounterRequest(
        request_id=str(uuid.uuid4()),
        patient_id=patient_id,
        facility_code=facility,
        encounter_class=records_pb2.ENCOUNTER_CLASS_OUTPATIENT,
        status=records_pb2.ENCOUNTER_STATUS_FINISHED if finished else records_pb2.ENCOUNTER_STATUS_PLANNED,
        start_time=seconds_ago(7200 if finished else 60),
    )
    if finished:
        request.end_time.CopyFrom(seconds_ago(5400))
    return request


def observation(
    patient_id: str, facility: str, encounter_id: str, value: float
) -> records_pb2.ClinicalResource:
    return records_pb2.ClinicalResource(
        observation=records_pb2.Observation(
            patient_id=patient_id,
            facility_code=facility,
            encounter_id=encounter_id,
            loinc_code="8867-4",
            status=records_pb2.OBSERVATION_STATUS_FINAL,
            value_quantity=records_pb2.Quantity(value=value, unit="/min"),
            effective_time=seconds_ago(600),
        )
    )


async def record(records: Any, resource: records_pb2.ClinicalResource, metadata: Metadata) -> Any:
    request = records_pb2.CreateResourceRequest(request_id=str(uuid.uuid4()), resource=resource)
    return (await records.CreateResource(request, metadata=metadata)).resource.observation


@pytest.fixture
async def scene(identity: Any, records: Any, registration: Any) -> Scene:
    suffix = uuid.uuid4().int % 9000
    a, b = f"4{suffix:04d}", f"5{suffix:04d}"
    a_mrn = f"A-{uuid.uuid4().hex[:10]}"
    registrar = caller_metadata("registrar-lane", a, "TREATMENT", role="registrar")
    request = registration(a)
    request.identifiers.append(
        identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_MRN, value=a_mrn, facility_code=a)
    )
    patient_id = (await identity.RegisterPatient(request, metadata=registrar)).patient.patient_id
    blank = Scene(a, b, patient_id, a_mrn, "", records_pb2.Observation(), "", records_pb2.Observation())
    a_doctor, b_doctor = blank.doctor(a), blank.doctor(b)
    a_visit = await records.CreateEncounter(
        encounter_request(patient_id, a, finished=True), metadata=a_doctor
    )
    a_encounter_id = a_visit.encounter.encounter_id
    a_observation = await record(records, observation(patient_id, a, a_encounter_id, 91), a_doctor)
    b_visit = await records.CreateEncounter(
        encounter_request(patient_id, b, finished=False), metadata=b_doctor
    )
    b_encounter_id = b_visit.encounter.encounter_id
    b_observation = await record(records, observation(patient_id, b, b_encounter_id, 77), b_doctor)
    return Scene(a, b, patient_id, a_mrn, a_encounter_id, a_observation, b_encounter_id, b_observation)


# --- the attack table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Actor:
    """Who makes a call: a doctor of a facility, or the sync service (no facility)."""

    facility: str
    metadata: Metadata


def actor(scene: Scene, name: str) -> Actor:
    if name == "sync":
        return Actor("", sync_service())
    facility = scene.a if name == "A" else scene.b
    return Actor(facility, scene.doctor(facility))


Call = Callable[[Any, Scene, Actor], Awaitable[Any]]


def create(records: Any, resource: records_pb2.ClinicalResource, by: Actor) -> Any:
    request = records_pb2.CreateResourceRequest(request_id=str(uuid.uuid4()), resource=resource)
    return records.CreateResource(request, metadata=by.metadata)


def update(records: Any, changed: records_pb2.Observation, version: int, by: Actor) -> Any:
    request = records_pb2.UpdateResourceRequest(
        request_id=str(uuid.uuid4()),
        resource=records_pb2.ClinicalResource(observation=changed),
        expected_version=version,
    )
    return records.UpdateResource(request, metadata=by.metadata)


def attach_to_a_encounter(records: Any, scene: Scene, by: Actor) -> Any:
    return create(records, observation(scene.patient_id, by.facility, scene.a_encounter_id, 120), by)


def write_in_a_name(records: Any, scene: Scene, by: Actor) -> Any:
    return create(records, observation(scene.patient_id, scene.a, scene.a_encounter_id, 120), by)


def update_a_observation(records: Any, scene: Scene, by: Actor) -> Any:
    changed = records_pb2.Observation()
    changed.CopyFrom(scene.a_observation)
    changed.value_quantity.value = 130
    changed.facility_code = by.facility  # the policy's own-facility rule holds: the stored one differs
    return update(records, changed, scene.a_observation.version, by)


def move_b_observation_to_a_encounter(records: Any, scene: Scene, by: Actor) -> Any:
    moved = records_pb2.Observation()
    moved.CopyFrom(scene.b_observation)
    moved.encounter_id = scene.a_encounter_id
    return update(records, moved, scene.b_observation.version, by)


def get_encounter(encounter_of: Callable[[Scene], str]) -> Call:
    def call(records: Any, scene: Scene, by: Actor) -> Any:
        request = records_pb2.GetEncounterRequest(encounter_id=encounter_of(scene))
        return records.GetEncounter(request, metadata=by.metadata)

    return call


def get_a_observation(records: Any, scene: Scene, by: Actor) -> Any:
    request = records_pb2.GetResourceRequest(
        resource_type=OBSERVATION, resource_id=scene.a_observation.observation_id
    )
    return records.GetResource(request, metadata=by.metadata)


def get_a_observation_history(records: Any, scene: Scene, by: Actor) -> Any:
    request = records_pb2.GetResourceHistoryRequest(
        resource_type=OBSERVATION, resource_id=scene.a_observation.observation_id
    )
    return records.GetResourceHistory(request, metadata=by.metadata)


def get_a_bundle(records: Any, scene: Scene, by: Actor) -> Any:
    request = records_pb2.GetEncounterBundleRequest(encounter_id=scene.a_encounter_id)
    return records.GetEncounterBundle(request, metadata=by.metadata)


get_a_encounter = get_encounter(lambda scene: scene.a_encounter_id)
get_b_encounter = get_encounter(lambda scene: scene.b_encounter_id)

ATTACKS: list[tuple[str, str, Call, grpc.StatusCode]] = [
    ("B attaches an observation to A's encounter", "B", attach_to_a_encounter, DENIED),
    ("B updates A's observation", "B", update_a_observation, DENIED),
    ("B moves its own observation onto A's encounter", "B", move_b_observation_to_a_encounter, DENIED),
    ("B writes an observation in A's name", "B", write_in_a_name, DENIED),
    ("B reads A's encounter", "B", get_a_encounter, DENIED),
    ("B reads A's observation", "B", get_a_observation, DENIED),
    ("B reads the history of A's observation", "B", get_a_observation_history, DENIED),
    ("B reads A's encounter bundle", "B", get_a_bundle, DENIED),
    ("B reads its own encounter", "B", get_b_encounter, OK),
    ("A reads its own encounter", "A", get_a_encounter, OK),
    ("A reads its own observation's history", "A", get_a_observation_history, OK),
    ("A updates its own observation", "A", update_a_observation, OK),
    ("A reads B's encounter", "A", get_b_encounter, DENIED),
    ("sync reads A's encounter bundle", "sync", get_a_bundle, OK),
    ("sync reads B's encounter", "sync", get_b_encounter, OK),
]


async def status_of(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return OK


@pytest.mark.parametrize(
    ("attacker", "call", "expected"), [row[1:] for row in ATTACKS], ids=[row[0] for row in ATTACKS]
)
async def test_attack_table(
    records: Any, scene: Scene, stored_documents: Any, attacker: str, call: Call, expected: grpc.StatusCode
) -> None:
    before = await stored_documents()
    assert await status_of(call(records, scene, actor(scene, attacker))) == expected
    if expected != OK:
        # A refused call writes nothing: no version, no marker, no change.
        assert await stored_documents() == before
    # Whatever happened, A's own visit is as A recorded it, and holds only A's resources.
    bundle = await records.GetEncounterBundle(
        records_pb2.GetEncounterBundleRequest(encounter_id=scene.a_encounter_id), metadata=sync_service()
    )
    assert [r.observation.observation_id for r in bundle.resources] == [scene.a_observation.observation_id]
    assert {r.observation.facility_code for r in bundle.resources} == {scene.a}


# --- what each facility reads of the patient ----------------------------------------------------


def timeline_ids(response: Any) -> set[str]:
    ids: set[str] = set()
    for entry in response.entries:
        kind = entry.resource.WhichOneof("resource")
        message = getattr(entry.resource, kind)
        ids.add(message.encounter_id if kind == "encounter" else message.observation_id)
    return ids


async def reads_of(records: Any, scene: Scene, metadata: Metadata) -> dict[str, set[str]]:
    """What a caller reads of the patient through every list RPC, as resource ids."""
    patient = scene.patient_id
    timeline = await records.GetPatientTimeline(
        records_pb2.GetPatientTimelineRequest(patient_id=patient), metadata=metadata
    )
    encounters = await records.ListEncounters(
        records_pb2.ListEncountersRequest(patient_id=patient), metadata=metadata
    )
    observations = await records.ListObservations(
        records_pb2.ListObservationsRequest(patient_id=patient), metadata=metadata
    )
    return {
        "timeline": timeline_ids(timeline),
        "encounters": {e.encounter_id for e in encounters.encounters},
        "observations": {o.observation_id for o in observations.observations},
    }


async def test_a_planned_encounter_shows_b_its_own_records_and_none_of_a(records: Any, scene: Scene) -> None:
    assert await reads_of(records, scene, scene.doctor(scene.b)) == {
        "timeline": scene.b_ids,
        "encounters": {scene.b_encounter_id},
        "observations": {scene.b_observation.observation_id},
    }


async def test_a_reads_its_own_records_and_none_of_b(records: Any, scene: Scene) -> None:
    assert await reads_of(records, scene, scene.doctor(scene.a)) == {
        "timeline": scene.a_ids,
        "encounters": {scene.a_encounter_id},
        "observations": {scene.a_observation.observation_id},
    }


async def test_a_page_holds_only_visible_records_and_stays_full(records: Any, scene: Scene) -> None:
    """The filter is in the query: a page of one is B's record, not an empty page of A's."""
    pages: list[set[str]] = []
    token = ""
    while True:
        page = await records.GetPatientTimeline(
            records_pb2.GetPatientTimelineRequest(patient_id=scene.patient_id, page_size=1, page_token=token),
            metadata=scene.doctor(scene.b),
        )
        pages.append(timeline_ids(page))
        token = page.next_page_token
        if not token:
            break
    assert [len(page) for page in pages] == [1, 1]
    assert set().union(*pages) == scene.b_ids


def exported(response: Any) -> tuple[set[str], str]:
    """The resource ids of an export, and its Patient resource as JSON text."""
    bundle = json.loads(response.fhir_bundle_json)
    resources = [entry["resource"] for entry in bundle["entry"]]
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    return {r["id"] for r in resources if r["resourceType"] != "Patient"}, json.dumps(patient)


async def test_b_exports_only_its_own_data(records: Any, scene: Scene) -> None:
    request = records_pb2.ExportPatientRequest(patient_id=scene.patient_id)
    ids, patient = exported(await records.ExportPatient(request, metadata=scene.doctor(scene.b)))
    assert ids == scene.b_ids
    # A's record number and registration are A's data too.
    assert scene.a_mrn not in patient and scene.a not in patient


async def test_a_exports_its_own_data_with_its_record_number(records: Any, scene: Scene) -> None:
    request = records_pb2.ExportPatientRequest(patient_id=scene.patient_id)
    ids, patient = exported(await records.ExportPatient(request, metadata=scene.doctor(scene.a)))
    assert ids == scene.a_ids
    assert scene.a_mrn in patient


async def test_the_sync_service_sees_every_facility_s_records(records: Any, scene: Scene) -> None:
    request = records_pb2.ExportPatientRequest(patient_id=scene.patient_id)
    ids, patient = exported(await records.ExportPatient(request, metadata=sync_service()))
    assert ids == scene.a_ids | scene.b_ids
    assert scene.a_mrn in patient
    bundle = await records.GetEncounterBundle(
        records_pb2.GetEncounterBundleRequest(encounter_id=scene.b_encounter_id), metadata=sync_service()
    )
    assert [r.observation.observation_id for r in bundle.resources] == [scene.b_observation.observation_id]


async def test_a_facility_without_any_relationship_is_denied_every_list(records: Any, scene: Scene) -> None:
    stranger = scene.doctor(f"6{uuid.uuid4().int % 10000:04d}")
    for call in (
        records.GetPatientTimeline(
            records_pb2.GetPatientTimelineRequest(patient_id=scene.patient_id), metadata=stranger
        ),
        records.ListObservations(
            records_pb2.ListObservationsRequest(patient_id=scene.patient_id), metadata=stranger
        ),
        records.ExportPatient(
            records_pb2.ExportPatientRequest(patient_id=scene.patient_id), metadata=stranger
        ),
    ):
        assert await status_of(call) == DENIED


async def test_the_gateway_shows_b_s_doctor_only_b_s_records(stack: Stack, scene: Scene) -> None:
    token = issue_token("dr-lane-gateway", scene.b, ("doctor",))
    headers = {"Authorization": f"Bearer {token}", "X-Purpose-Of-Use": "TREATMENT"}
    async with httpx.AsyncClient(base_url=stack.url("gateway"), headers=headers, timeout=30) as client:
        everything = await client.get(f"/fhir/Patient/{scene.patient_id}/$everything")
        encounters = await client.get("/fhir/Encounter", params={"patient": scene.patient_id})
    assert everything.status_code == 200, everything.text
    assert encounters.status_code == 200, encounters.text
    resources = [entry["resource"] for entry in everything.json()["entry"]]
    assert {r["id"] for r in resources if r["resourceType"] != "Patient"} == scene.b_ids
    assert [entry["resource"]["id"] for entry in encounters.json().get("entry", [])] == [scene.b_encounter_id]
