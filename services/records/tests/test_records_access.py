"""The access model in records, without I/O: which facilities' records a caller lists, the person as
an export shows them, the write lane, and the visibility records adds to identity's answer (its
own records count as a registration)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from emr.identity.v1 import identity_pb2

from emr_claims.codelists import load_code_lists
from emr_records.domain import facilities_seen
from emr_records.service import RecordsService, note_emergency_reads, patient_as_seen, stay_in_lane
from emr_runtime.errors import PermissionDeniedError
from emr_runtime.paging import PageTokens
from emr_runtime.visibility import CallAccess, Visibility, set_call_access

OWN = "79001"
OTHER = "79002"


@pytest.fixture
def caller_of() -> Iterator[Any]:
    """Sets the current call's access to a caller of a facility (or a platform caller)."""

    def set_caller(facility_code: str, platform: bool = False) -> CallAccess:
        access = CallAccess(facility_code, "TREATMENT", None, platform=platform)
        set_call_access(access)
        return access

    yield set_caller
    set_call_access(None)


def test_a_caller_lists_its_own_facility_and_what_referrals_open_or_everything_a_grant_opens() -> None:
    assert facilities_seen(Visibility(OWN, registered=True)) == frozenset({OWN})
    assert facilities_seen(Visibility(OWN, facilities=frozenset({OTHER}))) == frozenset({OWN, OTHER})
    assert facilities_seen(Visibility(OWN, all_facilities=True)) is None


def person() -> identity_pb2.Patient:
    return identity_pb2.Patient(
        patient_id="p",
        full_name="Nguyễn Văn An",
        registering_facility_code=OTHER,
        identifiers=[
            identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_CCCD, value="079092000001"),
            identity_pb2.Identifier(
                system=identity_pb2.IDENTIFIER_SYSTEM_MRN, value="A-1", facility_code=OTHER
            ),
            identity_pb2.Identifier(
                system=identity_pb2.IDENTIFIER_SYSTEM_MRN, value="B-1", facility_code=OWN
            ),
        ],
    )


def test_an_export_shows_no_record_number_or_registration_of_a_facility_the_caller_cannot_see() -> None:
    original = person()
    shown = patient_as_seen(original, Visibility(OWN, registered=True))
    assert [(i.value, i.facility_code) for i in shown.identifiers] == [("079092000001", ""), ("B-1", OWN)]
    assert shown.registering_facility_code == "" and shown.full_name == "Nguyễn Văn An"
    assert len(original.identifiers) == 3 and original.registering_facility_code == OTHER  # not changed
    referred = patient_as_seen(original, Visibility(OWN, facilities=frozenset({OTHER})))
    assert len(referred.identifiers) == 3 and referred.registering_facility_code == OTHER
    assert patient_as_seen(original, Visibility(OWN, all_facilities=True)) == original


def test_a_facility_writes_only_its_own_records_and_platform_callers_have_no_lane(caller_of: Any) -> None:
    caller_of(OWN)
    stay_in_lane(OWN, "unused")
    with pytest.raises(PermissionDeniedError) as denied:
        stay_in_lane(OTHER, "encounter_id names an encounter of another facility")
    assert denied.value.message == "encounter_id names an encounter of another facility"
    caller_of("", platform=True)
    stay_in_lane(OTHER, "unused")


class Directory:
    """Identity's answers, from a table."""

    def __init__(self, answers: dict[str, Visibility]) -> None:
        self.answers = answers

    async def access(self, patient_id: str, facility_code: str, purpose: str, export: bool) -> Visibility:
        return self.answers.get(patient_id, Visibility(facility_code, exists=False))


class Holders:
    """Which facility holds records of which patient."""

    def __init__(self, held: set[tuple[str, str]]) -> None:
        self.held = held
        self.asked: list[tuple[str, str]] = []

    async def holds_records(self, patient_id: str, facility_code: str) -> bool:
        self.asked.append((patient_id, facility_code))
        return (patient_id, facility_code) in self.held


def service(answers: dict[str, Visibility], held: set[tuple[str, str]]) -> tuple[RecordsService, Holders]:
    holders = Holders(held)
    records = RecordsService(
        holders,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        Directory(answers),  # type: ignore[arg-type]
        timedelta(seconds=1),
        PageTokens(b"k" * 32),
        load_code_lists(),
    )
    return records, holders


def visibility(records: RecordsService, patient_id: str) -> Visibility:
    return asyncio.run(records.visibility(patient_id, OWN, "TREATMENT", False))


def test_a_registration_answers_without_looking_at_records() -> None:
    records, holders = service({"p": Visibility(OWN, registered=True)}, set())
    assert visibility(records, "p").registered
    assert holders.asked == []


def test_records_of_its_own_make_a_facility_registered_and_open_nothing_else() -> None:
    referral = Visibility(OWN, facilities=frozenset({OTHER}))
    records, _ = service({"p": Visibility(OWN), "q": referral}, {("p", OWN), ("q", OWN)})
    seen = visibility(records, "p")
    assert seen.registered and seen.opens_anything
    assert seen.sees(OWN) and not seen.sees(OTHER)
    assert visibility(records, "q") == Visibility(OWN, registered=True, facilities=frozenset({OTHER}))


def test_records_kept_under_the_id_a_merge_resolved_count_too() -> None:
    records, holders = service(
        {"merged": Visibility(OWN, resolved_patient_id="survivor")}, {("survivor", OWN)}
    )
    assert visibility(records, "merged").registered
    assert holders.asked == [("merged", OWN), ("survivor", OWN)]


def test_a_stranger_without_records_sees_nothing() -> None:
    records, _ = service({"p": Visibility(OWN)}, {("p", OTHER)})
    assert not visibility(records, "p").opens_anything
    assert not visibility(records, "unknown").opens_anything


def test_reads_note_an_emergency_access_only_for_another_facility_s_records(caller_of: Any) -> None:
    access = caller_of(OWN)
    emergency = Visibility(
        OWN, registered=True, all_facilities=True, emergency_access_id="e1", emergency_reason="R"
    )
    note_emergency_reads(access, emergency, [])
    note_emergency_reads(access, emergency, [OWN])
    assert access.emergency_access_id == ""
    note_emergency_reads(access, Visibility(OWN, facilities=frozenset({OTHER})), [OTHER])
    assert access.emergency_access_id == ""
    note_emergency_reads(access, emergency, [OWN, OTHER])
    assert (access.emergency_access_id, access.emergency_reason) == ("e1", "R")
