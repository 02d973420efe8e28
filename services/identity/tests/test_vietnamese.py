"""Unit tests of Vietnamese identity data rules: CCCD, BHYT, names, phones (pure, no I/O)."""

from __future__ import annotations

import unicodedata
from dataclasses import replace
from datetime import date

import pytest

from emr_identity.domain import (
    IdentifierSystem,
    RawIdentifier,
    RegistrationInput,
    Sex,
    validate_registration,
)
from emr_identity.vietnamese import (
    CCCD_PROVINCES,
    CardSex,
    bhyt_social_insurance_code,
    cccd_problem,
    fold,
    normalize_phone,
    split_name,
)
from emr_runtime.errors import InvalidArgumentError

TODAY = date(2024, 6, 15)


def registration(**changes: object) -> RegistrationInput:
    valid = RegistrationInput(
        request_id="r-1",
        identifiers=(RawIdentifier(IdentifierSystem.CCCD, "001191000123", ""),),
        full_name="Nguyễn Thị Ngọc Điệp",
        birth_date="1991-02-03",
        sex=Sex.FEMALE,
        facility_code="01001",
        fingerprint="fp",
    )
    return replace(valid, **changes)  # type: ignore[arg-type]


def violated(raw: RegistrationInput) -> list[str]:
    with pytest.raises(InvalidArgumentError) as caught:
        validate_registration(raw, TODAY)
    return [v.field for v in caught.value.violations]


def test_official_province_list_has_63_entries() -> None:
    assert len(CCCD_PROVINCES) == 63
    assert CCCD_PROVINCES["079"] == "Hồ Chí Minh"
    assert "003" not in CCCD_PROVINCES


@pytest.mark.parametrize(
    ("value", "birth", "sex"),
    [
        ("001090000001", date(1990, 1, 1), CardSex.MALE),
        ("001190000001", date(1990, 1, 1), CardSex.FEMALE),
        ("079205000001", date(2005, 7, 7), CardSex.MALE),
        ("096305000001", date(2005, 7, 7), CardSex.FEMALE),
        ("048099000001", date(1999, 1, 1), None),
    ],
)
def test_consistent_cccd(value: str, birth: date, sex: CardSex | None) -> None:
    assert cccd_problem(value, birth.year, sex) is None


@pytest.mark.parametrize(
    ("value", "birth", "sex", "problem"),
    [
        ("003090000001", date(1990, 1, 1), CardSex.MALE, "province"),  # 003 is not a province
        ("999090000001", date(1990, 1, 1), CardSex.MALE, "province"),
        ("001091000001", date(1990, 1, 1), CardSex.MALE, "birth-year"),  # year digits 91
        ("001290000001", date(1990, 1, 1), CardSex.MALE, "birth-year"),  # century 2000s
        ("001190000001", date(1990, 1, 1), CardSex.MALE, "sex"),  # female digit
        ("001090000001", date(1990, 1, 1), CardSex.FEMALE, "sex"),
        ("00109000000A", date(1990, 1, 1), CardSex.MALE, "12 digits"),
    ],
)
def test_inconsistent_cccd(value: str, birth: date, sex: CardSex, problem: str) -> None:
    found = cccd_problem(value, birth.year, sex)
    assert found is not None and problem in found


def test_inconsistent_cccd_is_rejected_naming_the_field() -> None:
    bad = (RawIdentifier(IdentifierSystem.CCCD, "001091000123", ""),)  # male digit, female person
    assert violated(registration(identifiers=bad)) == ["identifiers[0].value"]
    bad_province = (RawIdentifier(IdentifierSystem.CCCD, "003191000123", ""),)
    assert violated(registration(identifiers=bad_province)) == ["identifiers[0].value"]


def test_override_accepts_a_known_inconsistent_card() -> None:
    bad = (RawIdentifier(IdentifierSystem.CCCD, "001091000123", ""),)
    accepted = validate_registration(registration(identifiers=bad, accept_inconsistent_cccd=True), TODAY)
    assert accepted.identifiers[0].value == "001091000123"


def test_override_does_not_accept_a_wrong_province() -> None:
    bad = (RawIdentifier(IdentifierSystem.CCCD, "003191000123", ""),)
    assert violated(registration(identifiers=bad, accept_inconsistent_cccd=True)) == ["identifiers[0].value"]


def test_other_sex_checks_century_and_year_only() -> None:
    card = (RawIdentifier(IdentifierSystem.CCCD, "001091000123", ""),)
    assert validate_registration(registration(identifiers=card, sex=Sex.UNKNOWN), TODAY).sex is Sex.UNKNOWN


@pytest.mark.parametrize(
    ("value", "code"),
    [("DN4790123456789", "0123456789"), ("HC4010000000001", "0000000001"), ("7901234567", "7901234567")],
)
def test_bhyt_old_and_new_forms_share_the_10_digit_code(value: str, code: str) -> None:
    assert bhyt_social_insurance_code(value) == code


@pytest.mark.parametrize("value", ["DN0790123456789", "D14790123456789", "790123456", "DN479012345678"])
def test_bhyt_wrong_forms_have_no_code(value: str) -> None:
    assert bhyt_social_insurance_code(value) is None


def test_names_split_fold_and_keep_tones() -> None:
    parts = split_name("  NGUYỄN   Thị Ngọc\tĐiệp ")
    assert (parts.family, parts.middle, parts.given) == ("nguyễn", "thị ngọc", "điệp")
    assert parts.folded_full == "nguyen thi ngoc diep"
    assert fold("Lê") == fold("Lệ") == "le"
    assert split_name("Lê Văn Tám").given != split_name("Lê Văn Tâm").given  # tones kept


def test_explicit_name_parts_win() -> None:
    parts = split_name("Âu Dương Minh Châu", family="Âu Dương", given="Minh Châu")
    assert (parts.family, parts.middle, parts.given) == ("âu dương", "dương minh", "minh châu")


def test_nfd_and_nfc_names_give_the_same_parts() -> None:
    name = "Đặng Thị Huỳnh Như"
    assert split_name(unicodedata.normalize("NFD", name)) == split_name(unicodedata.normalize("NFC", name))


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("0912345678", "0912345678"),
        ("+84 912 345 678", "0912345678"),
        ("84912345678", "0912345678"),
        ("+84 0912.345.678", "0912345678"),
        ("0084-912-345-678", "0912345678"),
        ("(028) 3822 1234", "02838221234"),
        ("+84 28 3822 1234", "02838221234"),
    ],
)
def test_phone_forms(raw: str, normalised: str) -> None:
    assert normalize_phone(raw) == normalised


@pytest.mark.parametrize("raw", ["912345678", "0112345678", "091234567", "09123456789", "+1 912 345 678"])
def test_bad_phones(raw: str) -> None:
    assert normalize_phone(raw) is None


def test_bad_phone_and_province_are_rejected_naming_the_field() -> None:
    assert violated(registration(phone="12345")) == ["phone"]
    assert violated(registration(province_code="03")) == ["province_code"]
    ok = validate_registration(registration(phone="+84 912 345 678", province_code="79"), TODAY)
    assert (ok.phone, ok.province_code) == ("0912345678", "79")
