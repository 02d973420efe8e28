"""Identity without takeover, as an attack table against the real platform: knowing a person's card
number (CCCD, BHYT) or phone must not give a facility the person, their data or a way to change
them. Each row: who attacks, with which call, and what the platform must answer.

A victim is registered at facility A for every row; B and C are other facilities (B registers
someone with the victim's card, C has nothing to do with the victim). The platform's own view of the
victim is read with the development admin channel (a platform role, which sees every facility's
data)."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from emr.audit.v1 import audit_pb2
from emr.identity.v1 import identity_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp

from emr_devstack.processes import poll_until
from emr_devstack.tokens import caller_metadata
from emr_identity.synthetic import FEMALE_GIVENS, FEMALE_MIDDLES, REMAINING_SURNAMES

OK = grpc.StatusCode.OK
DENIED = grpc.StatusCode.PERMISSION_DENIED
CCCD = pb.IDENTIFIER_SYSTEM_CCCD
BHYT = pb.IDENTIFIER_SYSTEM_BHYT
# Names of the attackers' registrations; victims get names and birth dates of their own.
OTHER_NAME = "Phạm Văn Hùng"


@dataclass(frozen=True)
class World:
    """A victim registered at facility A; B and C are facilities of this row alone."""

    identity: Any
    audit: Any
    facility_a: str
    facility_b: str
    facility_c: str
    patient_id: str
    full_name: str
    birth_date: str
    cccd: str
    bhyt: str
    phone: str

    def caller(self, role: str, facility: str) -> list[tuple[str, str]]:
        return caller_metadata(f"{role}-{facility}", facility, "TREATMENT", role=role)

    def registration(self, facility: str, **changes: Any) -> pb.RegisterPatientRequest:
        fields: dict[str, Any] = {
            "request_id": str(uuid.uuid4()),
            "full_name": self.full_name,
            "birth_date": self.birth_date,
            "sex": pb.SEX_FEMALE,
            "facility_code": facility,
            "identifiers": [pb.Identifier(system=CCCD, value=self.cccd)],
        }
        fields.update(changes)
        return pb.RegisterPatientRequest(**fields)

    async def platform_view(self) -> pb.Patient:
        found: pb.Patient = (
            await self.identity.GetPatient(pb.GetPatientRequest(patient_id=self.patient_id))
        ).patient
        return found


def fresh_number(digits: int) -> int:
    return int(uuid.uuid4().int % 10**digits)


@pytest.fixture
async def world(identity: Any, audit: Any) -> World:
    rng = random.Random(uuid.uuid4().int)
    serial = uuid.uuid4().hex[:3].upper()
    facilities = (f"TA{serial}", f"TB{serial}", f"TC{serial}")
    # A synthetic person unlike anyone else of the session (names of the synthetic population).
    full_name = " ".join(
        (rng.choice(REMAINING_SURNAMES), rng.choice(FEMALE_MIDDLES[4:]), rng.choice(FEMALE_GIVENS))
    )
    year = rng.randint(1950, 1999)
    birth_date = f"{year}-{rng.randint(1, 12):02d}-{rng.randint(13, 28):02d}"
    # CCCD: province 079, century/sex digit 1 (1900s, female), the birth year's last two digits.
    cccd = f"0791{year % 100:02d}{fresh_number(6):06d}"
    bhyt = f"DN479{fresh_number(10):010d}"
    phone = f"09{fresh_number(8):08d}"
    facility_a = facilities[0]
    registrar_a = caller_metadata(f"registrar-{facility_a}", facility_a, "TREATMENT", role="registrar")
    registered = await identity.RegisterPatient(
        pb.RegisterPatientRequest(
            request_id=str(uuid.uuid4()),
            full_name=full_name,
            birth_date=birth_date,
            sex=pb.SEX_FEMALE,
            facility_code=facility_a,
            phone=phone,
            province_code="79",
            identifiers=[pb.Identifier(system=CCCD, value=cccd), pb.Identifier(system=BHYT, value=bhyt)],
        ),
        metadata=registrar_a,
    )
    assert registered.outcome == pb.REGISTRATION_OUTCOME_CREATED
    return World(
        identity, audit, *facilities, registered.patient.patient_id, full_name, birth_date, cccd, bhyt, phone
    )


async def outcome_of(call: Awaitable[Any]) -> tuple[grpc.StatusCode, Any]:
    try:
        return OK, await call
    except grpc.aio.AioRpcError as error:
        return error.code(), None


def holds_nothing_of_the_victim(world: World, message: Any) -> None:
    """Neither the victim's id, name, phone nor BHYT appears anywhere in ``message``."""
    text = str(message)
    for secret in (world.patient_id, world.full_name, world.phone, world.bhyt[-10:]):
        assert secret not in text, secret


