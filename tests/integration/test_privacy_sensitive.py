"""Special categories of clinical data against the real platform (docs/privacy-sensitive.md): a
resource of a special category is hidden from a doctor of another facility with an ordinary sharing
grant (masked on the timeline, refused by id, left out of an export) and visible once a grant names
its category; its own facility always sees it; an emergency access does not open it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import httpx
import pytest
from emr.identity.v1 import identity_pb2
from emr.records.v1 import records_pb2, sensitivity_pb2
from emr.sync.v1 import sync_pb2, sync_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from pymongo import AsyncMongoClient

from emr_devstack.processes import free_port
from emr_devstack.stack import Stack
from emr_devstack.tokens import caller_metadata, issue_token
from emr_records.repository import CHANGE_COUNTER
from emr_runtime.db import last_sequence

HIV = sensitivity_pb2.SENSITIVITY_CATEGORY_HIV
MENTAL_HEALTH = sensitivity_pb2.SENSITIVITY_CATEGORY_MENTAL_HEALTH


@dataclass(frozen=True)
class Chart:
    """A patient registered at ``owner`` with an ordinary visit (an observation) and an HIV visit
    (a B20 condition and an observation), all written by ``owner``."""

    owner: str
    other: str
    patient_id: str
    ordinary_visit: str
    ordinary_observation: str
    hiv_visit: str
    hiv_condition: str
    hiv_visit_observation: str


def doctor_at(facility: str) -> Any:
    return caller_metadata(f"dr-{facility}", facility, "TREATMENT", role="doctor")


def registrar_at(facility: str) -> Any:
    return caller_metadata(f"reg-{facility}", facility, "TREATMENT", role="registrar")


@pytest.fixture
async def chart(clinical: Any) -> Chart:
    suffix = uuid.uuid4().int % 9000
    owner, other = f"7{suffix:04d}", f"8{suffix:04d}"
    patient_id = await clinical.patient(owner)
    ordinary_visit = await clinical.encounter(patient_id, owner, started_seconds_ago=3 * 86400)
    observation = clinical.every_resource(patient_id, owner, ordinary_visit)[0]
    ordinary_observation = (await clinical.create(observation)).observation.observation_id
    hiv_visit = await clinical.encounter(patient_id, owner)
    hiv_observation, hiv_condition = clinical.every_resource(patient_id, owner, hiv_visit)[:2]
    hiv_condition.condition.icd10_code = "B20.1"
    created_condition = await clinical.create(hiv_condition)
    assert list(created_condition.sensitivity) == [HIV]
    return Chart(
        owner,
        other,
        patient_id,
        ordinary_visit,
        ordinary_observation,
        hiv_visit,
        created_condition.condition.condition_id,
        (await clinical.create(hiv_observation)).observation.observation_id,
    )


async def grant(identity: Any, chart: Chart, categories: tuple[Any, ...] = ()) -> str:
    end = Timestamp()
    end.FromDatetime(datetime.now(UTC) + timedelta(days=30))
    recorded = await identity.RecordSharingGrant(
        identity_pb2.RecordSharingGrantRequest(
            request_id=str(uuid.uuid4()),
            patient_id=chart.patient_id,
            facility_code=chart.owner,
            grantee_facility_code=chart.other,
            purpose=identity_pb2.SHARING_PURPOSE_TREATMENT,
            evidence=identity_pb2.CONSENT_EVIDENCE_SIGNED_FORM,
            end_time=end,
            categories=categories,
        ),
        metadata=registrar_at(chart.owner),
    )
    assert list(recorded.sharing_grant.categories) == list(categories)
    return str(recorded.sharing_grant.sharing_grant_id)


async def timeline(records: Any, chart: Chart, metadata: Any) -> dict[str, records_pb2.TimelineEntry]:
    """The patient's timeline by resource id; restricted entries under "restricted:<n>"."""
    page = await records.GetPatientTimeline(
        records_pb2.GetPatientTimelineRequest(patient_id=chart.patient_id, page_size=200), metadata=metadata
    )
    found: dict[str, records_pb2.TimelineEntry] = {}
    for index, entry in enumerate(page.entries):
        if entry.restricted:
            found[f"restricted:{index}"] = entry
            continue
        which = entry.resource.WhichOneof("resource")
        resource = getattr(entry.resource, which)
        found[str(getattr(resource, "encounter_id" if which == "encounter" else f"{which}_id"))] = entry
    return found


