"""Unit tests of the identity domain: validation and normalisation of registrations (pure, no I/O)."""

from __future__ import annotations

import unicodedata
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

import pytest

from emr_identity.birth_dates import BirthDate
from emr_identity.claim_profile import ClaimProfile
from emr_identity.domain import (
    DataQualityWarning,
    Identifier,
    IdentifierSystem,
    PersonStatus,
    RawIdentifier,
    Registration,
    RegistrationInput,
    Sex,
    check_patient_id,
    identifier_key,
    new_person,
    normalize_identifier_value,
    phone_key,
    validate_registration,
)
from emr_identity.matching import blocking_keys, match_record
from emr_identity.vietnamese import NameParts, normalize_name
from emr_runtime.errors import InvalidArgumentError

TODAY = date(2024, 6, 15)
NOW = datetime(2024, 6, 15, 8, 30, tzinfo=UTC)
DIEP = "Nguyễn Thị Ngọc Điệp"


def cccd(value: str = "079090001234") -> RawIdentifier:
    return RawIdentifier(IdentifierSystem.CCCD, value, "")


def bhyt(value: str, facility_code: str = "") -> RawIdentifier:
    return RawIdentifier(IdentifierSystem.BHYT, value, facility_code)


def passport(value: str) -> RawIdentifier:
    return RawIdentifier(IdentifierSystem.PASSPORT, value, "")


def mrn(value: str = "HS-2024/0001", facility_code: str = "79001") -> RawIdentifier:
    return RawIdentifier(IdentifierSystem.MRN, value, facility_code)


def registration_input(**changes: Any) -> RegistrationInput:
    valid = RegistrationInput(
        request_id="2f8c0a36-6a4e-4a0c-9d0b-1f1b6a9f5c11",
        identifiers=(cccd(),),
        full_name="Trần Văn An",
        birth_date="1990-05-01",
        sex=Sex.MALE,
        facility_code="79001",
        fingerprint="fp-1",
    )
    return replace(valid, **changes)


def violations_of(raw: RegistrationInput) -> dict[str, str]:
    """field -> description of every violation reported for ``raw``."""
    with pytest.raises(InvalidArgumentError) as caught:
        validate_registration(raw, TODAY)
    fields = [v.field for v in caught.value.violations]
    assert len(fields) == len(set(fields)), f"a field reported twice: {fields}"
    return {v.field: v.description for v in caught.value.violations}


def only_violation(raw: RegistrationInput) -> str:
    """The field of the single violation reported for ``raw``."""
    found = violations_of(raw)
    assert len(found) == 1, found
    return next(iter(found))


# --- a valid registration -------------------------------------------------------------------------


def test_valid_registration_is_normalised() -> None:
    raw = registration_input(
        identifiers=(
            cccd(" 0790 9000 1234 "),
            bhyt("dn4790123456789"),
            mrn(" HS-2024/0001 ", " 79001 "),
        ),
        full_name="  Trần   Văn\tAn ",
        facility_code=" ab12c ",
    )
    registration = validate_registration(raw, TODAY)
    assert registration == Registration(
        request_id=raw.request_id,
        identifiers=(
            Identifier(IdentifierSystem.CCCD, "079090001234", ""),
            Identifier(IdentifierSystem.BHYT, "DN4790123456789", ""),
            Identifier(IdentifierSystem.MRN, "HS-2024/0001", "79001"),
        ),
        full_name="Trần Văn An",
        birth_date=BirthDate(1990, 5, 1),
        sex=Sex.MALE,
        facility_code="AB12C",
        fingerprint="fp-1",
        name_parts=NameParts("trần", "văn", "an"),
        # A CCCD is issued to Vietnamese citizens only.
        claim_profile=ClaimProfile(nationality_code="000"),
    )


def test_registration_without_identifiers_is_valid() -> None:
    registration = validate_registration(registration_input(identifiers=()), TODAY)
    assert registration.identifiers == ()


