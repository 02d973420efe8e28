"""Registration is safe under concurrency without transactions: one CCCD, one person."""

from __future__ import annotations

import asyncio
import random
import string
from typing import Any

from emr.identity.v1 import identity_pb2

from emr_devstack.stack import DEV_FIELD_ENCRYPTION
from emr_identity.domain import IdentifierSystem, identifier_key
from emr_identity.repository import stored_key
from emr_runtime.fieldcrypt import FieldCrypt


async def test_concurrent_registrations_of_one_cccd_yield_one_person(
    identity: Any, mongo: Any, registration: Any, facility_code: str
) -> None:
    template = registration(facility_code)
    cccd = template.identifiers[0].value
    requests = [
        registration(facility_code, full_name=template.full_name, identifiers=template.identifiers)
        for _ in range(24)
    ]
    responses = await asyncio.gather(*(identity.RegisterPatient(r) for r in requests))

    assert len({r.patient.patient_id for r in responses}) == 1
    outcomes = sorted(r.outcome for r in responses)
    assert outcomes.count(identity_pb2.REGISTRATION_OUTCOME_CREATED) == 1
    assert outcomes.count(identity_pb2.REGISTRATION_OUTCOME_EXISTING) == 23
    # The CCCD is stored encrypted; the persons holding it carry its claim key (a blind index). A new
    # person's resolution (active, or superseded by the owner of its CCCD) is stored apart from its
    # status (see emr_identity.repository._status).
    claim_key = stored_key(
        FieldCrypt.from_variables(DEV_FIELD_ENCRYPTION), identifier_key(IdentifierSystem.CCCD, cccd)
    )
    active = await mongo["emr_identity"]["persons"].count_documents(
        {"claim_keys": claim_key, "$or": [{"status": "active"}, {"resolution": "active"}]}
    )
    assert active == 1
    # A repeat of any of the requests returns what it returned the first time.
    assert await identity.RegisterPatient(requests[5]) == responses[5]


async def test_concurrent_registrations_of_one_person_keep_every_record_listed(
    identity: Any, mongo: Any, registration: Any, facility_code: str
) -> None:
    # Every registration updates the same person (its records and link log) and the same blocks
    # at once; on FerretDB 1.x two concurrent updates of one document could lose one.
    given = "".join(random.choices(string.ascii_lowercase, k=8))
    template = registration(facility_code, full_name=f"Trần Thị {given.capitalize()}")
    requests = [
        registration(facility_code, full_name=template.full_name, identifiers=template.identifiers)
        for _ in range(24)
    ]
    responses = await asyncio.gather(*(identity.RegisterPatient(r) for r in requests))
    patient_id = responses[0].patient.patient_id

    found = await identity.GetPatient(identity_pb2.GetPatientRequest(patient_id=patient_id))
    assert len(set(found.record_ids)) == 24
    history = await identity.GetPersonHistory(identity_pb2.GetPersonHistoryRequest(patient_id=patient_id))
    assert {e.record_id for e in history.events if e.record_id} == set(found.record_ids)
    # The name + birth-year block (its key holds no identifier, so it is stored as is) lists each
    # record once, with what the matcher compares of it.
    block = await mongo["emr_identity"]["blocks"].find_one({"_id": f"fy:tran thi {given}|1992"})
    assert sorted(member["record_id"] for member in block["members"]) == sorted(found.record_ids)
