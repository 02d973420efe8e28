"""Identifiers at rest: after an end-to-end run (registrations with CCCD, BHYT, passport and phone,
look-ups by each, an update, a BHYT-paid encounter delivered to the national system as a FHIR
bundle and a claim), a dump of every document of every database in the platform's FerretDB holds
none of the synthetic identifier or phone values, in any written form. Also: keys rotate without
losing what older keys wrote.

The national emulator keeps what it receives in memory, not in this FerretDB: it stands for the
external national system, which is meant to receive the identifiers (the test checks it did).
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any, cast

import httpx
import pytest
from bson import CodecOptions
from bson.raw_bson import RawBSONDocument
from emr.identity.v1 import identity_pb2, identity_pb2_grpc
from emr.records.v1 import records_pb2
from emr.sync.v1 import sync_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from pymongo import AsyncMongoClient

from emr_devstack.national import DEV_CLIENT_FACILITIES
from emr_devstack.processes import StartupError
from emr_devstack.stack import DEV_FIELD_ENCRYPTION
from emr_devstack.tokens import caller_metadata
from emr_runtime.fieldcrypt import FieldCrypt

CLINICIAN = caller_metadata("dr-synthetic-at-rest", "79001", "TREATMENT")
RAW = CodecOptions(document_class=RawBSONDocument)
CCCD = identity_pb2.IDENTIFIER_SYSTEM_CCCD
BHYT = identity_pb2.IDENTIFIER_SYSTEM_BHYT
PASSPORT = identity_pb2.IDENTIFIER_SYSTEM_PASSPORT
MRN = identity_pb2.IDENTIFIER_SYSTEM_MRN
# Born 1992-03-14, female (the registration fixture's demographics, which the CCCDs below fit).
NAME = "Lâm Thị Ngọc Bích"


def stamp(offset_seconds: int) -> Timestamp:
    result = Timestamp()
    result.FromSeconds(int(time.time()) + offset_seconds)
    return result


def digits(count: int) -> str:
    return "".join(random.choice("0123456789") for _ in range(count))


CLAIMING_FACILITY = DEV_CLIENT_FACILITIES[0]


def synthetic_values() -> dict[str, str]:
    """Fresh synthetic values of this run (never real data): each must not be found at rest."""
    return {
        # Province 079, century/sex digit 1 (1900s, female), birth year 92: fits the demographics.
        "cccd": f"079192{digits(6)}",
        "bhyt": f"DN479{digits(10)}",
        "passport": f"C{digits(7)}",
        "phone": f"091{digits(7)}",
        "phone_updated": f"098{digits(7)}",
        "encounter_bhyt": f"HN279{digits(10)}",
        "encounter_card": f"GD479{digits(10)}",
    }


def written_forms(name: str, value: str) -> set[str]:
    """The value as it may have been written: as given, lower case, digits only (BHYT's 10-digit
    social insurance code, the CCCD's digits) and a phone's +84 and subscriber forms. A passport's
    7 digits alone are too short to be told from chance and are not searched alone."""
    forms = {value, value.lower()}
    if name in ("bhyt", "encounter_bhyt", "encounter_card"):
        forms.add(value[-10:])
    if name.startswith("phone"):
        forms |= {f"84{value[1:]}", f"+84{value[1:]}", value[1:]}
    return forms


async def dump(client: AsyncMongoClient[dict[str, Any]]) -> dict[str, list[bytes]]:
    """Every document of every collection of every database, as raw BSON."""
    documents: dict[str, list[bytes]] = {}
    for database_name in await client.list_database_names():
        database = client.get_database(database_name, codec_options=RAW)
        for collection_name in await database.list_collection_names():
            cursor = database[collection_name].find({})
            found = [bytes(cast(RawBSONDocument, document).raw) async for document in cursor]
            documents[f"{database_name}.{collection_name}"] = found
    return documents


async def test_no_identifier_or_phone_is_stored_in_plaintext(
    stack: Any,
    identity: Any,
    records: Any,
    sync: Any,
    mongo: Any,
    facility_code: str,
    registration: Any,
    tools: Any,
    clinical: Any,
) -> None:
    values = synthetic_values()
    other_facility = f"AR{facility_code[-3:]}"  # letters: never another test's facility code
    registered = await identity.RegisterPatient(
        registration(
            facility_code,
            full_name=NAME,
            phone=values["phone"],
            identifiers=[
                identity_pb2.Identifier(system=CCCD, value=values["cccd"]),
                identity_pb2.Identifier(system=BHYT, value=values["bhyt"]),
                identity_pb2.Identifier(system=PASSPORT, value=values["passport"]),
            ],
        ),
        metadata=CLINICIAN,
    )
    patient = registered.patient
    assert {i.value for i in patient.identifiers} == {values["cccd"], values["bhyt"], values["passport"]}
    assert patient.phone == values["phone"]

    # The same citizen at another hospital, with the phone in +84 form: resolved by the CCCD claim.
    again = await identity.RegisterPatient(
        registration(
            other_facility,
            full_name=NAME,
            phone=f"+84 {values['phone'][1:]}",
            identifiers=[
                identity_pb2.Identifier(system=CCCD, value=values["cccd"]),
                identity_pb2.Identifier(system=MRN, value="AR-0001", facility_code=other_facility),
            ],
        ),
        metadata=CLINICIAN,
    )
    assert again.outcome == identity_pb2.REGISTRATION_OUTCOME_EXISTING
    assert again.patient.patient_id == patient.patient_id

    # Exact look-ups by each identifier and by phone go through the blind index.
    for query in (
        identity_pb2.SearchPatientsRequest(
            identifier=identity_pb2.Identifier(system=CCCD, value=values["cccd"])
        ),
        identity_pb2.SearchPatientsRequest(
            identifier=identity_pb2.Identifier(system=BHYT, value=values["bhyt"])
        ),
        identity_pb2.SearchPatientsRequest(
            identifier=identity_pb2.Identifier(system=BHYT, value=values["bhyt"][-10:])
        ),
        identity_pb2.SearchPatientsRequest(
            identifier=identity_pb2.Identifier(system=PASSPORT, value=values["passport"].lower())
        ),
        identity_pb2.SearchPatientsRequest(phone=values["phone"]),
    ):
        found = await identity.SearchPatients(query, metadata=CLINICIAN)
        assert [p.patient_id for p in found.patients] == [patient.patient_id], query

    updated = await identity.UpdatePatient(
        identity_pb2.UpdatePatientRequest(
            request_id=str(uuid.uuid4()),
            patient_id=patient.patient_id,
            expected_version=patient.version,
            full_name=patient.full_name,
            birth_date=patient.birth_date,
            sex=patient.sex,
            province_code=patient.province_code,
            phone=values["phone_updated"],
        ),
        metadata=CLINICIAN,
    )
    assert updated.patient.phone == values["phone_updated"]
    by_new_phone = await identity.MatchPatient(
        identity_pb2.MatchPatientRequest(
            demographics=registration(
                facility_code,
                request_id="",
                full_name=NAME,
                phone=values["phone_updated"],
                identifiers=[identity_pb2.Identifier(system=CCCD, value=values["cccd"])],
            )
        ),
        metadata=CLINICIAN,
    )
    assert by_new_phone.candidates and by_new_phone.candidates[0].patient_id == patient.patient_id

    created = await records.CreateEncounter(
        records_pb2.CreateEncounterRequest(
            request_id=str(uuid.uuid4()),
            patient_id=patient.patient_id,
            facility_code=facility_code,
            encounter_class=records_pb2.ENCOUNTER_CLASS_OUTPATIENT,
            status=records_pb2.ENCOUNTER_STATUS_FINISHED,
            start_time=stamp(-3600),
            end_time=stamp(-600),
            reason="Khám định kỳ",
            insurance=records_pb2.EncounterInsurance(bhyt_number=values["encounter_bhyt"], benefit_level=4),
            insurance_cards=[
                records_pb2.InsuranceCard(
                    card_number=values["encounter_card"],
                    registered_facility_code="79001",
                    valid_from="2024-01-01",
                )
            ],
        ),
        metadata=CLINICIAN,
    )
    encounter_id = created.encounter.encounter_id
    got = await records.GetEncounter(
        records_pb2.GetEncounterRequest(encounter_id=encounter_id), metadata=CLINICIAN
    )
    assert got.encounter.insurance.bhyt_number == values["encounter_bhyt"]
    assert got.encounter.insurance_cards[0].card_number == values["encounter_card"]

    # A visit whose claim is complete, at a facility with its claim codes (emr_devstack.national): the
    # national side receives the bundle and the claim (with the identifiers: it is their recipient).
    await clinical.claimable_visit(patient.patient_id, CLAIMING_FACILITY, values["bhyt"])
    async with httpx.AsyncClient(base_url=stack.url("national_emulator")) as http:

        async def both_delivered() -> list[dict[str, Any]] | None:
            held = (await http.get("/deliveries", params={"patient_id": patient.patient_id})).json()
            kinds = {item["kind"] for item in held["items"]}
            return held["items"] if {"fhir", "claim"} <= kinds else None

        delivered = await tools.poll_until(both_delivered, 60.0)
        received = [(await http.get(f"/deliveries/{item['idempotency_key']}")).text for item in delivered]
    assert any(values["cccd"] in text for text in received)

    async def sync_settled() -> sync_pb2.GetSyncStatusResponse | None:
        status = await sync.GetSyncStatus(sync_pb2.GetSyncStatusRequest(facility_code=facility_code))
        return status if status.delivered >= 2 and status.pending == 0 else None

    await tools.poll_until(sync_settled, 60.0)

    documents = await dump(mongo)
    # Not vacuous: the run's data is in the dump, in its encrypted and indexed forms.
    identity_db = stack.service_env("identity").get("IDENTITY_MONGODB_DATABASE", "emr_identity")
    person = next(
        RawBSONDocument(raw)
        for raw in documents[f"{identity_db}.persons"]
        if RawBSONDocument(raw)["_id"] == patient.patient_id
    )
    assert all(i["value"].startswith("enc1:") for i in person["identifiers"])
    assert person["phone"].startswith("enc1:")
    assert documents["emr_sync.payloads"] and documents["emr_records.resources"]
    assert not any(name.startswith("emr_national") for name in documents)

    found = [
        f"{name} ({form!r} in {where})"
        for name, value in values.items()
        for form in written_forms(name, value)
        for where, raws in documents.items()
        if any(form.encode() in raw for raw in raws)
    ]
    assert not found, f"plaintext identifiers at rest: {found}"


async def test_rotated_keys_write_with_the_new_key_and_read_the_old(
    service_instance: Any, open_channel: Any, mongo: Any, facility_code: str, registration: Any
) -> None:
    database = f"emr_identity_rotation_{uuid.uuid4().hex[:8]}"  # its own: other tests never read it
    old_keys = {**DEV_FIELD_ENCRYPTION, "IDENTITY_MONGODB_DATABASE": database}
    values = synthetic_values()

    async def register(target: str, cccd: str, phone: str) -> identity_pb2.Patient:
        stub = identity_pb2_grpc.PatientIdentityServiceStub(open_channel(target))
        response = await stub.RegisterPatient(
            registration(
                facility_code, phone=phone, identifiers=[identity_pb2.Identifier(system=CCCD, value=cccd)]
            ),
            metadata=CLINICIAN,
        )
        patient: identity_pb2.Patient = response.patient
        return patient

    first = service_instance("identity", old_keys)
    before = await register(first.target, values["cccd"], values["phone"])
    first.stop()

    # Rotation: a new current key; the old one stays listed for reading.
    rotated = {
        **old_keys,
        "FIELD_ENCRYPTION_KEYS": f"k2:{FieldCrypt.generate_key()},{DEV_FIELD_ENCRYPTION['FIELD_ENCRYPTION_KEYS']}",
        "FIELD_ENCRYPTION_CURRENT_KEY_ID": "k2",
    }
    second = service_instance("identity", rotated)
    after = await register(second.target, f"079192{digits(6)}", values["phone_updated"])
    stub = identity_pb2_grpc.PatientIdentityServiceStub(open_channel(second.target))
    read = await stub.GetPatient(
        identity_pb2.GetPatientRequest(patient_id=before.patient_id), metadata=CLINICIAN
    )
    assert read.patient.phone == values["phone"]
    assert [i.value for i in read.patient.identifiers] == [values["cccd"]]
    # The blind index does not depend on the encryption keys: look-ups keep working.
    found = await stub.SearchPatients(
        identity_pb2.SearchPatientsRequest(
            identifier=identity_pb2.Identifier(system=CCCD, value=values["cccd"])
        ),
        metadata=CLINICIAN,
    )
    assert [p.patient_id for p in found.patients] == [before.patient_id]

    persons = mongo[database]["persons"]
    stored_before = await persons.find_one({"_id": before.patient_id})
    stored_after = await persons.find_one({"_id": after.patient_id})
    assert stored_before["phone"].startswith("enc1:dev1:")
    assert stored_after["phone"].startswith("enc1:k2:")
    assert stored_after["identifiers"][0]["value"].startswith("enc1:k2:")
    second.stop()
    await mongo.drop_database(database)


def test_a_service_with_a_bad_key_does_not_start_and_says_why(service_instance: Any) -> None:
    """Each kind of bad configuration is named (unit tests); here: the service stops at start."""
    with pytest.raises(StartupError) as raised:
        service_instance("records", {**DEV_FIELD_ENCRYPTION, "FIELD_ENCRYPTION_CURRENT_KEY_ID": "k9"})
    assert "key id 'k9' is not in FIELD_ENCRYPTION_KEYS (ids there: dev1)" in str(raised.value)
    secret = DEV_FIELD_ENCRYPTION["FIELD_ENCRYPTION_KEYS"].partition(":")[2]
    assert secret not in str(raised.value)
