"""Registration without a national identifier under concurrency, through two real identity
replicas on one FerretDB: registrations of one person take turns on their blocking keys, so
concurrent ones end as one person. Also what registration accepts as people give it: birth dates
known to the year or month, and a CCCD whose year digits disagree with the birth date (registered,
with a data-quality warning)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import grpc
import pytest
from emr.identity.v1 import identity_pb2, identity_pb2_grpc

from emr_devstack.stack import DEV_FIELD_ENCRYPTION, Stack
from emr_identity.birth_dates import BirthDate
from emr_identity.matching import MatchRecord, blocking_keys
from emr_identity.repository import stored_key
from emr_identity.synthetic import FEMALE_GIVENS, FEMALE_MIDDLES, REMAINING_SURNAMES
from emr_identity.vietnamese import normalize_name, normalize_phone, split_name
from emr_runtime.fieldcrypt import FieldCrypt

pb = identity_pb2


def person_without_cccd(facility_code: str, **overrides: Any) -> pb.RegisterPatientRequest:
    """A synthetic person unlikely to resemble anyone else registered in this test session, with a
    name, birth date, sex and phone but no identifier."""
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


def again(request: pb.RegisterPatientRequest, facility_code: str) -> pb.RegisterPatientRequest:
    """The same demographics registered by another request (and facility)."""
    repeated = pb.RegisterPatientRequest()
    repeated.CopyFrom(request)
    repeated.request_id = str(uuid.uuid4())
    repeated.facility_code = facility_code
    return repeated


def turn_ids(request: pb.RegisterPatientRequest) -> list[str]:
    """The ``_id``s of the turns a registration takes: its blocking keys as stored."""
    match = MatchRecord(
        record_id="",
        names=split_name(normalize_name(request.full_name)),
        birth_date=BirthDate.parse(request.birth_date),
        sex="female",
        phone=normalize_phone(request.phone) or "",
    )
    crypt = FieldCrypt.from_variables(DEV_FIELD_ENCRYPTION)
    return sorted(stored_key(crypt, key) for key in blocking_keys(match))


@pytest.fixture
async def second_identity(
    stack: Stack, service_instance: Any
) -> Any:  # an identity_pb2_grpc stub of a replica of its own, on the platform's database
    replica = service_instance("identity", {})
    channel = stack.dev_channel(replica.target)
    yield identity_pb2_grpc.PatientIdentityServiceStub(channel)
    await channel.close()


@pytest.mark.parametrize("other_phone_every", [0, 2])
async def test_concurrent_registrations_without_an_identifier_from_two_replicas_end_as_one_person(
    identity: Any, second_identity: Any, mongo: Any, other_phone_every: int
) -> None:
    facilities = [f"{random.randrange(10_000, 99_999):05d}" for _ in range(4)]
    first = person_without_cccd(facilities[0])
    requests = [again(first, facilities[i % len(facilities)]) for i in range(32)]
    if other_phone_every:
        # Records that differ: every second one gives another phone (a phone block of its own),
        # yet they share the name and birth-date blocks, and so take turns there.
        other_phone = f"09{random.randrange(10**8):08d}"
        for request in requests[::other_phone_every]:
            request.phone = other_phone
    replicas = (identity, second_identity)
    responses = await asyncio.gather(
        *(replicas[i % 2].RegisterPatient(request) for i, request in enumerate(requests))
    )

    assert len({r.patient.patient_id for r in responses}) == 1
    outcomes = sorted(r.outcome for r in responses)
    assert outcomes.count(pb.REGISTRATION_OUTCOME_CREATED) == 1
    assert outcomes.count(pb.REGISTRATION_OUTCOME_LINKED_EXISTING) == 31
    found = await identity.GetPatient(pb.GetPatientRequest(patient_id=responses[0].patient.patient_id))
    assert len(set(found.record_ids)) == 32
    # Every turn was given back.
    turns = mongo["emr_identity"]["registration_turns"]
    held = [i for r in requests[:2] for i in turn_ids(r) if await turns.find_one({"_id": i})]
    assert held == []
    # A repeat, on the other replica, answers what the first call answered.
    assert await second_identity.RegisterPatient(requests[4]) == responses[4]


async def test_a_registration_waits_for_a_turn_held_on_its_block_and_goes_on_when_it_is_given_back(
    identity: Any, mongo: Any, facility_code: str
) -> None:
    request = person_without_cccd(facility_code)
    turns = mongo["emr_identity"]["registration_turns"]
    # Another registration (of another process) holds the turn on one of its blocks.
    key = turn_ids(request)[0]
    await turns.insert_one({"_id": key, "holder": "another", "expires_at": time.time() + 60})
    registering = asyncio.ensure_future(identity.RegisterPatient(request))
    try:
        done, _ = await asyncio.wait({registering}, timeout=1.5)
        assert not done, "registered while another registration held its block"
        assert (
            await mongo["emr_identity"]["facility_records"].count_documents({"facility_code": facility_code})
            == 0
        )
    finally:
        await turns.delete_one({"_id": key})
    response = await asyncio.wait_for(registering, 30)
    assert response.outcome == pb.REGISTRATION_OUTCOME_CREATED


async def test_a_turn_left_by_a_stopped_holder_expires(identity: Any, mongo: Any, facility_code: str) -> None:
    request = person_without_cccd(facility_code)
    turns = mongo["emr_identity"]["registration_turns"]
    key = turn_ids(request)[-1]
    # A holder that stopped (killed) without giving the turn back; its holding expired.
    await turns.insert_one({"_id": key, "holder": "stopped", "expires_at": time.time() - 1})
    response = await asyncio.wait_for(identity.RegisterPatient(request), 30)
    assert response.outcome == pb.REGISTRATION_OUTCOME_CREATED
    assert await turns.find_one({"_id": key}) is None


@pytest.mark.parametrize("birth_date", ["1947", "1963-08"])
async def test_partial_birth_dates_register_and_are_found(
    identity: Any, second_identity: Any, facility_code: str, birth_date: str
) -> None:
    request = person_without_cccd(facility_code, birth_date=birth_date)
    created = await identity.RegisterPatient(request)
    assert created.outcome == pb.REGISTRATION_OUTCOME_CREATED
    assert created.patient.birth_date == birth_date
    read = await second_identity.GetPatient(pb.GetPatientRequest(patient_id=created.patient.patient_id))
    assert read.patient.birth_date == birth_date
    matched = await identity.MatchPatient(pb.MatchPatientRequest(demographics=again(request, "79001")))
    assert matched.candidates[0].patient_id == created.patient.patient_id
    levels = {c.field: c.level for c in matched.candidates[0].contributions}
    assert levels["birth_date"] == ("year_known" if len(birth_date) == 4 else "month_known")
    # Registered again elsewhere, at once on both replicas, it is the same person.
    twice = await asyncio.gather(
        identity.RegisterPatient(again(request, "79002")),
        second_identity.RegisterPatient(again(request, "79003")),
    )
    assert {r.patient.patient_id for r in twice} == {created.patient.patient_id}


def cccd(birth_year_digits: str, sex_and_century: str = "1") -> pb.Identifier:
    """A synthetic CCCD of province 079 (digit 4: 1 = female born in the 1900s)."""
    return pb.Identifier(
        system=pb.IDENTIFIER_SYSTEM_CCCD,
        value=f"079{sex_and_century}{birth_year_digits}{uuid.uuid4().int % 10**6:06d}",
    )


async def test_a_cccd_whose_year_digits_disagree_registers_with_a_warning(
    identity: Any, facility_code: str
) -> None:
    # Born 1971 by the papers at hand; the card says 1972.
    request = person_without_cccd(facility_code, birth_date="1971-04-20", identifiers=[cccd("72")])
    response = await identity.RegisterPatient(request)
    assert response.outcome == pb.REGISTRATION_OUTCOME_CREATED
    mismatch = pb.DATA_QUALITY_WARNING_CCCD_BIRTH_YEAR_MISMATCH
    assert list(response.patient.data_quality_warnings) == [mismatch]
    read = await identity.GetPatient(pb.GetPatientRequest(patient_id=response.patient.patient_id))
    assert list(read.patient.data_quality_warnings) == [mismatch]
    # Corrected to the card's year, the warning is gone.
    corrected = await identity.UpdatePatient(
        pb.UpdatePatientRequest(
            request_id=str(uuid.uuid4()),
            patient_id=read.patient.patient_id,
            expected_version=read.patient.version,
            full_name=read.patient.full_name,
            birth_date="1972-04-20",
            sex=read.patient.sex,
            phone=read.patient.phone,
            province_code=read.patient.province_code,
        )
    )
    assert list(corrected.patient.data_quality_warnings) == []
    # A card that agrees carries no warning.
    agreeing = await identity.RegisterPatient(
        person_without_cccd(facility_code, birth_date="1971-04-20", identifiers=[cccd("71")])
    )
    assert list(agreeing.patient.data_quality_warnings) == []


async def test_a_cccd_whose_sex_digit_disagrees_is_still_refused_without_the_override(
    identity: Any, mongo: Any, facility_code: str, bad_fields: Any
) -> None:
    # A female person; digit 4 = 0 says male (1900s): most often a mistyped card number.
    request = person_without_cccd(facility_code, birth_date="1971-04-20", identifiers=[cccd("71", "0")])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.RegisterPatient(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(caught.value) == ["identifiers[0].value"]
    assert (
        await mongo["emr_identity"]["persons"].count_documents({"registering_facility_code": facility_code})
        == 0
    )
    request.request_id = str(uuid.uuid4())
    request.accept_inconsistent_cccd = True
    response = await identity.RegisterPatient(request)
    assert response.outcome == pb.REGISTRATION_OUTCOME_CREATED
    assert list(response.patient.data_quality_warnings) == []