async def read_condition(records: Any, chart: Chart, metadata: Any) -> records_pb2.ClinicalResource:
    response = await records.GetResource(
        records_pb2.GetResourceRequest(
            resource_type=records_pb2.RESOURCE_TYPE_CONDITION, resource_id=chart.hiv_condition
        ),
        metadata=metadata,
    )
    return response.resource  # type: ignore[no-any-return]


async def denied(call: Any) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, refused.value.details()
    return refused.value.details() or ""


async def test_a_sensitive_resource_is_hidden_under_an_ordinary_grant_and_seen_under_one_naming_it(
    identity: Any, records: Any, chart: Chart
) -> None:
    await grant(identity, chart)
    visitor = doctor_at(chart.other)

    # Masked on the timeline: type, time and facility, no codes or text.
    seen = await timeline(records, chart, visitor)
    assert {chart.ordinary_visit, chart.ordinary_observation} <= set(seen)
    assert not {chart.hiv_visit, chart.hiv_condition, chart.hiv_visit_observation} & set(seen)
    masked = [entry for key, entry in seen.items() if key.startswith("restricted:")]
    assert sorted(entry.resource_type for entry in masked) == sorted(
        [
            records_pb2.RESOURCE_TYPE_ENCOUNTER,
            records_pb2.RESOURCE_TYPE_CONDITION,
            records_pb2.RESOURCE_TYPE_OBSERVATION,
        ]
    )
    for entry in masked:
        assert not entry.HasField("resource") and entry.HasField("time")
        assert entry.facility_code == chart.owner
        assert b"B20" not in entry.SerializeToString()

    # Refused by id, also the visit and what else is attached to it; the ordinary visit reads.
    assert "special category" in await denied(read_condition(records, chart, visitor))
    await denied(
        records.GetEncounter(records_pb2.GetEncounterRequest(encounter_id=chart.hiv_visit), metadata=visitor)
    )
    await denied(
        records.GetResource(
            records_pb2.GetResourceRequest(
                resource_type=records_pb2.RESOURCE_TYPE_OBSERVATION, resource_id=chart.hiv_visit_observation
            ),
            metadata=visitor,
        )
    )
    await denied(
        records.GetResourceHistory(
            records_pb2.GetResourceHistoryRequest(
                resource_type=records_pb2.RESOURCE_TYPE_CONDITION, resource_id=chart.hiv_condition
            ),
            metadata=visitor,
        )
    )
    await denied(
        records.GetEncounterBundle(
            records_pb2.GetEncounterBundleRequest(encounter_id=chart.hiv_visit), metadata=visitor
        )
    )
    listed = await records.ListObservations(
        records_pb2.ListObservationsRequest(patient_id=chart.patient_id), metadata=visitor
    )
    assert [o.observation_id for o in listed.observations] == [chart.ordinary_observation]
    bundle = await records.GetEncounterBundle(
        records_pb2.GetEncounterBundleRequest(encounter_id=chart.ordinary_visit), metadata=visitor
    )
    assert len(bundle.resources) == 1 and not bundle.encounter.sensitivity

    # Left out of an export, which leaves the platform.
    exported = await records.ExportPatient(
        records_pb2.ExportPatientRequest(patient_id=chart.patient_id), metadata=visitor
    )
    text = exported.fhir_bundle_json.decode()
    assert chart.ordinary_observation in text
    assert all(hidden not in text for hidden in (chart.hiv_visit, chart.hiv_condition, "B20"))

    # Its own facility sees it, marked.
    own = await timeline(records, chart, doctor_at(chart.owner))
    assert list(own[chart.hiv_condition].resource.sensitivity) == [HIV]
    assert list(own[chart.hiv_visit].resource.encounter.sensitivity) == [HIV]
    assert list(own[chart.hiv_visit_observation].resource.sensitivity) == [HIV]
    assert not own[chart.ordinary_observation].resource.sensitivity

    # A grant naming another category opens nothing more; one naming HIV opens it.
    await grant(identity, chart, (MENTAL_HEALTH,))
    await denied(read_condition(records, chart, visitor))
    await grant(identity, chart, (HIV,))
    read = await read_condition(records, chart, visitor)
    assert read.condition.icd10_code == "B20.1" and list(read.sensitivity) == [HIV]
    seen = await timeline(records, chart, visitor)
    assert {chart.hiv_visit, chart.hiv_condition, chart.hiv_visit_observation} <= set(seen)
    assert not any(entry.restricted for entry in seen.values())