@pytest.mark.parametrize("sex", list(Sex))
def test_every_sex_is_accepted(sex: Sex) -> None:
    # Without a CCCD: its sex digit would have to agree (see the CCCD consistency tests).
    assert validate_registration(registration_input(sex=sex, identifiers=()), TODAY).sex is sex


# --- request_id ------------------------------------------------------------------------------------


@pytest.mark.parametrize("request_id", ["", "   ", "x" * 129, "abc\x00def", "line\nbreak"])
def test_bad_request_id(request_id: str) -> None:
    assert only_violation(registration_input(request_id=request_id)) == "request_id"


def test_request_id_of_128_characters_is_accepted() -> None:
    request_id = "r" * 128
    assert validate_registration(registration_input(request_id=request_id), TODAY).request_id == request_id


# --- full_name -------------------------------------------------------------------------------------


@pytest.mark.parametrize("full_name", ["", "    ", "\t\n", "12345", "0123 456 789", "-- ..", "x" * 201])
def test_bad_full_name(full_name: str) -> None:
    assert only_violation(registration_input(full_name=full_name)) == "full_name"


def test_full_name_of_200_characters_is_accepted() -> None:
    name = "Lê " + "a" * 197
    assert len(name) == 200
    assert validate_registration(registration_input(full_name=name), TODAY).full_name == name


def test_full_name_length_is_counted_after_whitespace_collapsing() -> None:
    name = "Lê" + " " * 150 + "a" * 100  # 252 characters raw, 103 after collapsing
    assert validate_registration(registration_input(full_name=name), TODAY).full_name == "Lê " + "a" * 100


def test_full_name_with_digits_and_letters_is_accepted() -> None:
    assert validate_registration(registration_input(full_name="Trần Văn An 2"), TODAY).full_name == (
        "Trần Văn An 2"
    )


def test_nfc_and_nfd_names_normalise_to_the_same_string() -> None:
    nfc = unicodedata.normalize("NFC", DIEP)
    nfd = unicodedata.normalize("NFD", DIEP)
    assert nfc != nfd  # the inputs really differ, code point by code point
    assert len(nfd) > len(nfc)
    assert normalize_name(nfd) == normalize_name(nfc) == nfc
    from_nfd = validate_registration(registration_input(full_name=nfd), TODAY)
    from_nfc = validate_registration(registration_input(full_name=nfc), TODAY)
    assert from_nfd.full_name == from_nfc.full_name == nfc
    assert unicodedata.is_normalized("NFC", from_nfd.full_name)


def test_nfd_name_is_measured_after_normalisation() -> None:
    # 200 characters in NFC, more in NFD: accepted because the limit applies to the NFC form.
    name = " ".join(["Điệp"] * 40) + "a"
    nfc = unicodedata.normalize("NFC", name)
    nfd = unicodedata.normalize("NFD", name)
    assert len(nfc) == 200
    assert len(nfd) > 200
    assert validate_registration(registration_input(full_name=nfd), TODAY).full_name == nfc


def test_whitespace_is_collapsed() -> None:
    assert normalize_name("  Nguyễn \t Thị\n\nNgọc   Điệp  ") == DIEP
    assert normalize_name("\u00a0Lê\u2003Văn\u00a0Tám") == "Lê Văn Tám"  # no-break and em spaces


# --- birth_date ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "birth_date",
    [
        "",
        "1990-13-01",
        "1990-02-30",
        "2023-02-29",
        "01/05/1990",
        "1990/05/01",
        "1990-5-1",
        "19900501",
        " 1990-05-01",
        "1990-05-01T00:00:00",
        "۱۹۹۰-۰۵-۰۱",  # Eastern Arabic digits are not YYYY-MM-DD
        "0000-01-01",
    ],
)
def test_malformed_birth_date(birth_date: str) -> None:
    assert only_violation(registration_input(birth_date=birth_date)) == "birth_date"


@pytest.mark.parametrize("birth_date", ["2024-06-16", "2099-01-01"])
def test_birth_date_in_the_future(birth_date: str) -> None:
    found = violations_of(registration_input(birth_date=birth_date))
    assert found == {"birth_date": "is in the future"}


