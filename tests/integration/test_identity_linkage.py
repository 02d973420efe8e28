"""Matching, review, merge and the link log through the real identity service and FerretDB."""

from __future__ import annotations

import random
import unicodedata
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from emr.identity.v1 import identity_pb2, identity_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from pymongo import AsyncMongoClient, monitoring

from emr_devstack.stack import DEV_FIELD_ENCRYPTION, Stack
from emr_devstack.tokens import caller_metadata
from emr_identity.repository import COLLECTIONS, PatientChangeRepository, PersonRepository
from emr_identity.service import IdentityService
from emr_identity.servicer import PatientIdentityServicer
from emr_identity.sharing_repository import COLLECTIONS as SHARING_COLLECTIONS
from emr_identity.sharing_repository import SharingRepository
from emr_identity.sharing_service import SharingService
from emr_identity.synthetic import FEMALE_GIVENS, FEMALE_MIDDLES, REMAINING_SURNAMES
from emr_runtime.fieldcrypt import FieldCrypt
from emr_runtime.keys import REQUEST_FINGERPRINT, page_token_purpose
from emr_runtime.paging import PageTokens

pb = identity_pb2


def unique_person(facility_code: str, **overrides: Any) -> pb.RegisterPatientRequest:
    """A synthetic person unlikely to resemble anyone else registered in this test session."""
    rng = random.Random(uuid.uuid4().int)
    fields: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "full_name": " ".join(
            (rng.choice(REMAINING_SURNAMES), rng.choice(FEMALE_MIDDLES[4:]), rng.choice(FEMALE_GIVENS))
        ),
        "birth_date": f"{rng.randint(1940, 2005)}-{rng.randint(1, 12):02d}-{rng.randint(13, 28):02d}",
        "sex": pb.SEX_FEMALE,
        "facility_code": facility_code,
        "phone": f"09{rng.randrange(10**8):08d}",
        "province_code": "79",
    }
    fields.update(overrides)
    return pb.RegisterPatientRequest(**fields)


def without_diacritics(name: str) -> str:
    """A name as typed without a Vietnamese keyboard (case kept)."""
    decomposed = unicodedata.normalize("NFD", name.replace("Đ", "D").replace("đ", "d"))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def again(
    request: pb.RegisterPatientRequest, facility_code: str, **changes: Any
) -> pb.RegisterPatientRequest:
    """The same person registered at another facility (a new request)."""
    copy = pb.RegisterPatientRequest()
    copy.CopyFrom(request)
    copy.request_id = str(uuid.uuid4())
    copy.facility_code = facility_code
    for name, value in changes.items():
        if name == "identifiers":
            del copy.identifiers[:]
            copy.identifiers.extend(value)
        else:
            setattr(copy, name, value)
    return copy


async def test_nfd_registration_of_an_nfc_person_links_to_it(identity: Any, facility_code: str) -> None:
    request = unique_person(facility_code)
    while unicodedata.normalize("NFD", request.full_name) == request.full_name:
        request = unique_person(facility_code)  # a name without diacritics has no other NFD form
    first = await identity.RegisterPatient(request)
    assert first.outcome == pb.REGISTRATION_OUTCOME_CREATED
    nfd_name = unicodedata.normalize("NFD", first.patient.full_name)
    assert nfd_name != first.patient.full_name
    second = await identity.RegisterPatient(
        again(
            unique_person(facility_code),
            "99001",
            full_name=nfd_name,
            birth_date=first.patient.birth_date,
            phone=first.patient.phone,
        )
    )
    assert second.outcome == pb.REGISTRATION_OUTCOME_LINKED_EXISTING
    assert second.patient.patient_id == first.patient.patient_id
    fields = {c.field: c.level for c in second.candidates[0].contributions}
    assert fields["given_name"] == "exact" and fields["birth_date"] == "exact"
    view = await identity.GetPatient(pb.GetPatientRequest(patient_id=first.patient.patient_id))
    assert len(view.record_ids) == 2


async def test_day_month_swap_without_diacritics_links(identity: Any, facility_code: str) -> None:
    first = await identity.RegisterPatient(unique_person(facility_code))
    year, month, day = first.patient.birth_date.split("-")
    folded = without_diacritics(first.patient.full_name)
    request = again(unique_person(facility_code), "99002", full_name=folded, phone=first.patient.phone)
    swapped = await identity.MatchPatient(
        pb.MatchPatientRequest(
            demographics=again(request, "99002", birth_date=f"{year}-{int(month):02d}-{day}")
        )
    )
    assert swapped.decision == pb.MATCH_DECISION_LINK
    assert swapped.candidates[0].patient_id == first.patient.patient_id


