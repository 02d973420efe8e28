"""The identity data the national insurance claim needs, through the real identity service and
FerretDB: provinces merged in 2025, birth dates known to the year or month, BHYT card details and
CCCDs of births registered abroad."""

from __future__ import annotations

import random
import uuid
from typing import Any

import grpc
import pytest
from emr.identity.v1 import identity_pb2

from emr_identity.synthetic import FEMALE_GIVENS, FEMALE_MIDDLES, REMAINING_SURNAMES

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
        "province_code": "93",
    }
    fields.update(overrides)
    return pb.RegisterPatientRequest(**fields)


def again(
    request: pb.RegisterPatientRequest, facility_code: str, **changes: Any
) -> pb.RegisterPatientRequest:
    """The same person registered at another facility (a new request)."""
    copy = pb.RegisterPatientRequest()
    copy.CopyFrom(request)
    copy.request_id = str(uuid.uuid4())
    copy.facility_code = facility_code
    for name, value in changes.items():
        setattr(copy, name, value)
    return copy


async def test_hau_giang_and_can_tho_registrations_of_one_person_link(
    identity: Any, facility_code: str
) -> None:
    first = await identity.RegisterPatient(unique_person(facility_code, province_code="93"))
    assert first.outcome == pb.REGISTRATION_OUTCOME_CREATED
    assert (first.patient.province_code, first.patient.current_province_code) == ("93", "92")
    second = await identity.RegisterPatient(again(unique_person(facility_code), "92001", **_same_as(first)))
    assert second.outcome == pb.REGISTRATION_OUTCOME_LINKED_EXISTING
    assert second.patient.patient_id == first.patient.patient_id
    assert (second.patient.province_code, second.patient.current_province_code) == ("92", "92")
    fields = {c.field: c.level for c in second.candidates[0].contributions}
    assert fields["province"] == "agree"


def _same_as(first: pb.RegisterPatientResponse) -> dict[str, Any]:
    return {
        "full_name": first.patient.full_name,
        "birth_date": first.patient.birth_date,
        "phone": first.patient.phone,
        "province_code": "92",
    }


async def test_a_year_only_birth_date_is_registered_and_returned_as_given(
    identity: Any, mongo: Any, facility_code: str
) -> None:
    request = unique_person(facility_code, birth_date="1948")
    response = await identity.RegisterPatient(request)
    assert response.outcome == pb.REGISTRATION_OUTCOME_CREATED
    assert response.patient.birth_date == "1948"
    stored = await mongo["emr_identity"]["persons"].find_one({"_id": response.patient.patient_id})
    assert stored is not None and stored["birth_date"] == "1948"
    read = await identity.GetPatient(pb.GetPatientRequest(patient_id=response.patient.patient_id))
    assert read.patient.birth_date == "1948"
    # The same person with a full date of that year and the same phone is the person known by year.
    full = await identity.MatchPatient(
        pb.MatchPatientRequest(demographics=again(request, "92002", birth_date="1948-06-20"))
    )
    assert full.candidates[0].patient_id == response.patient.patient_id
    levels = {c.field: c.level for c in full.candidates[0].contributions}
    assert levels["birth_date"] == "year_known"


async def test_a_year_and_month_birth_date_is_kept(identity: Any, facility_code: str) -> None:
    response = await identity.RegisterPatient(unique_person(facility_code, birth_date="1961-09"))
    assert response.patient.birth_date == "1961-09"