@pytest.mark.parametrize("birth_date", ["1899-12-31", "1000-01-01"])
def test_birth_date_before_1900(birth_date: str) -> None:
    found = violations_of(registration_input(birth_date=birth_date))
    assert found == {"birth_date": "is before 1900-01-01"}


@pytest.mark.parametrize("birth_date", ["1900-01-01", "2024-06-15", "2000-02-29"])
def test_birth_date_bounds_are_inclusive(birth_date: str) -> None:
    registration = validate_registration(registration_input(birth_date=birth_date, identifiers=()), TODAY)
    assert registration.birth_date == BirthDate.parse(birth_date)


# --- sex and facility_code -------------------------------------------------------------------------


def test_sex_missing() -> None:
    assert only_violation(registration_input(sex=None)) == "sex"


@pytest.mark.parametrize("facility_code", ["", "7900", "790011", "79 001", "79-01", "7900Đ"])
def test_bad_facility_code(facility_code: str) -> None:
    assert only_violation(registration_input(facility_code=facility_code)) == "facility_code"


# --- identifiers -----------------------------------------------------------------------------------


def test_unknown_identifier_system() -> None:
    raw = registration_input(identifiers=(cccd(), RawIdentifier(None, "123", "")))
    assert only_violation(raw) == "identifiers[1].system"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "07909000123",
        "0790900012345",
        "07909000123A",
        "079-090-001-234",
        "０７９０９０００１２３４",
    ],
)
def test_cccd_must_have_12_digits(value: str) -> None:
    raw = registration_input(identifiers=(mrn(), cccd(value)))
    assert only_violation(raw) == "identifiers[1].value"


@pytest.mark.parametrize(
    ("value", "normalised"),
    [
        ("DN4790123456789", "DN4790123456789"),  # old 15-character card
        ("dn4 79 0123456789", "DN4790123456789"),
        ("HC4010000000001", "HC4010000000001"),
        ("GD4990000000000", "GD4990000000000"),
        ("7901234567", "7901234567"),  # new 10-digit social insurance code
        (" 79012 34567 ", "7901234567"),
    ],
)
def test_bhyt_accepted_forms(value: str, normalised: str) -> None:
    registration = validate_registration(registration_input(identifiers=(bhyt(value),)), TODAY)
    assert registration.identifiers == (Identifier(IdentifierSystem.BHYT, normalised, ""),)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "DN0790123456789",  # benefit level 0
        "DN6790123456789",  # benefit level 6
        "D14790123456789",  # group is two letters
        "DN479012345678",  # 14 characters
        "DN47901234567890",  # 16 characters
        "DN4A90123456789",  # province not digits
        "790123456",  # 9 digits
        "79012345678",  # 11 digits
        "790123456A",
        "079090001234",  # a CCCD is not a BHYT number
    ],
)
def test_bhyt_rejected_forms(value: str) -> None:
    raw = registration_input(identifiers=(cccd(), bhyt(value)))
    assert only_violation(raw) == "identifiers[1].value"


@pytest.mark.parametrize(("value", "normalised"), [("c1234567", "C1234567"), ("B123456", "B123456")])
def test_passport_accepted(value: str, normalised: str) -> None:
    registration = validate_registration(registration_input(identifiers=(passport(value),)), TODAY)
    assert registration.identifiers == (Identifier(IdentifierSystem.PASSPORT, normalised, ""),)


@pytest.mark.parametrize("value", ["", "   ", "C1234", "C123-4567", "C123456Đ", "C123456."])
def test_bad_passport(value: str) -> None:
    raw = registration_input(identifiers=(passport(value),))
    assert only_violation(raw) == "identifiers[0].value"


@pytest.mark.parametrize("value", ["ABCDEF", "ABCDEF123456"])
def test_passport_length_limits_are_inclusive(value: str) -> None:
    assert validate_registration(registration_input(identifiers=(passport(value),)), TODAY).identifiers[
        0
    ] == (Identifier(IdentifierSystem.PASSPORT, value, ""))