async def test_twins_with_one_phone_and_birth_date_are_never_linked(
    identity: Any, facility_code: str
) -> None:
    """Twins share family and middle name, birth date, phone and province; a different given name
    sends the second to review at most, never onto the first."""
    first = await identity.RegisterPatient(unique_person(facility_code))
    family, middle, given = first.patient.full_name.rsplit(" ", 2)[-3:]
    sibling = next(name for name in FEMALE_GIVENS if name != given and name[0] != given[0])
    second = await identity.RegisterPatient(
        again(
            unique_person(facility_code),
            "99003",
            full_name=f"{family} {middle} {sibling}",
            birth_date=first.patient.birth_date,
            phone=first.patient.phone,
        )
    )
    assert second.outcome in (pb.REGISTRATION_OUTCOME_CREATED, pb.REGISTRATION_OUTCOME_REVIEW_REQUIRED)
    assert second.patient.patient_id != first.patient.patient_id


async def test_review_then_different_persons_is_never_proposed_again(
    identity: Any, facility_code: str
) -> None:
    first = await identity.RegisterPatient(unique_person(facility_code, phone=""))
    year = first.patient.birth_date[:4]
    # Same rare name, another birth date in the same year, no phone or card: worth a human look.
    similar = again(
        first_request := unique_person(facility_code, phone=""),
        "99003",
        full_name=first.patient.full_name,
        birth_date=f"{year}-01-05",
    )
    assert first_request.phone == ""
    second = await identity.RegisterPatient(similar)
    assert second.outcome == pb.REGISTRATION_OUTCOME_REVIEW_REQUIRED
    assert second.patient.patient_id != first.patient.patient_id
    assert [c.patient_id for c in second.candidates] == [first.patient.patient_id]
    assert second.review_task_id

    open_ids = await all_open_review_task_ids(identity)
    assert second.review_task_id in open_ids

    resolve = pb.ResolveReviewTaskRequest(
        request_id=str(uuid.uuid4()),
        review_task_id=second.review_task_id,
        resolution=pb.REVIEW_RESOLUTION_DIFFERENT_PERSONS,
        reason="different mothers' names on file",
    )
    resolved = await identity.ResolveReviewTask(resolve)
    assert resolved.patient.patient_id == second.patient.patient_id
    assert await identity.ResolveReviewTask(resolve) == resolved  # repeated request_id
    assert second.review_task_id not in await all_open_review_task_ids(identity)

    # Matching on behalf of the second person never proposes the first again...
    on_behalf = await identity.MatchPatient(
        pb.MatchPatientRequest(demographics=similar, patient_id=second.patient.patient_id)
    )
    assert first.patient.patient_id not in [c.patient_id for c in on_behalf.candidates]
    # ...while anonymous matching still sees the resemblance (the memory is per pair, not global).
    anonymous = await identity.MatchPatient(pb.MatchPatientRequest(demographics=similar))
    assert first.patient.patient_id in [c.patient_id for c in anonymous.candidates]

    history = await identity.GetPersonHistory(
        pb.GetPersonHistoryRequest(patient_id=second.patient.patient_id)
    )
    kinds = [e.kind for e in history.events]
    assert kinds[0] == pb.LINK_EVENT_KIND_CREATED
    assert pb.LINK_EVENT_KIND_REVIEW_OPENED in kinds
    rejected = [e for e in history.events if e.kind == pb.LINK_EVENT_KIND_REJECTED]
    assert [e.other_patient_id for e in rejected] == [first.patient.patient_id]


async def all_open_review_task_ids(identity: Any) -> set[str]:
    found: set[str] = set()
    token = ""
    while True:
        page = await identity.ListReviewTasks(pb.ListReviewTasksRequest(page_size=5, page_token=token))
        assert len(page.review_tasks) <= 5
        found.update(t.review_task_id for t in page.review_tasks)
        assert all(t.open for t in page.review_tasks)
        token = page.next_page_token
        if not token:
            return found