# --- the attacks ----------------------------------------------------------------------------------
# Each returns the status and what it observed, compared with the row's expectation; the checks
# inside are the row's details.


async def card_under_another_name(world: World) -> tuple[grpc.StatusCode, Any]:
    request = world.registration(world.facility_b, full_name=OTHER_NAME, phone="0987000111")
    code, response = await outcome_of(
        world.identity.RegisterPatient(request, metadata=world.caller("registrar", world.facility_b))
    )
    if response is None:
        return code, None
    holds_nothing_of_the_victim(world, response)
    assert response.patient.full_name == OTHER_NAME and response.patient.phone == "0987000111"
    assert list(response.candidates) == [] and response.review_task_id
    return code, pb.RegistrationOutcome.Name(response.outcome)


async def card_and_birth_date_under_another_name_then_read(world: World) -> tuple[grpc.StatusCode, Any]:
    registrar_b = world.caller("registrar", world.facility_b)
    request = world.registration(world.facility_b, full_name="Nguyễn Văn Tuấn")
    registered = await world.identity.RegisterPatient(request, metadata=registrar_b)
    assert registered.outcome == pb.REGISTRATION_OUTCOME_IDENTIFIER_CONFLICT
    return await outcome_of(
        world.identity.GetPatient(pb.GetPatientRequest(patient_id=world.patient_id), metadata=registrar_b)
    )


async def card_under_another_name_then_update_phone(world: World) -> tuple[grpc.StatusCode, Any]:
    registrar_b = world.caller("registrar", world.facility_b)
    await world.identity.RegisterPatient(
        world.registration(world.facility_b, full_name=OTHER_NAME), metadata=registrar_b
    )
    before = await world.platform_view()
    code, _ = await outcome_of(
        world.identity.UpdatePatient(
            pb.UpdatePatientRequest(
                request_id=str(uuid.uuid4()),
                patient_id=world.patient_id,
                expected_version=before.version,
                full_name=before.full_name,
                birth_date=before.birth_date,
                sex=before.sex,
                phone="0912000999",
            ),
            metadata=registrar_b,
        )
    )
    assert await world.platform_view() == before
    return code, None


async def bhyt_birth_date_and_phone_under_another_name(world: World) -> tuple[grpc.StatusCode, Any]:
    # Card, birth date and phone agree: the matcher alone would link (21+ bits) despite the name.
    request = world.registration(
        world.facility_b,
        full_name=OTHER_NAME,
        phone=world.phone,
        identifiers=[pb.Identifier(system=BHYT, value=world.bhyt)],
    )
    code, response = await outcome_of(
        world.identity.RegisterPatient(request, metadata=world.caller("registrar", world.facility_b))
    )
    if response is None:
        return code, None
    assert response.patient.patient_id != world.patient_id and list(response.candidates) == []
    return code, pb.RegistrationOutcome.Name(response.outcome)


