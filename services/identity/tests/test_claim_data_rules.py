"""Unit tests of the identity data the national insurance claim needs: the 2025 province merger,
partial birth dates, BHYT cards (group codes, benefit levels, validity, primary-care facility) and
CCCDs of births registered abroad (pure, no I/O)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal
from itertools import pairwise
from typing import Any

import pytest

from emr_identity.birth_dates import BirthDate, DatePrecision
from emr_identity.claim_profile import VIETNAMESE_NATIONALITY, ClaimProfile, is_ethnicity_code
from emr_identity.domain import (
    BhytCard,
    DataQualityWarning,
    Identifier,
    IdentifierSystem,
    RawBhytCard,
    RawIdentifier,
    RegistrationInput,
    Sex,
    new_person,
    validate_registration,
)
from emr_identity.matching import (
    Decision,
    MatchRecord,
    NameFrequencies,
    blocking_keys,
    decide,
    match_record,
    same_identity,
    score,
)
from emr_identity.vietnamese import (
    BHYT_GROUPS,
    CCCD_PROVINCES,
    PROVINCE_UNITS,
    bhyt_benefit_level,
    bhyt_card_code_problem,
    bhyt_group,
    cccd_problem,
    coverage_share,
    current_province_code,
    is_province_code,
    split_name,
)
from emr_runtime.errors import InvalidArgumentError

TODAY = date(2026, 12, 7)
NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
DIEP = "Nguyễn Thị Ngọc Điệp"


def registration_input(**changes: Any) -> RegistrationInput:
    valid = RegistrationInput(
        request_id="6f1c2a9e-0d3b-4c55-9a61-2b7f0e4d8c10",
        identifiers=(),
        full_name="Trần Văn An",
        birth_date="1990-05-01",
        sex=Sex.MALE,
        facility_code="79001",
        fingerprint="fp-1",
    )
    return replace(valid, **changes)


def violations_of(raw: RegistrationInput) -> dict[str, str]:
    with pytest.raises(InvalidArgumentError) as caught:
        validate_registration(raw, TODAY)
    return {v.field: v.description for v in caught.value.violations}


def record(record_id: str = "a", **changes: Any) -> MatchRecord:
    base = MatchRecord(
        record_id=record_id,
        names=split_name(DIEP),
        birth_date=BirthDate(1990, 3, 7),
        sex="female",
        phone="0912345678",
        province_code="79",
    )
    return replace(base, **changes)


def levels(a: MatchRecord, b: MatchRecord) -> dict[str, str]:
    return {c.field: c.level for c in score(a, b, NameFrequencies()).contributions}


def weight_of(a: MatchRecord, b: MatchRecord, field: str) -> float:
    return next(c.weight for c in score(a, b, NameFrequencies()).contributions if c.field == field)


# --- provinces: the 2025 merger ----------------------------------------------------------------------


def test_every_former_province_maps_to_one_of_34_units() -> None:
    assert len(PROVINCE_UNITS) == 63
    assert {f"0{code}" for code in PROVINCE_UNITS} == set(CCCD_PROVINCES)
    assert len({unit.new_code for unit in PROVINCE_UNITS.values()}) == 34
    assert {unit.valid_from for unit in PROVINCE_UNITS.values()} == {date(2025, 7, 1)}


def test_a_current_code_maps_to_itself() -> None:
    # Each unit's code is the code of one province merged into it, so either list maps the same way.
    for unit in PROVINCE_UNITS.values():
        assert current_province_code(unit.new_code) == unit.new_code
        assert PROVINCE_UNITS[unit.new_code].new_name == unit.new_name


@pytest.mark.parametrize(
    ("old", "new"),
    [("93", "92"), ("94", "92"), ("92", "92"), ("74", "79"), ("77", "79"), ("02", "08"), ("46", "46")],
)
def test_current_province_code(old: str, new: str) -> None:
    assert current_province_code(old) == new


def test_unknown_province_code_is_kept() -> None:
    assert current_province_code("") == ""
    assert current_province_code("03") == "03"
    assert not is_province_code("03")


def test_data_files_say_what_they_are_and_their_legal_source() -> None:
    from importlib import resources

    data = resources.files("emr_identity").joinpath("data")
    provinces = data.joinpath("provinces.csv").read_text(encoding="utf-8").splitlines()[0]
    groups = data.joinpath("bhyt_groups.csv").read_text(encoding="utf-8").splitlines()[0]
    assert provinces.startswith("#") and "202/2025/QH15" in provinces
    assert groups.startswith("#") and "1351/QD-BHXH" in groups


def test_hau_giang_and_can_tho_addresses_agree() -> None:
    hau_giang, can_tho = record("a", province_code="93"), record("b", province_code="92")
    assert levels(hau_giang, can_tho)["province"] == "agree"
    assert levels(hau_giang, record("b", province_code="79"))["province"] == "disagree"
    result = decide(hau_giang, [("p1", can_tho)], NameFrequencies())
    assert result.decision is Decision.LINK


def test_registration_keeps_the_province_code_as_given() -> None:
    assert validate_registration(registration_input(province_code="93"), TODAY).province_code == "93"
    assert violations_of(registration_input(province_code="03")) == {
        "province_code": "the 2-digit code of a province (before or after 1 July 2025)"
    }


# --- partial birth dates ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "precision"),
    [
        ("1985", BirthDate(1985), DatePrecision.YEAR),
        ("1985-07", BirthDate(1985, 7), DatePrecision.MONTH),
        ("1985-07-15", BirthDate(1985, 7, 15), DatePrecision.DAY),
    ],
)
def test_birth_date_forms(text: str, expected: BirthDate, precision: DatePrecision) -> None:
    registration = validate_registration(registration_input(birth_date=text), TODAY)
    assert registration.birth_date == expected
    assert registration.birth_date.precision is precision
    assert registration.birth_date.isoformat() == text


@pytest.mark.parametrize(
    "text",
    [
        "85",
        "198",
        "1985-",
        "1985-7",
        "1985-00",
        "1985-13",
        "1985-07-",
        "1985-07-1",
        "1985-07-00",
        "1985-00-15",
        "0000",
        "1985 07",
        "1985-W27",
    ],
)
def test_other_birth_date_forms_are_refused_naming_birth_date(text: str) -> None:
    found = violations_of(registration_input(birth_date=text))
    assert list(found) == ["birth_date"]
    assert "YYYY, YYYY-MM or YYYY-MM-DD" in found["birth_date"]


@pytest.mark.parametrize(("text", "problem"), [("2027", "future"), ("2027-01", "future"), ("1899", "before")])
def test_partial_birth_date_bounds(text: str, problem: str) -> None:
    assert problem in violations_of(registration_input(birth_date=text))["birth_date"]


def test_partial_birth_date_of_this_month_is_accepted() -> None:
    assert validate_registration(registration_input(birth_date="2026-12"), TODAY).birth_date == BirthDate(
        2026, 12
    )


def test_year_only_agrees_with_a_full_date_of_that_year_more_weakly_than_an_exact_date() -> None:
    full, year_only = record("a"), record("b", birth_date=BirthDate(1990))
    assert levels(full, year_only)["birth_date"] == "year_known"
    assert levels(year_only, full)["birth_date"] == "year_known"
    partial_weight = weight_of(full, year_only, "birth_date")
    assert 0 < partial_weight < weight_of(full, record("c"), "birth_date")
    # A year one off is a level of its own (people misremember or mistype it); two off disagrees.
    assert levels(full, record("b", birth_date=BirthDate(1991)))["birth_date"] == "partial_year_off_one"
    assert levels(full, record("b", birth_date=BirthDate(1992)))["birth_date"] == "disagree"


def test_year_month_compares_the_month() -> None:
    full = record("a")
    assert levels(full, record("b", birth_date=BirthDate(1990, 3)))["birth_date"] == "month_known"
    assert levels(full, record("b", birth_date=BirthDate(1990, 4)))["birth_date"] == "year"
    assert (
        levels(record("a", birth_date=BirthDate(1990, 3)), record("b", birth_date=BirthDate(1990)))[
            "birth_date"
        ]
        == "year_known"
    )
    month_weight = weight_of(full, record("b", birth_date=BirthDate(1990, 3)), "birth_date")
    assert weight_of(full, record("b", birth_date=BirthDate(1990)), "birth_date") < month_weight
    assert month_weight < weight_of(full, record("c"), "birth_date")


def test_a_partial_date_links_only_with_the_whole_name() -> None:
    # Same whole name and year: older patients often know no more and give no phone, so it links;
    # with a typo in the given name it is only proposed.
    a = record("a", phone="")
    b = record("b", phone="", birth_date=BirthDate(1990))
    assert decide(a, [("p1", b)], NameFrequencies()).decision is Decision.LINK
    typo = record("b", names=split_name("Nguyễn Thị Ngọc Điệpp"), phone="", birth_date=BirthDate(1990))
    assert decide(a, [("p1", typo)], NameFrequencies()).decision is not Decision.LINK


def test_same_identity_tolerates_a_partial_date_that_agrees() -> None:
    assert same_identity(record("a"), record("b", birth_date=BirthDate(1990)))
    assert same_identity(record("a"), record("b", birth_date=BirthDate(1990, 3)))
    assert not same_identity(record("a"), record("b", birth_date=BirthDate(1990, 4)))
    assert not same_identity(record("a"), record("b", birth_date=BirthDate(1993)))


def test_a_partial_date_is_filed_under_name_and_year_and_the_years_either_side() -> None:
    keys = blocking_keys(record("a", birth_date=BirthDate(1990), phone=""))
    assert keys == frozenset({f"fy:nguyen thi ngoc diep|{year}" for year in (1989, 1990, 1991)})
    assert "fy:nguyen thi ngoc diep|1991" in blocking_keys(record("b", birth_date=BirthDate(1991, 3, 7)))
    assert "fy:nguyen thi ngoc diep|1990" in blocking_keys(record("b"))


def test_cccd_year_digits_are_checked_against_the_year_only() -> None:
    card = (RawIdentifier(IdentifierSystem.CCCD, "079090001234", ""),)
    for birth_date in ("1990", "1990-11"):
        person = new_person(
            validate_registration(registration_input(identifiers=card, birth_date=birth_date), TODAY),
            "p",
            NOW,
        )
        assert person.data_quality_warnings == ()
    # Another year registers, flagged.
    other_year = validate_registration(registration_input(identifiers=card, birth_date="1991"), TODAY)
    assert new_person(other_year, "p", NOW).data_quality_warnings == (
        DataQualityWarning.CCCD_BIRTH_YEAR_MISMATCH,
    )


def test_match_record_carries_the_partial_date() -> None:
    registration = validate_registration(registration_input(birth_date="1985"), TODAY)
    assert match_record(registration, "r1").birth_date == BirthDate(1985)


# --- BHYT cards --------------------------------------------------------------------------------------


def bhyt(value: str, card: RawBhytCard | None = None) -> tuple[RawIdentifier, ...]:
    return (RawIdentifier(IdentifierSystem.BHYT, value, "", card),)


def test_group_codes_carry_one_benefit_level_each() -> None:
    codes = [group.code for group in BHYT_GROUPS]
    # 43 codes of Decision 1351/QD-BHXH and LH since 1 July 2025, whose level changes on 1 January 2026.
    assert len(set(codes)) == 44
    assert [code for code in codes if codes.count(code) > 1] == ["LH", "LH"]
    for code in set(codes):
        periods = sorted((g.valid_from, g.valid_to or date.max) for g in BHYT_GROUPS if g.code == code)
        assert all(end < next_start for (_, end), (next_start, _) in pairwise(periods))
    assert all(1 <= group.benefit_level <= 5 for group in BHYT_GROUPS)
    assert {g.code: g.benefit_level for g in BHYT_GROUPS if g.code in ("TE", "CK", "HT", "DN", "QN")} == {
        "TE": 1,
        "CK": 2,
        "HT": 3,
        "DN": 4,
        "QN": 5,
    }


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("ZZ4790123456789", "beneficiary group ZZ is not on the official list in force"),
        ("AB4790123456789", "beneficiary group AB is not on the official list in force"),
        ("DN1790123456789", "benefit level of group DN is 4"),
        ("TE4790123456789", "benefit level of group TE is 1"),
    ],
)
def test_unknown_group_or_wrong_level_is_refused(value: str, problem: str) -> None:
    assert bhyt_card_code_problem(value, TODAY) == problem
    assert violations_of(registration_input(identifiers=bhyt(value))) == {"identifiers[0].value": problem}


@pytest.mark.parametrize("value", ["DN4790123456789", "TE1010000000001", "QN5310000000001", "7901234567"])
def test_listed_groups_and_10_digit_codes_pass(value: str) -> None:
    assert bhyt_card_code_problem(value, TODAY) is None


def test_a_group_is_valid_only_within_its_dates() -> None:
    assert bhyt_group("LH", date(2025, 6, 30)) is None
    assert bhyt_card_code_problem("LH4790123456789", date(2025, 12, 31)) is None
    assert bhyt_card_code_problem("LH4790123456789", date(2026, 1, 1)) == "benefit level of group LH is 2"
    assert bhyt_card_code_problem("LH2790123456789", date(2026, 1, 1)) is None
    assert bhyt_group("DN", TODAY) is not None
    assert bhyt_group("DN", date(2015, 1, 1)) is None  # before the list took effect
    assert bhyt_card_code_problem("DN4790123456789", date(2015, 1, 1)) is not None


@pytest.mark.parametrize(
    ("level", "share"),
    [
        (1, Decimal("1.00")),
        (2, Decimal("1.00")),
        (3, Decimal("0.95")),
        (4, Decimal("0.80")),
        (5, Decimal("1.00")),
    ],
)
def test_coverage_share_per_benefit_level(level: int, share: Decimal) -> None:
    assert coverage_share(level) == share


@pytest.mark.parametrize("level", [0, 6, -1])
def test_coverage_share_refuses_other_levels(level: int) -> None:
    with pytest.raises(ValueError, match="benefit level"):
        coverage_share(level)


def test_benefit_level_of_a_card_code() -> None:
    assert bhyt_benefit_level("HT3790123456789") == 3
    assert bhyt_benefit_level("7901234567") is None


def test_card_validity_and_primary_care_facility_are_kept() -> None:
    card = RawBhytCard("2026-01-01", "2026-12-31", " 92001 ")
    registration = validate_registration(registration_input(identifiers=bhyt("DN4920123456789", card)), TODAY)
    assert registration.identifiers == (
        Identifier(
            IdentifierSystem.BHYT,
            "DN4920123456789",
            "",
            bhyt_card=BhytCard(date(2026, 1, 1), date(2026, 12, 31), "92001"),
        ),
    )


def test_card_fields_are_optional() -> None:
    registration = validate_registration(
        registration_input(identifiers=bhyt("7901234567", RawBhytCard())), TODAY
    )
    assert registration.identifiers[0].bhyt_card == BhytCard()


@pytest.mark.parametrize(
    ("card", "field"),
    [
        (RawBhytCard("2026-12-31", "2026-01-01"), "identifiers[0].bhyt_card.valid_to"),
        (RawBhytCard("2026-13-01", ""), "identifiers[0].bhyt_card.valid_from"),
        (RawBhytCard("", "31/12/2026"), "identifiers[0].bhyt_card.valid_to"),
        (RawBhytCard("", "20261231"), "identifiers[0].bhyt_card.valid_to"),
        (RawBhytCard("", "", "9200"), "identifiers[0].bhyt_card.primary_care_facility_code"),
        (RawBhytCard("", "", "92-001"), "identifiers[0].bhyt_card.primary_care_facility_code"),
    ],
)
def test_bad_card_fields_are_refused_naming_the_field(card: RawBhytCard, field: str) -> None:
    assert list(violations_of(registration_input(identifiers=bhyt("DN4790123456789", card)))) == [field]


def test_only_bhyt_identifiers_carry_a_card() -> None:
    cccd = (RawIdentifier(IdentifierSystem.CCCD, "079090001234", "", RawBhytCard("2026-01-01")),)
    assert violations_of(registration_input(identifiers=cccd)) == {
        "identifiers[0].bhyt_card": "only BHYT identifiers carry a card"
    }


# --- CCCD of a birth registered abroad --------------------------------------------------------------


def test_cccd_off_the_province_list_needs_the_abroad_flag() -> None:
    card = (RawIdentifier(IdentifierSystem.CCCD, "999090001234", ""),)
    assert (
        "cccd_registered_abroad"
        in violations_of(registration_input(identifiers=card))["identifiers[0].value"]
    )
    accepted = validate_registration(registration_input(identifiers=card, cccd_registered_abroad=True), TODAY)
    assert accepted.identifiers == (Identifier(IdentifierSystem.CCCD, "999090001234", ""),)


def test_abroad_flag_still_checks_the_sex_digit() -> None:
    card = (RawIdentifier(IdentifierSystem.CCCD, "999191001234", ""),)  # female digit, male person
    found = violations_of(registration_input(identifiers=card, cccd_registered_abroad=True))
    assert found == {"identifiers[0].value": "century/sex digit disagrees with sex"}
    assert cccd_problem("999090001234", 1990, None, registered_abroad=True) is None
    assert cccd_problem("99909000123", 1990, None, registered_abroad=True) == "a CCCD has exactly 12 digits"


# --- claim profile (nationality, ethnic group, occupation, address) ---------------------------

CCCD = RawIdentifier(IdentifierSystem.CCCD, "079090001234", "")


def test_a_full_claim_profile_is_kept_normalised() -> None:
    given = ClaimProfile("vnm", " 08 ", "61", "  12  Đường Thử,\tPhường Thử ", "26734", "760")
    registered = validate_registration(registration_input(claim_profile=given), TODAY)
    assert registered.claim_profile == ClaimProfile(
        "VNM", "08", "61", "12 Đường Thử, Phường Thử", "26734", "760"
    )


def test_a_cccd_without_a_nationality_is_vietnamese_and_nothing_else_is_assumed() -> None:
    with_cccd = validate_registration(registration_input(identifiers=(CCCD,)), TODAY)
    assert with_cccd.claim_profile == ClaimProfile(nationality_code=VIETNAMESE_NATIONALITY)
    assert validate_registration(registration_input(), TODAY).claim_profile == ClaimProfile()
    explicit = registration_input(identifiers=(CCCD,), claim_profile=ClaimProfile(nationality_code="123"))
    assert validate_registration(explicit, TODAY).claim_profile.nationality_code == "123"


@pytest.mark.parametrize(
    ("profile", "field"),
    [
        (ClaimProfile(nationality_code="VN"), "nationality_code"),
        (ClaimProfile(nationality_code="V-N"), "nationality_code"),
        (ClaimProfile(ethnicity_code="00"), "ethnicity_code"),
        (ClaimProfile(ethnicity_code="55"), "ethnicity_code"),
        (ClaimProfile(ethnicity_code="1"), "ethnicity_code"),
        (ClaimProfile(occupation_code="1A"), "occupation_code"),
        (ClaimProfile(occupation_code="123"), "occupation_code"),
        (ClaimProfile(address="x" * 1025), "address"),
        (ClaimProfile(commune_code="2673"), "commune_code"),
        (ClaimProfile(commune_code="2673A"), "commune_code"),
        (ClaimProfile(district_code="76"), "district_code"),
    ],
)
def test_a_bad_claim_profile_field_is_named(profile: ClaimProfile, field: str) -> None:
    assert list(violations_of(registration_input(claim_profile=profile))) == [field]


def test_every_bad_claim_profile_field_is_reported_at_once() -> None:
    bad = ClaimProfile("??", "99", "x", "", "1", "1")
    assert set(violations_of(registration_input(claim_profile=bad))) == {
        "nationality_code",
        "ethnicity_code",
        "occupation_code",
        "commune_code",
        "district_code",
    }


def test_the_ethnic_groups_are_01_to_54() -> None:
    assert [code for code in (f"{n:02d}" for n in range(100)) if is_ethnicity_code(code)] == [
        f"{n:02d}" for n in range(1, 55)
    ]