async def test_merge_later_registration_then_unmerge_restores_both(identity: Any, facility_code: str) -> None:
    survivor = (await identity.RegisterPatient(unique_person(facility_code))).patient
    merged = (await identity.RegisterPatient(unique_person(facility_code))).patient
    merge = pb.MergePatientsRequest(
        request_id=str(uuid.uuid4()),
        survivor_patient_id=survivor.patient_id,
        merged_patient_id=merged.patient_id,
        reason="same person, confirmed at the desk",
    )
    merge_response = await identity.MergePatients(merge)
    assert merge_response.patient.patient_id == survivor.patient_id
    assert await identity.MergePatients(merge) == merge_response  # repeated request_id

    followed = await identity.GetPatient(pb.GetPatientRequest(patient_id=merged.patient_id))
    assert followed.patient.patient_id == survivor.patient_id
    assert followed.merged_from_patient_id == merged.patient_id
    assert len(followed.record_ids) == 2

    # A later change on the merged side: the person registers again at another facility and the
    # registration links through the merge to the survivor.
    later = await identity.RegisterPatient(
        again(
            unique_person(facility_code),
            "99004",
            full_name=merged.full_name,
            birth_date=merged.birth_date,
            phone=merged.phone,
        )
    )
    assert later.patient.patient_id == survivor.patient_id
    assert (
        len((await identity.GetPatient(pb.GetPatientRequest(patient_id=survivor.patient_id))).record_ids) == 3
    )

    # A later update of the survivor's demographics, with optimistic concurrency.
    update = pb.UpdatePatientRequest(
        request_id=str(uuid.uuid4()),
        patient_id=survivor.patient_id,
        expected_version=1,
        full_name=survivor.full_name,
        birth_date=survivor.birth_date,
        sex=survivor.sex,
        phone="0281234567",  # 028 (Hồ Chí Minh City) + 7 digits is one digit short
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.UpdatePatient(update)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    update.phone = "02812345678"
    updated = await identity.UpdatePatient(update)
    assert updated.patient.version == 2 and updated.patient.phone == "02812345678"
    assert await identity.UpdatePatient(update) == updated  # repeated request_id
    stale = pb.UpdatePatientRequest()
    stale.CopyFrom(update)
    stale.request_id = str(uuid.uuid4())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.UpdatePatient(stale)
    assert caught.value.code() == grpc.StatusCode.ABORTED
    survivor = updated.patient

    unmerge = pb.UnmergePatientsRequest(
        request_id=str(uuid.uuid4()), merged_patient_id=merged.patient_id, reason="merged in error"
    )
    unmerged = await identity.UnmergePatients(unmerge)
    assert await identity.UnmergePatients(unmerge) == unmerged
    assert unmerged.restored == merged
    restored = await identity.GetPatient(pb.GetPatientRequest(patient_id=merged.patient_id))
    assert restored.patient == merged and restored.merged_from_patient_id == ""
    assert len(restored.record_ids) == 1
    kept = await identity.GetPatient(pb.GetPatientRequest(patient_id=survivor.patient_id))
    assert kept.patient == survivor and list(kept.merged_patient_ids) == []
    assert len(kept.record_ids) == 2  # its own registration and the later one it received

    history = await identity.GetPersonHistory(pb.GetPersonHistoryRequest(patient_id=merged.patient_id))
    assert [e.kind for e in history.events] == [
        pb.LINK_EVENT_KIND_CREATED,
        pb.LINK_EVENT_KIND_MERGED,
        pb.LINK_EVENT_KIND_UNMERGED,
    ]
    assert history.events[1].reason == "same person, confirmed at the desk"


async def test_search_by_identifier_name_and_phone(identity: Any, facility_code: str) -> None:
    request = unique_person(
        facility_code, identifiers=[pb.Identifier(system=pb.IDENTIFIER_SYSTEM_BHYT, value="DN4790123456789")]
    )
    person = (await identity.RegisterPatient(request)).patient
    year = int(person.birth_date[:4])
    by_new_bhyt = await identity.SearchPatients(
        pb.SearchPatientsRequest(
            identifier=pb.Identifier(system=pb.IDENTIFIER_SYSTEM_BHYT, value="0123456789")
        )
    )
    assert person.patient_id in [p.patient_id for p in by_new_bhyt.patients]
    folded = without_diacritics(person.full_name)
    loose = await identity.SearchPatients(pb.SearchPatientsRequest(full_name=folded, birth_year=year))
    assert [p.patient_id for p in loose.patients] == [person.patient_id]
    exact = await identity.SearchPatients(
        pb.SearchPatientsRequest(full_name=folded, birth_year=year, exact_name=True)
    )
    assert folded == person.full_name or list(exact.patients) == []
    by_phone = await identity.SearchPatients(pb.SearchPatientsRequest(phone="+84 " + person.phone[1:]))
    assert person.patient_id in [p.patient_id for p in by_phone.patients]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (
            {"identifiers": [pb.Identifier(system=pb.IDENTIFIER_SYSTEM_CCCD, value="079092000001")]},
            "identifiers[0].value",
        ),
        (
            {"identifiers": [pb.Identifier(system=pb.IDENTIFIER_SYSTEM_CCCD, value="003192000001")]},
            "identifiers[0].value",
        ),
        ({"phone": "12345"}, "phone"),
        ({"province_code": "03"}, "province_code"),
    ],
)
async def test_inconsistent_demographics_are_rejected(
    identity: Any, mongo: Any, facility_code: str, bad_fields: Any, changes: dict[str, Any], field: str
) -> None:
    request = unique_person(facility_code, birth_date="1992-03-14", **changes)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.RegisterPatient(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(caught.value) == [field]
    assert (
        await mongo["emr_identity"]["persons"].count_documents({"registering_facility_code": facility_code})
        == 0
    )


async def test_override_accepts_a_known_inconsistent_cccd(identity: Any, facility_code: str) -> None:
    card = [pb.Identifier(system=pb.IDENTIFIER_SYSTEM_CCCD, value=f"079092{uuid.uuid4().int % 10**6:06d}")]
    request = unique_person(
        facility_code, birth_date="1992-03-14", identifiers=card, accept_inconsistent_cccd=True
    )
    response = await identity.RegisterPatient(request)
    assert response.outcome == pb.REGISTRATION_OUTCOME_CREATED


# --- identity without takeover: conflicts, facility records, proposals ------------------------------


def registrar(facility_code: str) -> list[tuple[str, str]]:
    return caller_metadata(f"registrar-{facility_code}", facility_code, "TREATMENT", role="registrar")


def with_card(facility_code: str) -> pb.RegisterPatientRequest:
    """A synthetic (female) person with a CCCD consistent with their birth date."""
    request = unique_person(facility_code)
    century_and_sex = "1" if request.birth_date < "2000" else "3"
    value = f"079{century_and_sex}{request.birth_date[2:4]}{uuid.uuid4().int % 10**6:06d}"
    request.identifiers.append(pb.Identifier(system=pb.IDENTIFIER_SYSTEM_CCCD, value=value))
    return request


async def open_task(identity: Any, task_id: str) -> Any:
    token = ""
    while True:
        page = await identity.ListReviewTasks(pb.ListReviewTasksRequest(page_size=100, page_token=token))
        found = [t for t in page.review_tasks if t.review_task_id == task_id]
        if found:
            return found[0]
        token = page.next_page_token
        assert token, f"{task_id} is not open"


async def test_an_identifier_conflict_is_reviewed_like_a_likely_duplicate(
    identity: Any, facility_code: str
) -> None:
    first = await identity.RegisterPatient(with_card(facility_code))
    card = list(first.patient.identifiers)
    conflicting = again(
        unique_person(facility_code), "99021", identifiers=card, birth_date=first.patient.birth_date
    )
    kept_apart = await identity.RegisterPatient(conflicting)
    assert kept_apart.outcome == pb.REGISTRATION_OUTCOME_IDENTIFIER_CONFLICT
    assert kept_apart.patient.patient_id != first.patient.patient_id and not kept_apart.candidates
    assert await identity.RegisterPatient(conflicting) == kept_apart  # repeated request_id
    task = await open_task(identity, kept_apart.review_task_id)
    assert task.kind == pb.REVIEW_TASK_KIND_IDENTIFIER_CONFLICT and task.facility_code == "99021"
    assert [c.patient_id for c in task.candidates] == [first.patient.patient_id]
    assert task.patient_id == kept_apart.patient.patient_id

    resolve = pb.ResolveReviewTaskRequest(
        request_id=str(uuid.uuid4()),
        review_task_id=task.review_task_id,
        resolution=pb.REVIEW_RESOLUTION_ACCEPT_CHANGE,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.ResolveReviewTask(resolve)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    resolve.resolution = pb.REVIEW_RESOLUTION_SAME_PERSON
    merged = await identity.ResolveReviewTask(resolve)  # e.g. the person changed name: a steward decides
    assert merged.patient.patient_id == first.patient.patient_id
    view = await identity.GetPatient(pb.GetPatientRequest(patient_id=kept_apart.patient.patient_id))
    assert view.merged_from_patient_id == kept_apart.patient.patient_id and len(view.record_ids) == 2


async def test_a_facility_alone_updates_the_person_through_its_own_record(identity: Any) -> None:
    facility = f"UA{uuid.uuid4().hex[:3].upper()}"
    registered = await identity.RegisterPatient(unique_person(facility), metadata=registrar(facility))
    patient = registered.patient
    update = pb.UpdatePatientRequest(
        request_id=str(uuid.uuid4()),
        patient_id=patient.patient_id,
        expected_version=patient.version,
        full_name=patient.full_name,
        birth_date=patient.birth_date,
        sex=patient.sex,
        phone="0912000444",
    )
    updated = await identity.UpdatePatient(update, metadata=registrar(facility))
    assert (updated.patient.version, updated.patient.phone, updated.change_proposed) == (
        2,
        "0912000444",
        False,
    )
    assert (
        await identity.UpdatePatient(update, metadata=registrar(facility)) == updated
    )  # repeated request_id
    stale = pb.UpdatePatientRequest()
    stale.CopyFrom(update)
    stale.request_id = str(uuid.uuid4())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.UpdatePatient(stale, metadata=registrar(facility))
    assert caught.value.code() == grpc.StatusCode.ABORTED
    # The only registrant: the person itself follows (as the platform sees it).
    person = (await identity.GetPatient(pb.GetPatientRequest(patient_id=patient.patient_id))).patient
    assert (person.phone, person.version) == ("0912000444", 2)
    history = await identity.GetPersonHistory(pb.GetPersonHistoryRequest(patient_id=patient.patient_id))
    kinds = [e.kind for e in history.events]
    assert pb.LINK_EVENT_KIND_UPDATED in kinds and pb.LINK_EVENT_KIND_FACILITY_RECORD_UPDATED in kinds


async def test_a_proposed_change_waits_for_a_reviewer(identity: Any) -> None:
    suffix = uuid.uuid4().hex[:3].upper()
    first_facility, second_facility = f"UB{suffix}", f"UC{suffix}"
    first = await identity.RegisterPatient(with_card(first_facility), metadata=registrar(first_facility))
    shared = again(unique_person(first_facility), second_facility)
    shared.full_name, shared.birth_date = first.patient.full_name, first.patient.birth_date
    shared.identifiers.extend(first.patient.identifiers)
    second = await identity.RegisterPatient(shared, metadata=registrar(second_facility))
    assert second.outcome == pb.REGISTRATION_OUTCOME_EXISTING
    person_id = first.patient.patient_id

    async def propose(full_name: str, version: int, phone: str = "") -> Any:
        return await identity.UpdatePatient(
            pb.UpdatePatientRequest(
                request_id=str(uuid.uuid4()),
                patient_id=person_id,
                expected_version=version,
                full_name=full_name,
                birth_date=first.patient.birth_date,
                sex=first.patient.sex,
                phone=phone,
            ),
            metadata=registrar(second_facility),
        )

    # Only the phone changes: the second facility's own record, no proposal, the person untouched.
    local = await propose(first.patient.full_name, 1, phone="0912000555")
    assert (local.change_proposed, local.review_task_id, local.patient.version) == (False, "", 2)
    renamed = await propose("Đinh Thị Mới", 2)
    assert renamed.change_proposed and renamed.patient.full_name == "Đinh Thị Mới"
    person = (await identity.GetPatient(pb.GetPatientRequest(patient_id=person_id))).patient
    assert (person.full_name, person.phone, person.version) == (
        first.patient.full_name,
        first.patient.phone,
        1,
    )
    # The first facility still reads its own registration.
    own = await identity.GetPatient(
        pb.GetPatientRequest(patient_id=person_id), metadata=registrar(first_facility)
    )
    assert own.patient.full_name == first.patient.full_name and own.patient.phone == first.patient.phone

    task = await open_task(identity, renamed.review_task_id)
    assert task.kind == pb.REVIEW_TASK_KIND_DEMOGRAPHICS_CHANGE and list(task.candidates) == []
    accept = pb.ResolveReviewTaskRequest(
        request_id=str(uuid.uuid4()),
        review_task_id=task.review_task_id,
        resolution=pb.REVIEW_RESOLUTION_ACCEPT_CHANGE,
        reason="marriage certificate seen",
    )
    accepted = await identity.ResolveReviewTask(accept)
    assert await identity.ResolveReviewTask(accept) == accepted  # repeated request_id
    assert (accepted.patient.full_name, accepted.patient.phone, accepted.patient.version) == (
        "Đinh Thị Mới",
        first.patient.phone,
        2,
    )

    rejected_change = await propose("Đinh Thị Sai", 3)
    reject = pb.ResolveReviewTaskRequest(
        request_id=str(uuid.uuid4()),
        review_task_id=rejected_change.review_task_id,
        resolution=pb.REVIEW_RESOLUTION_REJECT_CHANGE,
    )
    kept = await identity.ResolveReviewTask(reject)
    assert (kept.patient.full_name, kept.patient.version) == ("Đinh Thị Mới", 2)
    history = await identity.GetPersonHistory(pb.GetPersonHistoryRequest(patient_id=person_id))
    assert [e.kind for e in history.events].count(pb.LINK_EVENT_KIND_CHANGE_REJECTED) == 1


# --- no RPC scans a collection ------------------------------------------------------------------
# No identity RPC scans a collection: every query each RPC sends to the database is explained on
# that database, which must serve it from an index.
#
# The RPCs run on a real gRPC server in this process (the identity servicer, service and repository
# over the test's FerretDB), so that a PyMongo command listener sees every command each RPC issues.
# On FerretDB 1.x (SQLite) explain reports ``filterPushdown`` (whether the filter reached SQL at all;
# FerretDB filters anything else by reading every document) and SQLite's plan (``SCAN <table>`` for
# a full scan, ``SEARCH <table> USING INDEX`` for an index lookup). On MongoDB, the winning plan must
# not be a COLLSCAN.
SCAN_CHECK_DATABASE = "emr_identity_scan_check"
# Commands that select documents by a filter, and where the filter is.
FILTERED = {"find": "filter", "findAndModify": "query", "update": "updates", "delete": "deletes"}
# Commands that need no filter: an insert is checked against the unique _id index.
UNFILTERED = {"insert"}


class Commands(monitoring.CommandListener):
    """Every command sent while an RPC runs, by RPC name."""

    def __init__(self) -> None:
        self.rpc = ""
        self.seen: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.rpc and event.database_name == SCAN_CHECK_DATABASE:
            self.seen[self.rpc].append((event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def filters_of(name: str, command: dict[str, Any]) -> list[dict[str, Any]]:
    key = FILTERED[name]
    if key in ("updates", "deletes"):
        return [dict(statement["q"]) for statement in command[key]]
    return [dict(command[key])]


async def explained(db: Any, collection: str, query: dict[str, Any]) -> Any:
    """The database's plan for ``query``. SQLite plans an EXPLAIN with the schema its pooled
    connection last loaded, and a connection loads a newer one (with an index added since) at its
    next real statement; so each attempt first runs the query for real."""
    for _ in range(5):
        await db[collection].find_one(query)
        plan = await db.command("explain", {"find": collection, "filter": query}, verbosity="queryPlanner")
        if not any("detail=SCAN" in str(step) for step in plan.get("queryPlanner", {}).get("Plan", [])):
            break
    return plan


async def sharing_rpcs(rpc: Any, patient_id: str, facility_code: str) -> None:
    """Grants, a referral, a revocation, an emergency access and its review, and the access check."""
    end = Timestamp()
    end.FromDatetime(datetime.now(UTC) + timedelta(days=30))
    granted = await rpc(
        "RecordSharingGrant",
        pb.RecordSharingGrantRequest(
            request_id=str(uuid.uuid4()),
            patient_id=patient_id,
            facility_code=facility_code,
            purpose=pb.SHARING_PURPOSE_TREATMENT,
            evidence=pb.CONSENT_EVIDENCE_SIGNED_FORM,
            evidence_reference="CF-scan-1",
            end_time=end,
        ),
    )
    await rpc(
        "RecordReferral",
        pb.RecordReferralRequest(
            request_id=str(uuid.uuid4()),
            patient_id=patient_id,
            facility_code=facility_code,
            receiving_facility_code="99021",
            end_time=end,
        ),
    )
    await rpc(
        "RevokeSharingGrant",
        pb.RevokeSharingGrantRequest(
            request_id=str(uuid.uuid4()),
            sharing_grant_id=granted.sharing_grant.sharing_grant_id,
            facility_code=facility_code,
        ),
    )
    assert (
        len(
            (
                await rpc("ListSharingGrants", pb.ListSharingGrantsRequest(patient_id=patient_id))
            ).sharing_grants
        )
        == 2
    )
    declared = await rpc(
        "DeclareEmergencyAccess",
        pb.DeclareEmergencyAccessRequest(
            request_id=str(uuid.uuid4()),
            patient_id=patient_id,
            facility_code="99022",
            reason=pb.EMERGENCY_REASON_URGENT_CARE,
            justification="Synthetic emergency for the scan check",
        ),
    )
    await rpc("ListEmergencyAccesses", pb.ListEmergencyAccessesRequest(unreviewed_only=True))
    await rpc(
        "ReviewEmergencyAccess",
        pb.ReviewEmergencyAccessRequest(
            request_id=str(uuid.uuid4()),
            emergency_access_id=declared.emergency_access.emergency_access_id,
            outcome=pb.EMERGENCY_REVIEW_OUTCOME_JUSTIFIED,
        ),
    )
    checked = await rpc("CheckAccess", pb.CheckAccessRequest(patient_id=patient_id, facility_code="99021"))
    assert list(checked.visible_facility_codes) == [facility_code]


async def test_no_identity_rpc_scans_a_collection(stack: Stack, facility_code: str) -> None:
    commands = Commands()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        stack.effective_mongodb_uri, tz_aware=True, event_listeners=[commands]
    )
    db = client[SCAN_CHECK_DATABASE]
    for collection in {*COLLECTIONS, *SHARING_COLLECTIONS}:
        await db.drop_collection(collection)
    crypt = FieldCrypt.from_variables(DEV_FIELD_ENCRYPTION)  # the stack's keys
    persons = PersonRepository(db, crypt)
    await persons.create_collections()
    sharing = SharingRepository(db, crypt)
    await sharing.create_collections()
    stack.index_ferretdb_ids()  # what the stack does after each service start
    server = grpc.aio.server()
    identity = IdentityService(
        persons,
        PatientChangeRepository(db),
        timedelta(seconds=5),
        PageTokens(crypt.derived_key(page_token_purpose("identity"))),
    )
    identity_pb2_grpc.add_PatientIdentityServiceServicer_to_server(
        PatientIdentityServicer(
            identity,
            SharingService(identity, persons, sharing, timedelta(hours=4)),
            crypt.derived_key(REQUEST_FINGERPRINT),
        ),
        server,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = identity_pb2_grpc.PatientIdentityServiceStub(channel)

    async def rpc(name: str, request: Any) -> Any:
        commands.rpc = name
        try:
            return await getattr(stub, name)(request, timeout=30)
        finally:
            commands.rpc = ""

    try:
        cccd = pb.Identifier(system=pb.IDENTIFIER_SYSTEM_CCCD, value=f"079192{uuid.uuid4().int % 10**6:06d}")
        first_request = unique_person(facility_code, phone="", birth_date="1992-03-14", identifiers=[cccd])
        first = await rpc("RegisterPatient", first_request)
        assert first.outcome == pb.REGISTRATION_OUTCOME_CREATED
        same_card = await rpc("RegisterPatient", again(first_request, "99011"))
        assert same_card.outcome == pb.REGISTRATION_OUTCOME_EXISTING
        linked = await rpc(
            "RegisterPatient",
            again(first_request, "99012", identifiers=[], full_name=first.patient.full_name),
        )
        assert linked.outcome == pb.REGISTRATION_OUTCOME_LINKED_EXISTING
        similar = again(
            unique_person(facility_code, phone=""),
            "99013",
            full_name=first.patient.full_name,
            birth_date="1992-01-05",
        )
        review = await rpc("RegisterPatient", similar)
        assert review.outcome == pb.REGISTRATION_OUTCOME_REVIEW_REQUIRED
        await rpc("MatchPatient", pb.MatchPatientRequest(demographics=similar))
        await rpc("GetPatient", pb.GetPatientRequest(patient_id=first.patient.patient_id))
        await rpc(
            "CheckRegistration",
            pb.CheckRegistrationRequest(patient_id=first.patient.patient_id, facility_code=facility_code),
        )
        await sharing_rpcs(rpc, first.patient.patient_id, facility_code)
        await rpc("SearchPatients", pb.SearchPatientsRequest(identifier=cccd))
        await rpc(
            "SearchPatients", pb.SearchPatientsRequest(full_name=first.patient.full_name, birth_year=1992)
        )
        await rpc("SearchPatients", pb.SearchPatientsRequest(phone="0912345678"))
        await rpc("ListReviewTasks", pb.ListReviewTasksRequest(page_size=5))
        await rpc(
            "ResolveReviewTask",
            pb.ResolveReviewTaskRequest(
                request_id=str(uuid.uuid4()),
                review_task_id=review.review_task_id,
                resolution=pb.REVIEW_RESOLUTION_DIFFERENT_PERSONS,
            ),
        )
        await rpc(
            "UpdatePatient",
            pb.UpdatePatientRequest(
                request_id=str(uuid.uuid4()),
                patient_id=first.patient.patient_id,
                expected_version=1,
                full_name=first.patient.full_name,
                birth_date=first.patient.birth_date,
                sex=first.patient.sex,
                phone="0912345678",
            ),
        )
        await rpc(
            "MergePatients",
            pb.MergePatientsRequest(
                request_id=str(uuid.uuid4()),
                survivor_patient_id=first.patient.patient_id,
                merged_patient_id=review.patient.patient_id,
                reason="test",
            ),
        )
        await rpc(
            "UnmergePatients",
            pb.UnmergePatientsRequest(
                request_id=str(uuid.uuid4()), merged_patient_id=review.patient.patient_id, reason="test"
            ),
        )
        await rpc("GetPersonHistory", pb.GetPersonHistoryRequest(patient_id=first.patient.patient_id))
        changes = await rpc("ListPatientChanges", pb.ListPatientChangesRequest(after_sequence=0, limit=100))
        # Two new persons (the other registrations found the first), an update, a merge, an unmerge.
        assert [(c.kind, c.patient_id) for c in changes.changes] == [
            (pb.PATIENT_CHANGE_KIND_REGISTERED, first.patient.patient_id),
            (pb.PATIENT_CHANGE_KIND_REGISTERED, review.patient.patient_id),
            (pb.PATIENT_CHANGE_KIND_UPDATED, first.patient.patient_id),
            (pb.PATIENT_CHANGE_KIND_MERGED, review.patient.patient_id),
            (pb.PATIENT_CHANGE_KIND_MERGE_SURVIVOR, first.patient.patient_id),
            (pb.PATIENT_CHANGE_KIND_UNMERGED, review.patient.patient_id),
            (pb.PATIENT_CHANGE_KIND_UNMERGE_SURVIVOR, first.patient.patient_id),
        ]
    finally:
        await channel.close()
        await server.stop(None)

    rpcs = {m.name for m in pb.DESCRIPTOR.services_by_name["PatientIdentityService"].methods}
    assert set(commands.seen) == rpcs  # every RPC was exercised and read the database
    for name, sent in commands.seen.items():
        for command_name, command in sent:
            assert command_name in FILTERED or command_name in UNFILTERED, (name, command_name)
            if command_name in UNFILTERED:
                continue
            collection = command[command_name]
            for query in filters_of(command_name, command):
                assert list(query) == ["_id"] and isinstance(query["_id"], str), (name, command_name, query)
                plan = await explained(db, collection, query)
                if "filterPushdown" in plan:  # FerretDB: the filter must reach SQL, and SQL an index
                    assert plan["filterPushdown"] is True, (name, collection, plan)
                    steps = [str(step) for step in plan["queryPlanner"]["Plan"]]
                    assert any("USING INDEX" in s for s in steps), (name, collection, steps)
                    assert not any("detail=SCAN" in s for s in steps), (name, collection, steps)
                else:  # MongoDB
                    assert "COLLSCAN" not in str(plan["queryPlanner"]["winningPlan"]), (name, plan)
    await client.close()