async def card_with_the_right_name_and_birth_date(world: World) -> tuple[grpc.StatusCode, Any]:
    registrar_b = world.caller("registrar", world.facility_b)
    registered = await world.identity.RegisterPatient(
        world.registration(world.facility_b, phone="0977000222"), metadata=registrar_b
    )
    assert registered.patient.patient_id == world.patient_id
    assert registered.patient.phone == "0977000222" and registered.patient.registering_facility_code == (
        world.facility_b
    )
    assert world.phone not in str(registered) and world.bhyt not in str(registered)
    code, read = await outcome_of(
        world.identity.GetPatient(pb.GetPatientRequest(patient_id=world.patient_id), metadata=registrar_b)
    )
    if read is None:
        return code, None
    # B reads what B registered: not A's phone, not A's BHYT, not A's registration.
    assert read.patient.phone == "0977000222" and world.phone not in str(read) and world.bhyt not in str(read)
    assert [i.value for i in read.patient.identifiers] == [world.cccd]
    assert read.patient.registering_facility_code == world.facility_b and len(read.record_ids) == 1
    return code, pb.RegistrationOutcome.Name(registered.outcome)


async def rename_of_a_shared_person(world: World) -> tuple[grpc.StatusCode, Any]:
    registrar_b = world.caller("registrar", world.facility_b)
    registered = await world.identity.RegisterPatient(
        world.registration(world.facility_b), metadata=registrar_b
    )
    assert registered.outcome == pb.REGISTRATION_OUTCOME_EXISTING
    before = await world.platform_view()
    code, updated = await outcome_of(
        world.identity.UpdatePatient(
            pb.UpdatePatientRequest(
                request_id=str(uuid.uuid4()),
                patient_id=world.patient_id,
                expected_version=registered.patient.version,
                full_name=OTHER_NAME,
                birth_date=world.birth_date,
                sex=pb.SEX_MALE,
                phone="0977000333",
            ),
            metadata=registrar_b,
        )
    )
    if updated is None:
        return code, None
    assert await world.platform_view() == before  # the person is unchanged
    assert updated.review_task_id and updated.patient.full_name == OTHER_NAME
    mine = await world.identity.GetPatient(
        pb.GetPatientRequest(patient_id=world.patient_id), metadata=registrar_b
    )
    assert mine.patient.full_name == OTHER_NAME and mine.patient.phone == "0977000333"
    task = await open_review_task(world, updated.review_task_id)
    assert task.kind == pb.REVIEW_TASK_KIND_DEMOGRAPHICS_CHANGE
    assert (task.proposed_demographics.full_name, task.facility_code) == (OTHER_NAME, world.facility_b)
    return code, "proposal" if updated.change_proposed else "overwritten"


async def read_under_consent(world: World) -> tuple[grpc.StatusCode, Any]:
    registrar_b = world.caller("registrar", world.facility_b)
    await world.identity.RegisterPatient(
        world.registration(world.facility_b, phone="0977000666"), metadata=registrar_b
    )
    end = Timestamp()
    end.FromSeconds(int(time.time()) + 86400)
    await world.identity.RecordSharingGrant(
        pb.RecordSharingGrantRequest(
            request_id=str(uuid.uuid4()),
            patient_id=world.patient_id,
            facility_code=world.facility_a,
            grantee_facility_code=world.facility_b,
            purpose=pb.SHARING_PURPOSE_TREATMENT,
            evidence=pb.CONSENT_EVIDENCE_SIGNED_FORM,
            end_time=end,
        ),
        metadata=world.caller("registrar", world.facility_a),
    )
    code, read = await outcome_of(
        world.identity.GetPatient(pb.GetPatientRequest(patient_id=world.patient_id), metadata=registrar_b)
    )
    if read is None:
        return code, None
    # The patient's consent shares the person as every facility knows them: A's phone and BHYT.
    assert read.patient == await world.platform_view() and read.patient.phone == world.phone
    return code, "the person"