def test_passport_of_13_characters_is_rejected() -> None:
    raw = registration_input(identifiers=(passport("ABCDEF1234567"),))
    assert only_violation(raw) == "identifiers[0].value"


def test_mrn_keeps_case_and_normalises_facility_code() -> None:
    registration = validate_registration(registration_input(identifiers=(mrn(" hs.01_a ", "ab12c"),)), TODAY)
    assert registration.identifiers == (Identifier(IdentifierSystem.MRN, "hs.01_a", "AB12C"),)


@pytest.mark.parametrize("value", ["", "  ", "-123", ".abc", "HS 0001", "HS#1", "A" * 33])
def test_bad_mrn_value(value: str) -> None:
    raw = registration_input(identifiers=(cccd(), mrn(value)))
    assert only_violation(raw) == "identifiers[1].value"


def test_mrn_of_32_characters_is_accepted() -> None:
    value = "A" + "b" * 31
    assert validate_registration(registration_input(identifiers=(mrn(value),)), TODAY).identifiers[
        0
    ].value == (value)


@pytest.mark.parametrize("facility_code", ["", "   ", "7900", "790011", "79_01"])
def test_mrn_without_a_valid_facility_code(facility_code: str) -> None:
    raw = registration_input(identifiers=(cccd(), mrn("HS-1", facility_code)))
    assert only_violation(raw) == "identifiers[1].facility_code"


@pytest.mark.parametrize(
    "identifier",
    [
        RawIdentifier(IdentifierSystem.CCCD, "079090001234", "79001"),
        RawIdentifier(IdentifierSystem.BHYT, "7901234567", "79001"),
        RawIdentifier(IdentifierSystem.PASSPORT, "C1234567", "x"),
    ],
)
def test_non_mrn_identifier_with_facility_code(identifier: RawIdentifier) -> None:
    raw = registration_input(identifiers=(mrn(), identifier))
    assert only_violation(raw) == "identifiers[1].facility_code"


def test_non_mrn_identifier_with_blank_facility_code_is_accepted() -> None:
    raw = registration_input(identifiers=(RawIdentifier(IdentifierSystem.CCCD, "079090001234", "  "),))
    assert validate_registration(raw, TODAY).identifiers == (
        Identifier(IdentifierSystem.CCCD, "079090001234", ""),
    )


@pytest.mark.parametrize(
    "identifiers",
    [
        (cccd("079090001234"), cccd("079090009999")),
        (bhyt("7901234567"), bhyt("DN4790123456789")),
        (passport("C1234567"), passport("B7654321")),
        (mrn("A1", "79001"), mrn("A2", "79001")),
        (mrn("A1", "79001"), mrn("A2", " 79001 ")),  # same facility once normalised
    ],
)
def test_duplicate_identifier_system(identifiers: tuple[RawIdentifier, RawIdentifier]) -> None:
    raw = registration_input(identifiers=identifiers)
    assert only_violation(raw) == "identifiers[1]"


def test_duplicate_reported_at_the_later_index() -> None:
    raw = registration_input(
        identifiers=(cccd("079090001234"), mrn(), passport("C1234567"), cccd("001122334455"))
    )
    assert only_violation(raw) == "identifiers[3]"


def test_mrns_of_different_facilities_are_not_duplicates() -> None:
    raw = registration_input(identifiers=(mrn("A1", "79001"), mrn("A1", "01001")))
    registration = validate_registration(raw, TODAY)
    assert [i.facility_code for i in registration.identifiers] == ["79001", "01001"]


def test_invalid_identifier_does_not_count_as_a_duplicate() -> None:
    raw = registration_input(identifiers=(cccd("123"), cccd("079090001234")))
    assert only_violation(raw) == "identifiers[0].value"


# --- all violations at once ------------------------------------------------------------------------