@pytest.mark.parametrize("birth_date", ["1948-6", "48", "1948-00", "06/1948", "2999"])
async def test_other_birth_date_forms_are_invalid_argument_naming_birth_date(
    identity: Any, mongo: Any, facility_code: str, bad_fields: Any, birth_date: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.RegisterPatient(unique_person(facility_code, birth_date=birth_date))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(caught.value) == ["birth_date"]
    persons = mongo["emr_identity"]["persons"]
    assert await persons.count_documents({"registering_facility_code": facility_code}) == 0


async def test_bhyt_card_details_are_kept(identity: Any, facility_code: str) -> None:
    card = pb.Identifier(
        system=pb.IDENTIFIER_SYSTEM_BHYT,
        value=f"HT392{uuid.uuid4().int % 10**10:010d}",
        bhyt_card=pb.BhytCard(
            valid_from="2026-01-01", valid_to="2026-12-31", primary_care_facility_code="92001"
        ),
    )
    response = await identity.RegisterPatient(unique_person(facility_code, identifiers=[card]))
    kept = response.patient.identifiers[0]
    assert kept.bhyt_card == card.bhyt_card
    read = await identity.GetPatient(pb.GetPatientRequest(patient_id=response.patient.patient_id))
    assert read.patient.identifiers[0].bhyt_card == card.bhyt_card


@pytest.mark.parametrize(
    ("identifier", "field"),
    [
        (pb.Identifier(system=pb.IDENTIFIER_SYSTEM_BHYT, value="ZZ4920123456789"), "identifiers[0].value"),
        (pb.Identifier(system=pb.IDENTIFIER_SYSTEM_BHYT, value="DN1920123456789"), "identifiers[0].value"),
        (
            pb.Identifier(
                system=pb.IDENTIFIER_SYSTEM_BHYT,
                value="DN4920123456789",
                bhyt_card=pb.BhytCard(valid_from="2026-12-31", valid_to="2026-01-01"),
            ),
            "identifiers[0].bhyt_card.valid_to",
        ),
        (
            pb.Identifier(
                system=pb.IDENTIFIER_SYSTEM_BHYT,
                value="DN4920123456789",
                bhyt_card=pb.BhytCard(primary_care_facility_code="920"),
            ),
            "identifiers[0].bhyt_card.primary_care_facility_code",
        ),
    ],
)
async def test_bad_bhyt_cards_are_invalid_argument(
    identity: Any, mongo: Any, facility_code: str, bad_fields: Any, identifier: Any, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.RegisterPatient(unique_person(facility_code, identifiers=[identifier]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(caught.value) == [field]
    persons = mongo["emr_identity"]["persons"]
    assert await persons.count_documents({"registering_facility_code": facility_code}) == 0


async def test_a_cccd_of_a_birth_registered_abroad_needs_the_flag(
    identity: Any, facility_code: str, bad_fields: Any
) -> None:
    card = pb.Identifier(system=pb.IDENTIFIER_SYSTEM_CCCD, value=f"999148{uuid.uuid4().int % 10**6:06d}")
    request = unique_person(facility_code, birth_date="1948", identifiers=[card])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.RegisterPatient(request)
    assert bad_fields(caught.value) == ["identifiers[0].value"]
    request.request_id = str(uuid.uuid4())
    request.cccd_registered_abroad = True
    response = await identity.RegisterPatient(request)
    assert response.outcome == pb.REGISTRATION_OUTCOME_CREATED


CLAIM_PROFILE = {
    "nationality_code": "000",
    "ethnicity_code": "08",
    "occupation_code": "61",
    "address": "7 Đường Thử, Phường Thử, TP Thử",
    "commune_code": "31117",
    "district_code": "916",
}


async def test_the_claim_profile_is_kept_encrypted_and_returned(
    identity: Any, mongo: Any, facility_code: str
) -> None:
    response = await identity.RegisterPatient(unique_person(facility_code, **CLAIM_PROFILE))
    assert response.outcome == pb.REGISTRATION_OUTCOME_CREATED
    read = await identity.GetPatient(pb.GetPatientRequest(patient_id=response.patient.patient_id))
    for patient in (response.patient, read.patient):
        assert {name: getattr(patient, name) for name in CLAIM_PROFILE} == CLAIM_PROFILE
    stored = await mongo["emr_identity"]["persons"].find_one({"_id": response.patient.patient_id})
    assert stored is not None and stored["claim_profile"].startswith("enc1:")
    assert "Đường Thử" not in str(stored) and "31117" not in str(stored)


async def test_a_registration_with_a_cccd_and_no_nationality_is_vietnamese(
    identity: Any, facility_code: str
) -> None:
    card = pb.Identifier(system=pb.IDENTIFIER_SYSTEM_CCCD, value=f"093170{uuid.uuid4().int % 10**6:06d}")
    request = unique_person(facility_code, birth_date="1970-05-20", identifiers=[card])
    response = await identity.RegisterPatient(request)
    assert (response.patient.nationality_code, response.patient.ethnicity_code) == ("000", "")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("nationality_code", "VN"),
        ("ethnicity_code", "55"),
        ("occupation_code", "6"),
        ("address", "x" * 1025),
        ("commune_code", "3111"),
        ("district_code", "9160"),
    ],
)
async def test_a_bad_claim_profile_field_is_invalid_argument_and_nothing_is_written(
    identity: Any, mongo: Any, facility_code: str, bad_fields: Any, field: str, value: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.RegisterPatient(unique_person(facility_code, **{**CLAIM_PROFILE, field: value}))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(caught.value) == [field]
    persons = mongo["emr_identity"]["persons"]
    assert await persons.count_documents({"registering_facility_code": facility_code}) == 0


async def test_an_update_replaces_the_claim_profile_only_when_it_says_so(
    identity: Any, facility_code: str, bad_fields: Any
) -> None:
    registered = (await identity.RegisterPatient(unique_person(facility_code, **CLAIM_PROFILE))).patient

    async def update(version: int, **fields: Any) -> pb.Patient:
        demographics = {
            "full_name": registered.full_name,
            "birth_date": registered.birth_date,
            "sex": registered.sex,
            "phone": registered.phone,
            "province_code": registered.province_code,
        }
        request = pb.UpdatePatientRequest(
            request_id=str(uuid.uuid4()),
            patient_id=registered.patient_id,
            expected_version=version,
            **{**demographics, **fields},
        )
        patient: pb.Patient = (await identity.UpdatePatient(request)).patient
        return patient

    kept = await update(registered.version, phone="0912345678")
    assert {name: getattr(kept, name) for name in CLAIM_PROFILE} == CLAIM_PROFILE
    moved = {**CLAIM_PROFILE, "ethnicity_code": "04", "address": ""}
    replaced = await update(kept.version, update_claim_profile=True, **moved)
    read = (await identity.GetPatient(pb.GetPatientRequest(patient_id=registered.patient_id))).patient
    for patient in (replaced, read):
        assert {name: getattr(patient, name) for name in CLAIM_PROFILE} == moved
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await update(replaced.version, update_claim_profile=True, **{**moved, "ethnicity_code": "99"})
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(caught.value) == ["ethnicity_code"]
