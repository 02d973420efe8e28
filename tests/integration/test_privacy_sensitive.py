"""Special categories of clinical data against the real platform (docs/privacy-sensitive.md): a
resource of a special category is hidden from a doctor of another facility with an ordinary sharing
grant (masked on the timeline, refused by id, left out of an export) and visible once a grant names
its category; its own facility always sees it; an emergency access does not open it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from emr.identity.v1 import identity_pb2
from emr.records.v1 import records_pb2, sensitivity_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from emr_devstack.tokens import caller_metadata

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