async def read_in_an_emergency(world: World) -> tuple[grpc.StatusCode, Any]:
    doctor_c = world.caller("doctor", world.facility_c)
    await world.identity.DeclareEmergencyAccess(
        pb.DeclareEmergencyAccessRequest(
            request_id=str(uuid.uuid4()),
            patient_id=world.patient_id,
            facility_code=world.facility_c,
            reason=pb.EMERGENCY_REASON_UNABLE_TO_CONSENT,
            justification="Synthetic: unconscious after a fall, history of allergies needed",
        ),
        metadata=doctor_c,
    )
    code, read = await outcome_of(
        world.identity.GetPatient(pb.GetPatientRequest(patient_id=world.patient_id), metadata=doctor_c)
    )
    if read is None:
        return code, None
    assert read.patient == await world.platform_view()
    return code, "the person"


async def search_by_phone_from_a_stranger(world: World) -> tuple[grpc.StatusCode, Any]:
    code, found = await outcome_of(
        world.identity.SearchPatients(
            pb.SearchPatientsRequest(phone=world.phone), metadata=world.caller("registrar", world.facility_c)
        )
    )
    return code, None if found is None else [p.patient_id for p in found.patients]


async def search_by_card_from_a_stranger(world: World) -> tuple[grpc.StatusCode, Any]:
    code, found = await outcome_of(
        world.identity.SearchPatients(
            pb.SearchPatientsRequest(identifier=pb.Identifier(system=CCCD, value=world.cccd)),
            metadata=world.caller("doctor", world.facility_c),
        )
    )
    return code, None if found is None else [p.patient_id for p in found.patients]


async def search_by_phone_from_the_victims_facility(world: World) -> tuple[grpc.StatusCode, Any]:
    code, found = await outcome_of(
        world.identity.SearchPatients(
            pb.SearchPatientsRequest(phone=world.phone), metadata=world.caller("nurse", world.facility_a)
        )
    )
    if found is None:
        return code, None
    (patient,) = found.patients
    assert patient.patient_id == world.patient_id and patient.full_name == world.full_name
    assert patient.phone == "******" + world.phone[-4:]
    values = {i.system: i.value for i in patient.identifiers}
    assert values == {CCCD: "********" + world.cccd[-4:], BHYT: "*" * 11 + world.bhyt[-4:]}
    report = await access_report_with_search(world)
    assert [(a.facility_code, a.resource_type) for a in report] == [(world.facility_a, "Patient")]
    return code, "masked"


async def match_from_a_stranger(world: World) -> tuple[grpc.StatusCode, Any]:
    demographics = world.registration(world.facility_c, phone=world.phone, identifiers=[])
    code, matched = await outcome_of(
        world.identity.MatchPatient(
            pb.MatchPatientRequest(demographics=demographics),
            metadata=world.caller("registrar", world.facility_c),
        )
    )
    if matched is None:
        return code, None
    assert list(matched.candidates) == []  # the victim is left out...
    return code, pb.MatchDecision.Name(matched.decision)  # ...the decision stays


async def search_without_facility_claim(world: World) -> tuple[grpc.StatusCode, Any]:
    return await outcome_of(
        world.identity.SearchPatients(
            pb.SearchPatientsRequest(phone=world.phone),
            metadata=caller_metadata("dr-nowhere", "", role="doctor"),
        )
    )


async def match_without_facility_claim(world: World) -> tuple[grpc.StatusCode, Any]:
    return await outcome_of(
        world.identity.MatchPatient(
            pb.MatchPatientRequest(demographics=world.registration(world.facility_c)),
            metadata=caller_metadata("registrar-nowhere", "", role="registrar"),
        )
    )


