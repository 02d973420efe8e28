"""Retention of clinical records (Circular 33/2025/TT-BYT) on the real stack: a death raises every
record of the patient to 30 years; a legal hold stops a disposal; a disposal needs a second person's
approval and leaves no clinical content, only tombstones, audit events and a certificate."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import grpc
import pytest
from emr.audit.v1 import audit_pb2
from emr.records.v1 import records_pb2, retention_pb2, retention_pb2_grpc, sensitivity_pb2

from emr_devstack.processes import poll_until
from emr_devstack.tokens import caller_metadata

# Writes as the development admin of facility 79001 (the admin role writes for any facility).
DOCTOR = caller_metadata("dr-synthetic-02", "79001", "TREATMENT")
TREATING_DOCTOR = caller_metadata("dr-synthetic-03", "79001", "TREATMENT", role="doctor")
# Two data-protection officers: one requests a disposal, the other approves it.
OFFICER = caller_metadata("dpo-synthetic-01", role="auditor")
SECOND_OFFICER = caller_metadata("dpo-synthetic-02", role="auditor")
YEAR = 365.25 * 86400
VIETNAM = timezone(timedelta(hours=7))


@pytest.fixture
def retention(channels: dict[str, grpc.aio.Channel]) -> retention_pb2_grpc.RecordRetentionServiceStub:
    return retention_pb2_grpc.RecordRetentionServiceStub(channels["records"])


def today() -> str:
    return datetime.now(VIETNAM).date().isoformat()


async def old_encounter(clinical: Any, patient_id: str, facility: str, years_ago: float, **extra: Any) -> str:
    """A finished inpatient stay that ended ``years_ago`` (historical data)."""
    created = await clinical.records.CreateEncounter(
        records_pb2.CreateEncounterRequest(
            request_id=str(uuid.uuid4()),
            patient_id=patient_id,
            facility_code=facility,
            encounter_class=records_pb2.ENCOUNTER_CLASS_INPATIENT,
            status=records_pb2.ENCOUNTER_STATUS_FINISHED,
            start_time=clinical.timestamp(-years_ago * YEAR - 3 * 86400),
            end_time=clinical.timestamp(-years_ago * YEAR),
            reason="Đau bụng — synthetic",
            **extra,
        ),
        metadata=DOCTOR,
    )
    return str(created.encounter.encounter_id)


async def old_condition(
    clinical: Any, patient_id: str, facility: str, encounter_id: str, code: str, years_ago: float
) -> str:
    created = await clinical.create(
        records_pb2.ClinicalResource(
            condition=records_pb2.Condition(
                patient_id=patient_id,
                facility_code=facility,
                encounter_id=encounter_id,
                icd10_code=code,
                clinical_status=records_pb2.CONDITION_CLINICAL_STATUS_RESOLVED,
                role=records_pb2.DIAGNOSIS_ROLE_PRIMARY,
                recorded_time=clinical.timestamp(-years_ago * YEAR - 86400),
            )
        )
    )
    return str(created.condition.condition_id)


async def retention_of(
    retention: Any, kind: Any, resource_id: str
) -> retention_pb2.GetRecordRetentionResponse:
    found: retention_pb2.GetRecordRetentionResponse = await retention.GetRecordRetention(
        retention_pb2.GetRecordRetentionRequest(resource_type=kind, resource_id=resource_id), metadata=OFFICER
    )
    return found


async def test_a_death_raises_every_record_of_the_patient_to_30_years(
    clinical: Any, retention: Any, facility_code: str
) -> None:
    patient_id = await clinical.patient(facility_code)
    ordinary = await old_encounter(clinical, patient_id, facility_code, years_ago=12)
    condition_id = await old_condition(clinical, patient_id, facility_code, ordinary, "J18.9", years_ago=12)
    psychiatric = await old_encounter(clinical, patient_id, facility_code, years_ago=11)
    await old_condition(clinical, patient_id, facility_code, psychiatric, "F20.0", years_ago=11)

    before = await retention_of(retention, records_pb2.RESOURCE_TYPE_CONDITION, condition_id)
    assert before.effective_class == retention_pb2.RETENTION_CLASS_STANDARD_10_YEARS
    assert before.episode_key == ordinary
    assert before.disposal_date and before.disposal_date <= today()  # 10 years have run: due
    # A psychiatric diagnosis makes its whole episode 20 years, the encounter included.
    twenty = await retention_of(retention, records_pb2.RESOURCE_TYPE_ENCOUNTER, psychiatric)
    assert twenty.own_class == retention_pb2.RETENTION_CLASS_STANDARD_10_YEARS
    assert twenty.effective_class == retention_pb2.RETENTION_CLASS_SPECIAL_20_YEARS

    # The patient dies in a later stay.
    await clinical.records.CreateEncounter(
        records_pb2.CreateEncounterRequest(
            request_id=str(uuid.uuid4()),
            patient_id=patient_id,
            facility_code=facility_code,
            encounter_class=records_pb2.ENCOUNTER_CLASS_INPATIENT,
            status=records_pb2.ENCOUNTER_STATUS_FINISHED,
            start_time=clinical.timestamp(-86400),
            end_time=clinical.timestamp(-3600),
            reason="Suy hô hấp — synthetic",
            discharge=records_pb2.EncounterDischarge(outcome=records_pb2.TREATMENT_OUTCOME_DIED),
        ),
        metadata=DOCTOR,
    )

    for kind, resource_id in (
        (records_pb2.RESOURCE_TYPE_CONDITION, condition_id),
        (records_pb2.RESOURCE_TYPE_ENCOUNTER, ordinary),
        (records_pb2.RESOURCE_TYPE_ENCOUNTER, psychiatric),
    ):
        after = await retention_of(retention, kind, resource_id)
        assert after.effective_class == retention_pb2.RETENTION_CLASS_DEATH_30_YEARS, resource_id
        assert after.disposal_date > today()
    # Its own content still says 10 years: the floor, not a rewrite of the record, raised it.
    assert (await retention_of(retention, records_pb2.RESOURCE_TYPE_CONDITION, condition_id)).own_class == (
        retention_pb2.RETENTION_CLASS_STANDARD_10_YEARS
    )
    due = await retention.ListDueRecords(
        retention_pb2.ListDueRecordsRequest(as_of=today(), page_size=500), metadata=OFFICER
    )
    assert not {ordinary, psychiatric} & {e.episode_key for e in due.episodes}


async def test_a_held_record_survives_a_disposal_that_removes_a_due_one(
    clinical: Any, retention: Any, records: Any, audit: Any, mongo: Any, facility_code: str
) -> None:
    held_patient = await clinical.patient(facility_code)
    held = await old_encounter(clinical, held_patient, facility_code, years_ago=15)
    held_condition = await old_condition(clinical, held_patient, facility_code, held, "I10", years_ago=15)
    due_patient = await clinical.patient(facility_code)
    # A visit marked HIV: its disposal must not leave the mark behind either.
    due = await old_encounter(
        clinical,
        due_patient,
        facility_code,
        years_ago=15,
        sensitivity=[sensitivity_pb2.SENSITIVITY_CATEGORY_HIV],
    )
    assert await mongo["emr_records"]["visit_categories"].find_one({"_id": f"{due}:HIV"}) is not None
    due_condition = await old_condition(clinical, due_patient, facility_code, due, "K35.8", years_ago=15)
    recent = await clinical.encounter(due_patient, facility_code)  # the same patient's recent stay

    hold = (
        await retention.PlaceLegalHold(
            retention_pb2.PlaceLegalHoldRequest(
                request_id=str(uuid.uuid4()),
                target=retention_pb2.LEGAL_HOLD_TARGET_PATIENT,
                target_id=held_patient,
                reason="Court case 2026/HS-01 (synthetic)",
            ),
            metadata=OFFICER,
        )
    ).hold
    assert hold.placed_by == "dpo-synthetic-01" and hold.patient_id == held_patient
    assert list(
        (await retention_of(retention, records_pb2.RESOURCE_TYPE_CONDITION, held_condition)).hold_ids
    ) == [hold.hold_id]

    listed = await retention.ListDueRecords(
        retention_pb2.ListDueRecordsRequest(as_of=today(), page_size=500), metadata=OFFICER
    )
    keys = {e.episode_key for e in listed.episodes}
    assert due in keys and held not in keys and recent not in keys

    request = retention_pb2.RequestDisposalRequest(
        request_id=str(uuid.uuid4()), as_of=today(), reason="Yearly disposal (synthetic)"
    )
    disposal = (await retention.RequestDisposal(request, metadata=OFFICER)).disposal
    assert disposal.status == retention_pb2.DISPOSAL_STATUS_AWAITING_APPROVAL
    assert (
        await retention.RequestDisposal(request, metadata=OFFICER)
    ).disposal.disposal_id == disposal.disposal_id
    listed_ids = {r.resource_id for e in disposal.episodes for r in e.records}
    assert {due, due_condition} <= listed_ids and not {held, held_condition, recent} & listed_ids
    # Nothing is removed before the approval.
    assert (
        await records.GetEncounter(records_pb2.GetEncounterRequest(encounter_id=due))
    ).encounter.encounter_id == due

    # The requester cannot approve their own disposal.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await retention.ApproveDisposal(
            retention_pb2.ApproveDisposalRequest(disposal_id=disposal.disposal_id), metadata=OFFICER
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Nor can a doctor.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await retention.ApproveDisposal(
            retention_pb2.ApproveDisposalRequest(disposal_id=disposal.disposal_id), metadata=TREATING_DOCTOR
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

    approved = (
        await retention.ApproveDisposal(
            retention_pb2.ApproveDisposalRequest(disposal_id=disposal.disposal_id), metadata=SECOND_OFFICER
        )
    ).disposal
    assert approved.status == retention_pb2.DISPOSAL_STATUS_COMPLETED
    certificate = approved.certificate
    assert (certificate.requested_by, certificate.approved_by) == ("dpo-synthetic-01", "dpo-synthetic-02")
    disposed = {r.resource_id for r in certificate.disposed}
    assert {due, due_condition} <= disposed and not {held, held_condition, recent} & disposed
    assert certificate.disposed_count == len(disposed) and len(certificate.disposed_sha256) == 64
    # Approving again changes nothing; the certificate is retrievable by id.
    again = await retention.ApproveDisposal(
        retention_pb2.ApproveDisposalRequest(disposal_id=disposal.disposal_id), metadata=SECOND_OFFICER
    )
    assert again.disposal.certificate == certificate
    got = await retention.GetDisposal(
        retention_pb2.GetDisposalRequest(disposal_id=disposal.disposal_id), metadata=OFFICER
    )
    assert got.disposal.certificate == certificate

    # The held record and the recent one are intact; the disposed ones are gone from every read.
    assert (await records.GetEncounter(records_pb2.GetEncounterRequest(encounter_id=held))).encounter.reason
    assert (await records.GetEncounter(records_pb2.GetEncounterRequest(encounter_id=recent))).encounter.reason
    for kind, resource_id in (
        (records_pb2.RESOURCE_TYPE_ENCOUNTER, due),
        (records_pb2.RESOURCE_TYPE_CONDITION, due_condition),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await records.GetResource(
                records_pb2.GetResourceRequest(resource_type=kind, resource_id=resource_id)
            )
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND

    # No clinical content is left in the database: only a tombstone of ids, type, dates, class.
    db = mongo["emr_records"]
    for resource_id in (due, due_condition):
        assert await db["resources"].find_one({"_id": resource_id}) is None
        assert await db["resource_versions"].count_documents({"resource_id": resource_id}) == 0
        tombstone = await db["disposed_records"].find_one({"_id": resource_id})
        assert tombstone is not None
        assert tombstone["disposal_id"] == disposal.disposal_id
        assert tombstone["retention_class"] == "10y"
        assert set(tombstone) <= {
            "_id", "resource_type", "patient_id", "encounter_id", "facility_code", "retention_class",
            "clock_start", "disposal_id", "disposed_at",
        }  # fmt: skip
    assert await db["visit_categories"].count_documents({"_id": {"$regex": f"^{due}:"}}) == 0
    assert await db["resource_versions"].count_documents({"resource_id": held_condition}) == 1

    # The audit trail: the request and the deletion, naming the disposal, in the patient's log.
    async def deletion() -> list[audit_pb2.AuditEvent] | None:
        events = (
            await audit.QueryEvents(audit_pb2.QueryEventsRequest(patient_id=due_patient, page_size=500))
        ).events
        found = [
            e
            for e in events
            if e.operation.endswith("/ApproveDisposal") and e.action == audit_pb2.AUDIT_ACTION_DELETE
        ]
        return found or None

    deleted = await poll_until(deletion)
    assert {e.resource_id for e in deleted} == {disposal.disposal_id}
    assert {e.actor_id for e in deleted} == {"dpo-synthetic-02"}
    held_events = (
        await audit.QueryEvents(audit_pb2.QueryEventsRequest(patient_id=held_patient, page_size=500))
    ).events
    assert [e.operation.rsplit("/", 1)[1] for e in held_events if "Disposal" in e.operation] == []
    assert any(e.operation.endswith("/PlaceLegalHold") for e in held_events)

    # Once the hold is lifted, the next disposal takes the record.
    released = await retention.ReleaseLegalHold(
        retention_pb2.ReleaseLegalHoldRequest(hold_id=hold.hold_id, reason="Case closed (synthetic)"),
        metadata=OFFICER,
    )
    assert released.hold.released_by == "dpo-synthetic-01"
    later = (
        await retention.RequestDisposal(
            retention_pb2.RequestDisposalRequest(
                request_id=str(uuid.uuid4()), as_of=today(), reason="Next run"
            ),
            metadata=SECOND_OFFICER,
        )
    ).disposal
    finished = await retention.ApproveDisposal(
        retention_pb2.ApproveDisposalRequest(disposal_id=later.disposal_id), metadata=OFFICER
    )
    assert {held, held_condition} <= {r.resource_id for r in finished.disposal.certificate.disposed}

    # Audit keeps a patient's events while records keeps any record of them: records says when the
    # last one went (the held patient's), and not while one is left (the recent stay).
    async def emptied() -> list[audit_pb2.AuditEvent] | None:
        events = (
            await audit.QueryEvents(audit_pb2.QueryEventsRequest(patient_id=held_patient, page_size=500))
        ).events
        return [e for e in events if e.resource_type == "PatientRecords"] or None

    (told,) = await poll_until(emptied)
    assert told.action == audit_pb2.AUDIT_ACTION_DELETE and told.resource_id == later.disposal_id
    assert told.retention_class == audit_pb2.AUDIT_RETENTION_CLASS_STANDARD
    due_events = (
        await audit.QueryEvents(audit_pb2.QueryEventsRequest(patient_id=due_patient, page_size=500))
    ).events
    assert not [e for e in due_events if e.resource_type == "PatientRecords"]


async def test_bad_retention_requests_are_refused_naming_the_field(retention: Any, bad_fields: Any) -> None:
    tomorrow = (datetime.now(VIETNAM).date() + timedelta(days=1)).isoformat()
    for call, request, field in (
        (retention.ListDueRecords, retention_pb2.ListDueRecordsRequest(as_of=tomorrow), "as_of"),
        (retention.ListDueRecords, retention_pb2.ListDueRecordsRequest(as_of="2020-02-30"), "as_of"),
        (
            retention.RequestDisposal,
            retention_pb2.RequestDisposalRequest(request_id="r-1", as_of="2999-01-01", reason="x"),
            "as_of",
        ),
        (
            retention.RequestDisposal,
            retention_pb2.RequestDisposalRequest(request_id="r-2", as_of=today()),
            "reason",
        ),
        (
            retention.PlaceLegalHold,
            retention_pb2.PlaceLegalHoldRequest(request_id="r-3", target_id="p", reason="x"),
            "target",
        ),
        (retention.ReleaseLegalHold, retention_pb2.ReleaseLegalHoldRequest(reason="x"), "hold_id"),
        (
            retention.ClassifyRecord,
            retention_pb2.ClassifyRecordRequest(
                request_id="r-4",
                resource_type=records_pb2.RESOURCE_TYPE_ENCOUNTER,
                resource_id="e",
                reason="x",
            ),
            "retention_class",
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(request, metadata=OFFICER)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in bad_fields(refused.value)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await retention.GetDisposal(
            retention_pb2.GetDisposalRequest(disposal_id="no-such-disposal"), metadata=OFFICER
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_explicit_class_keeps_a_medical_incident_file_permanently(
    clinical: Any, retention: Any, facility_code: str
) -> None:
    patient_id = await clinical.patient(facility_code)
    encounter_id = await old_encounter(clinical, patient_id, facility_code, years_ago=40)
    classified = await retention.ClassifyRecord(
        retention_pb2.ClassifyRecordRequest(
            request_id=str(uuid.uuid4()),
            resource_type=records_pb2.RESOURCE_TYPE_ENCOUNTER,
            resource_id=encounter_id,
            retention_class=retention_pb2.RETENTION_CLASS_PERMANENT,
            reason="Medical incident file (synthetic)",
        ),
        metadata=OFFICER,
    )
    assert classified.retention.effective_class == retention_pb2.RETENTION_CLASS_PERMANENT
    assert classified.retention.disposal_date == ""
    # A lower class never lowers it.
    lowered = await retention.ClassifyRecord(
        retention_pb2.ClassifyRecordRequest(
            request_id=str(uuid.uuid4()),
            resource_type=records_pb2.RESOURCE_TYPE_ENCOUNTER,
            resource_id=encounter_id,
            retention_class=retention_pb2.RETENTION_CLASS_SPECIAL_20_YEARS,
            reason="Mistake (synthetic)",
        ),
        metadata=OFFICER,
    )
    assert lowered.retention.effective_class == retention_pb2.RETENTION_CLASS_PERMANENT
    due = await retention.ListDueRecords(
        retention_pb2.ListDueRecordsRequest(as_of=today(), page_size=500), metadata=OFFICER
    )
    assert encounter_id not in {e.episode_key for e in due.episodes}


async def test_a_disposal_a_crash_interrupted_resumes_and_keeps_what_a_later_death_raised(
    clinical: Any, retention: Any, records: Any, mongo: Any, facility_code: str
) -> None:
    first = await clinical.patient(facility_code)
    first_stay = await old_encounter(clinical, first, facility_code, years_ago=14)
    first_condition = await old_condition(clinical, first, facility_code, first_stay, "I10", years_ago=14)
    second = await clinical.patient(facility_code)
    second_stay = await old_encounter(clinical, second, facility_code, years_ago=13)
    dying = await clinical.patient(facility_code)
    dying_stay = await old_encounter(clinical, dying, facility_code, years_ago=13)

    disposal = (
        await retention.RequestDisposal(
            retention_pb2.RequestDisposalRequest(
                request_id=str(uuid.uuid4()), as_of=today(), reason="Resumed run (synthetic)"
            ),
            metadata=OFFICER,
        )
    ).disposal
    listed = {e.episode_key for e in disposal.episodes}
    assert {first_stay, second_stay, dying_stay} <= listed

    # After the listing, the third patient dies: their old stay is now kept 30 years.
    await clinical.records.CreateEncounter(
        records_pb2.CreateEncounterRequest(
            request_id=str(uuid.uuid4()),
            patient_id=dying,
            facility_code=facility_code,
            encounter_class=records_pb2.ENCOUNTER_CLASS_EMERGENCY,
            status=records_pb2.ENCOUNTER_STATUS_FINISHED,
            start_time=clinical.timestamp(-7200),
            end_time=clinical.timestamp(-3600),
            discharge_disposition="exp",
        ),
        metadata=DOCTOR,
    )

    # A run that crashed half way: approved, the first episode decided and its condition
    # tombstoned, but nothing erased yet (the state an interrupted ApproveDisposal leaves).
    db = mongo["emr_records"]
    now = datetime.now(UTC)
    await db["disposal_approvals"].insert_one(
        {"_id": disposal.disposal_id, "approved_by": "dpo-synthetic-02", "approved_at": now}
    )
    stay = await db["resources"].find_one({"_id": first_stay})
    items = [
        {
            "resource_type": kind,
            "resource_id": resource_id,
            "patient_id": first,
            "encounter_id": encounter_id,
            "facility_code": stay["facility_code"],
        }
        for kind, resource_id, encounter_id in (
            ("Encounter", first_stay, ""),
            ("Condition", first_condition, first_stay),
        )
    ]
    await db["disposal_decisions"].insert_one(
        {
            "_id": f"{disposal.disposal_id}:{first_stay}",
            "dispose": True,
            "retention_class": "10y",
            "clock_start": stay["content"]["end_time"],
            "records": items,
        }
    )
    await db["disposed_records"].insert_one(
        {
            **items[1],
            "_id": first_condition,
            "retention_class": "10y",
            "clock_start": stay["content"]["end_time"],
            "disposal_id": disposal.disposal_id,
            "disposed_at": now,
        }
    )
    interrupted = await retention.GetDisposal(
        retention_pb2.GetDisposalRequest(disposal_id=disposal.disposal_id), metadata=OFFICER
    )
    assert interrupted.disposal.status == retention_pb2.DISPOSAL_STATUS_IN_PROGRESS

    resumed = (
        await retention.ApproveDisposal(
            retention_pb2.ApproveDisposalRequest(disposal_id=disposal.disposal_id), metadata=SECOND_OFFICER
        )
    ).disposal
    assert resumed.status == retention_pb2.DISPOSAL_STATUS_COMPLETED
    disposed = {r.resource_id for r in resumed.certificate.disposed}
    kept = {r.resource_id for r in resumed.certificate.kept}
    assert {first_stay, first_condition, second_stay} <= disposed
    assert dying_stay in kept and dying_stay not in disposed
    for resource_id in (first_stay, first_condition, second_stay):
        assert await db["resources"].find_one({"_id": resource_id}) is None
        assert await db["resource_versions"].count_documents({"resource_id": resource_id}) == 0
        assert await db["disposed_records"].count_documents({"_id": resource_id}) == 1
    assert (
        await records.GetEncounter(records_pb2.GetEncounterRequest(encounter_id=dying_stay))
    ).encounter.reason