async def test_an_emergency_access_opens_ordinary_data_but_no_special_category(
    identity: Any, records: Any, chart: Chart
) -> None:
    visitor = doctor_at(chart.other)
    await identity.DeclareEmergencyAccess(
        identity_pb2.DeclareEmergencyAccessRequest(
            request_id=str(uuid.uuid4()),
            patient_id=chart.patient_id,
            facility_code=chart.other,
            reason=identity_pb2.EMERGENCY_REASON_LIFE_THREATENING,
            justification="Synthetic: unconscious patient in the ER, not registered here",
        ),
        metadata=visitor,
    )
    seen = await timeline(records, chart, visitor)
    assert chart.ordinary_observation in seen and chart.hiv_condition not in seen
    assert sum(entry.restricted for entry in seen.values()) == 3
    await denied(read_condition(records, chart, visitor))


async def test_an_author_s_mark_on_a_visit_carries_to_what_is_attached_to_it(
    clinical: Any, records: Any, chart: Chart
) -> None:
    created = await clinical.records.CreateEncounter(
        records_pb2.CreateEncounterRequest(
            request_id=str(uuid.uuid4()),
            patient_id=chart.patient_id,
            facility_code=chart.owner,
            encounter_class=records_pb2.ENCOUNTER_CLASS_OUTPATIENT,
            status=records_pb2.ENCOUNTER_STATUS_IN_PROGRESS,
            start_time=clinical.timestamp(-600),
            reason="Synthetic: counselling visit",
            sensitivity=[MENTAL_HEALTH],
        ),
        metadata=doctor_at(chart.owner),
    )
    visit = created.encounter.encounter_id
    assert list(created.encounter.sensitivity) == [MENTAL_HEALTH]
    observation = clinical.every_resource(chart.patient_id, chart.owner, visit)[0]
    written = await clinical.create(observation)
    assert list(written.sensitivity) == [MENTAL_HEALTH]


