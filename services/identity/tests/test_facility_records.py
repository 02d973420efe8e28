"""Unit tests of what a facility sees of a person: its own record, masked search results, proposals
and the resolutions of each kind of review task (pure, no I/O)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

import pytest

from emr_identity.birth_dates import BirthDate
from emr_identity.domain import (
    Identifier,
    IdentifierSystem,
    Outcome,
    Person,
    PersonStatus,
    RawIdentifier,
    RegistrationInput,
    Sex,
    mask,
    masked,
    validate_registration,
)
from emr_identity.linkage import (
    RESOLUTIONS,
    FacilityRecord,
    ProposedDemographics,
    Resolution,
    ReviewKind,
    facility_person,
    known_as,
    newest,
    proposes_change,
    record_demographics,
    shown_demographics,
)
from emr_identity.matching import match_record, same_identity

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
CCCD = "079192000123"


def registration(facility_code: str = "79001", **changes: object) -> RegistrationInput:
    base = RegistrationInput(
        request_id="request-1",
        identifiers=(
            RawIdentifier(IdentifierSystem.CCCD, CCCD, ""),
            RawIdentifier(IdentifierSystem.BHYT, "DN4790123456789", ""),
            RawIdentifier(IdentifierSystem.MRN, "BN-0042", facility_code),
        ),
        full_name="  Trần   Thị Thu Hà ",
        birth_date="1992-03-14",
        sex=Sex.FEMALE,
        facility_code=facility_code,
        fingerprint="f1",
        phone="+84 912 345 678",
        province_code="79",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def record_of(raw: RegistrationInput, record_id: str = "r1", created_at: datetime = NOW) -> FacilityRecord:
    validated = validate_registration(raw, date(2026, 1, 1))
    return FacilityRecord(
        record_id=record_id,
        person_id="p-first",
        facility_code=validated.facility_code,
        match=match_record(validated, record_id),
        request_fingerprint=validated.fingerprint,
        created_at=created_at,
        outcome=Outcome.EXISTING,
        identifiers=validated.identifiers,
        demographics=record_demographics(validated),
    )


def test_a_facility_sees_what_it_sent_under_the_persons_id() -> None:
    shown = facility_person("p-survivor", record_of(registration()))
    assert shown.person_id == "p-survivor"
    assert (shown.full_name, shown.birth_date, shown.sex) == (
        "Trần Thị Thu Hà",
        BirthDate(1992, 3, 14),
        Sex.FEMALE,
    )
    assert (shown.phone, shown.province_code) == ("0912345678", "79")
    assert [i.system for i in shown.identifiers] == [
        IdentifierSystem.CCCD,
        IdentifierSystem.BHYT,
        IdentifierSystem.MRN,
    ]
    assert (shown.registering_facility_code, shown.created_at, shown.version) == ("79001", NOW, 1)
    assert shown.status is PersonStatus.ACTIVE and shown.merged_person_ids == ()


def test_a_record_written_before_records_kept_demographics_is_rebuilt_from_its_match() -> None:
    old = replace(record_of(registration()), identifiers=None, demographics=None)
    identifiers, shown = shown_demographics(old)
    assert [(i.system, i.value) for i in identifiers] == [
        (IdentifierSystem.CCCD, CCCD),
        (IdentifierSystem.BHYT, "0123456789"),
    ]
    assert (shown.full_name, shown.birth_date, shown.phone, shown.version) == (
        "Trần Thị Thu Hà",
        BirthDate(1992, 3, 14),
        "0912345678",
        1,
    )


def test_the_newest_finished_record_is_the_one_shown() -> None:
    first = record_of(registration(), "r1", NOW)
    later = record_of(registration(phone="0987654321"), "r2", NOW.replace(hour=9))
    unfinished = replace(record_of(registration(), "r3", NOW.replace(hour=10)), outcome=None)
    assert newest([later, first, unfinished]) == later
    assert newest([unfinished]) is None and newest([]) is None


def test_known_as_compares_like_the_persons_records() -> None:
    person = facility_person("p1", record_of(registration()))
    assert same_identity(known_as(person), record_of(registration(full_name="Tran Thi Thu Ha")).match)
    assert not same_identity(known_as(person), record_of(registration(full_name="Trần Thị Thu Lan")).match)


def test_search_results_show_the_last_four_characters_of_cards_and_phone() -> None:
    assert mask("079192000123") == "********0123"
    assert mask("0912345678") == "******5678"
    assert mask("1234") == "****" and mask("") == ""
    shown = masked(facility_person("p1", record_of(registration())))
    assert [i.value for i in shown.identifiers] == ["********0123", "***********6789", "BN-0042"]
    assert shown.phone == "******5678"
    assert shown.full_name == "Trần Thị Thu Hà"  # names and birth date stay: they tell persons apart


def test_only_a_change_of_name_birth_date_or_sex_is_proposed() -> None:
    person = Person(
        person_id="p1",
        identifiers=(Identifier(IdentifierSystem.CCCD, CCCD),),
        full_name="Trần Thị Thu Hà",
        birth_date=BirthDate(1992, 3, 14),
        sex=Sex.FEMALE,
        registering_facility_code="79001",
        created_at=NOW,
        status=PersonStatus.ACTIVE,
        request_fingerprint="f1",
    )
    same = ProposedDemographics("Trần Thị Thu Hà", BirthDate(1992, 3, 14), Sex.FEMALE)
    assert not proposes_change(person, same)
    assert proposes_change(person, replace(same, full_name="Trần Thị Thu Hoa"))
    assert proposes_change(person, replace(same, birth_date=BirthDate(1992, 3, 15)))
    assert proposes_change(person, replace(same, sex=Sex.OTHER))


@pytest.mark.parametrize(
    ("kind", "allowed"),
    [
        (ReviewKind.DUPLICATE, {Resolution.SAME_PERSON, Resolution.DIFFERENT_PERSONS}),
        (ReviewKind.IDENTIFIER_CONFLICT, {Resolution.SAME_PERSON, Resolution.DIFFERENT_PERSONS}),
        (ReviewKind.DEMOGRAPHICS_CHANGE, {Resolution.ACCEPT_CHANGE, Resolution.REJECT_CHANGE}),
    ],
)
def test_each_kind_of_task_has_its_resolutions(kind: ReviewKind, allowed: set[Resolution]) -> None:
    assert RESOLUTIONS[kind] == allowed