ATTACKS = [
    pytest.param(
        "registrar of B",
        "RegisterPatient: A's CCCD under another name",
        (OK, "REGISTRATION_OUTCOME_IDENTIFIER_CONFLICT"),
        card_under_another_name,
        id="card-other-name",
    ),
    pytest.param(
        "registrar of B, after registering A's CCCD with A's birth date under another name",
        "GetPatient of A",
        (DENIED, None),
        card_and_birth_date_under_another_name_then_read,
        id="card-other-name-read",
    ),
    pytest.param(
        "registrar of B, after registering A's CCCD under another name",
        "UpdatePatient of A's phone",
        (DENIED, None),
        card_under_another_name_then_update_phone,
        id="card-other-name-update",
    ),
    pytest.param(
        "registrar of B",
        "RegisterPatient: A's BHYT, birth date and phone under another name",
        (OK, "REGISTRATION_OUTCOME_IDENTIFIER_CONFLICT"),
        bhyt_birth_date_and_phone_under_another_name,
        id="bhyt-other-name",
    ),
    pytest.param(
        "registrar of B",
        "RegisterPatient: A's CCCD, name and birth date; then GetPatient of A",
        (OK, "REGISTRATION_OUTCOME_EXISTING"),
        card_with_the_right_name_and_birth_date,
        id="card-right-name-read",
    ),
    pytest.param(
        "registrar of B, a registrant of A too",
        "UpdatePatient of A's name",
        (OK, "proposal"),
        rename_of_a_shared_person,
        id="rename-shared",
    ),
    pytest.param(
        "registrar of B, a registrant of A too, with A's consent for B",
        "GetPatient of A",
        (OK, "the person"),
        read_under_consent,
        id="read-consent",
    ),
    pytest.param(
        "doctor of C, after breaking the glass",
        "GetPatient of A",
        (OK, "the person"),
        read_in_an_emergency,
        id="read-emergency",
    ),
    pytest.param(
        "registrar of C (no relationship)",
        "SearchPatients by A's phone",
        (OK, []),
        search_by_phone_from_a_stranger,
        id="search-phone-stranger",
    ),
    pytest.param(
        "doctor of C (no relationship)",
        "SearchPatients by A's CCCD",
        (OK, []),
        search_by_card_from_a_stranger,
        id="search-card-stranger",
    ),
    pytest.param(
        "nurse of A",
        "SearchPatients by A's phone",
        (OK, "masked"),
        search_by_phone_from_the_victims_facility,
        id="search-phone-own",
    ),
    pytest.param(
        "registrar of C (no relationship)",
        "MatchPatient with A's name, birth date and phone",
        (OK, "MATCH_DECISION_LINK"),
        match_from_a_stranger,
        id="match-stranger",
    ),
    pytest.param(
        "doctor without facility claim",
        "SearchPatients",
        (DENIED, None),
        search_without_facility_claim,
        id="search-no-facility",
    ),
    pytest.param(
        "registrar without facility claim",
        "MatchPatient",
        (DENIED, None),
        match_without_facility_claim,
        id="match-no-facility",
    ),
]


@pytest.mark.parametrize(("attacker", "call", "expected", "attack"), ATTACKS)
async def test_attack(
    world: World,
    attacker: str,
    call: str,
    expected: tuple[grpc.StatusCode, Any],
    attack: Callable[[World], Awaitable[tuple[grpc.StatusCode, Any]]],
) -> None:
    code, observed = await attack(world)
    assert (code, observed if code == OK else None) == expected, (attacker, call)


# --- helpers of the rows ----------------------------------------------------------------------------


async def open_review_task(world: World, task_id: str) -> pb.ReviewTask:
    token = ""
    while True:
        page = await world.identity.ListReviewTasks(
            pb.ListReviewTasksRequest(page_size=100, page_token=token)
        )
        for task in page.review_tasks:
            if task.review_task_id == task_id:
                found: pb.ReviewTask = task
                return found
        token = page.next_page_token
        assert token, f"review task {task_id} is not open"


async def access_report_with_search(world: World) -> list[Any]:
    """The victim's accesses of subtype SEARCH in their access report, read by an auditor, once the
    search's audit event has arrived."""
    auditor = caller_metadata("auditor-takeover", "", role="auditor")

    async def searches() -> list[Any] | None:
        report = await world.audit.GetPatientAccessReport(
            audit_pb2.GetPatientAccessReportRequest(patient_id=world.patient_id, page_size=500),
            metadata=auditor,
        )
        found = [a for a in report.accesses if a.subtype == audit_pb2.AUDIT_EVENT_SUBTYPE_SEARCH]
        return found or None

    return await poll_until(searches)