async def test_an_unknown_category_or_a_category_grant_for_every_facility_is_refused_naming_the_field(
    identity: Any, records: Any, clinical: Any, chart: Chart
) -> None:
    observation = clinical.every_resource(chart.patient_id, chart.owner, chart.ordinary_visit)[0]
    observation.sensitivity.append(99)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await records.CreateResource(
            records_pb2.CreateResourceRequest(request_id=str(uuid.uuid4()), resource=observation),
            metadata=doctor_at(chart.owner),
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "resource.observation.sensitivity[0]" in (refused.value.details() or "")
    end = Timestamp()
    end.FromDatetime(datetime.now(UTC) + timedelta(days=30))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await identity.RecordSharingGrant(
            identity_pb2.RecordSharingGrantRequest(
                request_id=str(uuid.uuid4()),
                patient_id=chart.patient_id,
                facility_code=chart.owner,
                purpose=identity_pb2.SHARING_PURPOSE_TREATMENT,
                evidence=identity_pb2.CONSENT_EVIDENCE_SIGNED_FORM,
                end_time=end,
                categories=[HIV],
            ),
            metadata=registrar_at(chart.owner),
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "grantee_facility_code" in (refused.value.details() or "")


# --- national submission ---------------------------------------------------------------------------

FAST_SYNC = {
    "SYNC_POLL_INTERVAL_SECONDS": "0.1",
    "SYNC_LEASE_SECONDS": "1.5",
    "SYNC_FIRST_RETRY_DELAY_SECONDS": "0.1",
    "SYNC_MAX_RETRY_DELAY_SECONDS": "0.5",
    "SYNC_HTTP_TIMEOUT_SECONDS": "3",
    "SYNC_PARTITIONS": "4",
    "SYNC_PARTITIONS_PER_ROUND": "4",
}


@dataclass(frozen=True)
class National:
    """A sync replica of its own (own database, starting at the feed's end) and its own emulator."""

    emulator_url: str
    sync: sync_pb2_grpc.NationalSyncServiceStub


@pytest.fixture
async def national(stack: Stack, mongo: AsyncMongoClient[dict[str, Any]]) -> AsyncIterator[National]:
    emulator_port = free_port()
    suffix = uuid.uuid4().hex[:6]
    emulator, replica = f"emulator-sensitive-{suffix}", f"sync-sensitive-{suffix}"
    stack.start_service(
        "national_emulator",
        ports=stack.with_ports(national_emulator=emulator_port),
        name=emulator,
        extra_env={"NATIONAL_EMULATOR_LOG_LEVEL": "warning"},
    )
    database = f"emr_sync_test_{suffix}"
    start = await last_sequence(mongo["emr_records"], CHANGE_COUNTER)
    await mongo[database]["cursors"].insert_one({"_id": "records", "after": start})
    await mongo[database]["cursors"].insert_one({"_id": "identity", "after": 2**62})
    ports = stack.with_ports(sync=free_port())
    stack.start_service(
        "sync",
        ports=ports,
        name=replica,
        extra_env={
            **FAST_SYNC,
            "SYNC_MONGODB_DATABASE": database,
            "SYNC_NATIONAL_URL": f"http://127.0.0.1:{emulator_port}",
            "SYNC_REPLICA_ID": replica,
            "SYNC_METRICS_PORT": "0",
        },
    )
    channel = stack.dev_channel(f"127.0.0.1:{ports.sync}")
    yield National(f"http://127.0.0.1:{emulator_port}", sync_pb2_grpc.NationalSyncServiceStub(channel))
    await channel.close()
    for name in (replica, emulator):
        stack.processes.pop(name).stop()


async def finished_visit(
    clinical: Any, patient_id: str, facility: str, code: str, *marks: Any
) -> tuple[str, str]:
    """A visit whose condition is written before the visit is finished (the finished version is what
    sync submits): (encounter id, condition id)."""
    doctor = doctor_at(facility)
    opened = await clinical.records.CreateEncounter(
        records_pb2.CreateEncounterRequest(
            request_id=str(uuid.uuid4()),
            patient_id=patient_id,
            facility_code=facility,
            encounter_class=records_pb2.ENCOUNTER_CLASS_OUTPATIENT,
            status=records_pb2.ENCOUNTER_STATUS_IN_PROGRESS,
            start_time=clinical.timestamp(-3600),
            reason="Synthetic: follow-up visit",
            sensitivity=marks,
        ),
        metadata=doctor,
    )
    encounter = opened.encounter
    condition = clinical.every_resource(patient_id, facility, encounter.encounter_id)[1]
    condition.condition.icd10_code = code
    condition_id = (await clinical.create(condition)).condition.condition_id
    encounter.status = records_pb2.ENCOUNTER_STATUS_FINISHED
    encounter.end_time.CopyFrom(clinical.timestamp(-60))
    await clinical.records.UpdateResource(
        records_pb2.UpdateResourceRequest(
            request_id=str(uuid.uuid4()),
            resource=records_pb2.ClinicalResource(encounter=encounter),
            expected_version=encounter.version,
        ),
        metadata=doctor,
    )
    return encounter.encounter_id, condition_id


async def test_an_hiv_visit_is_withheld_from_the_national_submission_and_others_go_labelled(
    clinical: Any, national: National, facility_code: str
) -> None:
    patient_id = await clinical.patient(facility_code)
    hiv_visit, _ = await finished_visit(clinical, patient_id, facility_code, "B20.1")
    marked_visit, _ = await finished_visit(clinical, patient_id, facility_code, "J18.9", HIV)
    mental_visit, mental_condition = await finished_visit(clinical, patient_id, facility_code, "F32.9")
    ordinary_visit, ordinary_condition = await finished_visit(clinical, patient_id, facility_code, "J18.9")

    async def delivered() -> sync_pb2.GetSyncStatusResponse | None:
        status = await national.sync.GetSyncStatus(sync_pb2.GetSyncStatusRequest(facility_code=facility_code))
        return status if status.delivered >= 2 and status.pending == 0 and status.in_flight == 0 else None

    deadline = time.monotonic() + 60
    status = await delivered()
    while status is None:
        assert time.monotonic() < deadline, "the visits were not delivered before the deadline"
        await asyncio.sleep(0.1)
        status = await delivered()
    # Sync took every change in feed order: the HIV visits, written first, were passed over.
    assert status.delivered == 2 and status.dead_lettered == 0
    async with httpx.AsyncClient(base_url=national.emulator_url) as http:
        held = (await http.get("/deliveries", params={"patient_id": patient_id, "kind": "fhir"})).json()
        submitted = {e["id"] for item in held["items"] for e in item["entries"]}
        assert {mental_visit, ordinary_visit} <= submitted
        assert not {hiv_visit, marked_visit} & submitted

        async def security(condition_id: str) -> list[str]:
            found = await http.get(
                "/resources", params={"resource_type": "Condition", "resource_id": condition_id}
            )
            (item,) = found.json()["items"]
            return [label["code"] for label in item["resource"].get("meta", {}).get("security", [])]

        assert await security(mental_condition) == ["R", "PSY"]
        assert await security(ordinary_condition) == []


# --- the FHIR gateway -----------------------------------------------------------------------------


def fhir_headers(facility: str) -> dict[str, str]:
    token = issue_token(f"dr-fhir-{facility}", facility, ("doctor",))
    return {"Authorization": f"Bearer {token}", "X-Purpose-Of-Use": "TREATMENT"}


async def test_the_fhir_gateway_reads_follow_the_same_rule(stack: Stack, identity: Any, chart: Chart) -> None:
    await grant(identity, chart)
    async with httpx.AsyncClient(base_url=stack.url("gateway")) as http:
        path = f"/fhir/Patient/{chart.patient_id}/$everything"
        visitor = (await http.get(path, headers=fhir_headers(chart.other))).json()
        ids = {entry["resource"]["id"] for entry in visitor["entry"]}
        assert chart.ordinary_observation in ids
        assert not {chart.hiv_visit, chart.hiv_condition, chart.hiv_visit_observation} & ids
        encounters = (
            await http.get(
                "/fhir/Encounter", params={"patient": chart.patient_id}, headers=fhir_headers(chart.other)
            )
        ).json()
        assert [entry["resource"]["id"] for entry in encounters.get("entry", [])] == [chart.ordinary_visit]

        owner = (await http.get(path, headers=fhir_headers(chart.owner))).json()
        labels = {
            entry["resource"]["id"]: [
                label["code"] for label in entry["resource"]["meta"].get("security", [])
            ]
            for entry in owner["entry"]
        }
        assert labels[chart.hiv_condition] == ["R", "HIV"]
        assert labels[chart.hiv_visit] == ["R", "HIV"]
        assert labels[chart.ordinary_observation] == []