def test_all_violations_are_reported_at_once() -> None:
    raw = RegistrationInput(
        request_id="",
        identifiers=(
            RawIdentifier(None, "x", ""),
            cccd("12345"),
            bhyt("DN4790123456789", "79001"),
            mrn("HS-1", ""),
            passport("C1234567"),
            passport("B7654321"),
        ),
        full_name="123",
        birth_date="1990-13-01",
        sex=None,
        facility_code="bad",
        fingerprint="",
    )
    with pytest.raises(InvalidArgumentError) as caught:
        validate_registration(raw, TODAY)
    assert [v.field for v in caught.value.violations] == [
        "request_id",
        "full_name",
        "birth_date",
        "sex",
        "facility_code",
        "identifiers[0].system",
        "identifiers[1].value",
        "identifiers[2].facility_code",
        "identifiers[3].facility_code",
        "identifiers[5]",
    ]
    assert all(v.description for v in caught.value.violations)
    assert "identifiers[3].facility_code" in caught.value.message


def test_identifier_with_bad_value_and_bad_facility_reports_both() -> None:
    raw = registration_input(identifiers=(mrn("", "x"),))
    assert set(violations_of(raw)) == {"identifiers[0].value", "identifiers[0].facility_code"}


# --- helpers ---------------------------------------------------------------------------------------


def test_normalize_identifier_value_removes_all_whitespace_and_uppercases() -> None:
    assert normalize_identifier_value(" dn 479\t0123456789\n") == "DN4790123456789"


def test_check_patient_id() -> None:
    assert check_patient_id("  abc  ") == "abc"
    assert check_patient_id("p" * 64) == "p" * 64
    for bad in ("", "   ", "p" * 65):
        with pytest.raises(InvalidArgumentError) as caught:
            check_patient_id(bad, "encounter.patient_id")
        assert [v.field for v in caught.value.violations] == ["encounter.patient_id"]


# --- new_person ------------------------------------------------------------------------------------


def test_new_person_puts_the_cccd_claim_key_first() -> None:
    raw = registration_input(
        identifiers=(mrn("HS-1", "79001"), bhyt("7901234567"), mrn("HS-9", "01001"), cccd("079090001234")),
    )
    registration = validate_registration(raw, TODAY)
    person = new_person(registration, "person-1", NOW)
    assert person.claim_keys == ("cccd:079090001234", "mrn:79001:HS-1", "mrn:01001:HS-9")


def test_new_person_fields() -> None:
    registration = validate_registration(
        registration_input(identifiers=(passport("C1234567"), bhyt("7901234567"))), TODAY
    )
    person = new_person(registration, "person-2", NOW)
    assert person.person_id == "person-2"
    assert person.status is PersonStatus.PROVISIONAL
    assert person.created_at == NOW
    assert person.identifiers == registration.identifiers
    assert person.full_name == registration.full_name
    assert person.birth_date == registration.birth_date
    assert person.sex is registration.sex
    assert person.registering_facility_code == registration.facility_code
    assert person.request_fingerprint == "fp-1"
    assert person.superseded_by == ""
    assert person.claim_keys == ()  # BHYT and passport need not be unique


@pytest.mark.parametrize(
    ("identifier", "claim_key"),
    [
        (Identifier(IdentifierSystem.CCCD, "079090001234"), "cccd:079090001234"),
        (Identifier(IdentifierSystem.MRN, "HS-1", "79001"), "mrn:79001:HS-1"),
        (Identifier(IdentifierSystem.BHYT, "7901234567"), None),
        (Identifier(IdentifierSystem.PASSPORT, "C1234567"), None),
    ],
)
def test_claim_key(identifier: Identifier, claim_key: str | None) -> None:
    assert identifier.claim_key == claim_key


# --- lookup keys (the one place identifier and phone values become keys) ----------------------------


@pytest.mark.parametrize(
    ("system", "value", "facility_code", "key"),
    [
        (IdentifierSystem.CCCD, "079090001234", "", "cccd:079090001234"),
        (IdentifierSystem.BHYT, "7901234567", "", "bhyt:7901234567"),
        (IdentifierSystem.PASSPORT, "C1234567", "", "pp:C1234567"),
        (IdentifierSystem.MRN, "HS-1", "79001", "mrn:79001:HS-1"),
    ],
)
def test_identifier_key(system: IdentifierSystem, value: str, facility_code: str, key: str) -> None:
    assert identifier_key(system, value, facility_code) == key


def test_identifier_keys_of_different_systems_or_facilities_differ() -> None:
    keys = {identifier_key(s, "123456789012", "79001") for s in IdentifierSystem}
    keys.add(identifier_key(IdentifierSystem.MRN, "123456789012", "01001"))
    assert len(keys) == len(IdentifierSystem) + 1


def test_phone_key_differs_from_every_identifier_key() -> None:
    assert phone_key("0912345678") == "ph:0912345678"
    assert phone_key("0912345678") not in {identifier_key(s, "0912345678") for s in IdentifierSystem}


def test_claim_and_block_keys_come_from_identifier_key() -> None:
    registration = validate_registration(
        registration_input(identifiers=(cccd("079090001234"), bhyt("7901234567")), phone="0912345678"),
        TODAY,
    )
    person = new_person(registration, "person-3", NOW)
    record = match_record(registration, "record-3")
    assert person.claim_keys == (identifier_key(IdentifierSystem.CCCD, "079090001234"),)
    keys = blocking_keys(record)
    assert identifier_key(IdentifierSystem.CCCD, "079090001234") in keys
    assert identifier_key(IdentifierSystem.BHYT, "7901234567") in keys
    assert phone_key("0912345678") in keys


# --- a CCCD against the birth date and sex: refusal or data-quality warning --------------------------


def warnings_of(raw: RegistrationInput) -> tuple[DataQualityWarning, ...]:
    return new_person(validate_registration(raw, TODAY), "p", NOW).data_quality_warnings


@pytest.mark.parametrize(
    ("card", "birth_date", "sex"),
    [
        ("079091001234", "1990-05-01", Sex.MALE),  # year digits 91
        ("079199001234", "2000-01-05", Sex.FEMALE),  # 1999 by the card: a year off, across centuries
        ("079091001234", "1990", Sex.UNKNOWN),  # no sex to check the digit against
        ("079205001234", "1905-03", Sex.MALE),  # 2005 by the card
    ],
)
def test_a_cccd_whose_birth_year_disagrees_registers_with_a_warning(
    card: str, birth_date: str, sex: Sex
) -> None:
    raw = registration_input(identifiers=(cccd(card),), birth_date=birth_date, sex=sex)
    assert warnings_of(raw) == (DataQualityWarning.CCCD_BIRTH_YEAR_MISMATCH,)
    # The override still accepts it, and the doubt is still shown.
    assert warnings_of(replace(raw, accept_inconsistent_cccd=True)) == (
        DataQualityWarning.CCCD_BIRTH_YEAR_MISMATCH,
    )


def test_a_cccd_that_agrees_carries_no_warning() -> None:
    assert warnings_of(registration_input()) == ()
    assert warnings_of(registration_input(identifiers=())) == ()
    # A corrected birth date clears it: the warning is derived from what the person holds now.
    person = new_person(
        validate_registration(registration_input(identifiers=(cccd("079091001234"),)), TODAY), "p", NOW
    )
    assert replace(person, birth_date=BirthDate(1991, 5, 1)).data_quality_warnings == ()


@pytest.mark.parametrize(
    ("card", "sex", "problem"),
    [
        ("079190001234", Sex.MALE, "century/sex digit disagrees with sex"),  # digit 1: female
        ("079090001234", Sex.FEMALE, "century/sex digit disagrees with sex"),
        ("079290001234", Sex.MALE, "name a birth year still to come"),  # 2090
    ],
)
def test_a_cccd_whose_century_or_sex_digit_disagrees_is_refused_unless_overridden(
    card: str, sex: Sex, problem: str
) -> None:
    raw = registration_input(identifiers=(cccd(card),), sex=sex)
    assert problem in violations_of(raw)["identifiers[0].value"]
    assert (
        validate_registration(replace(raw, accept_inconsistent_cccd=True), TODAY).identifiers[0].value == card
    )
