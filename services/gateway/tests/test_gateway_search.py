"""Unit tests of the gateway's FHIR search parameter parsing (pure, no I/O)."""

from __future__ import annotations

import pytest

from emr_gateway.search import SearchParameterError, loinc_code, page_count, patient_reference, resource_id

PATIENT_ID = "0b6c3f4e-3a1d-5b1f-9c7e-2d6f8a9b0c1d"


@pytest.mark.parametrize("value", [PATIENT_ID, f"Patient/{PATIENT_ID}"])
def test_patient_reference_accepts_an_id_or_a_relative_reference(value: str) -> None:
    assert patient_reference(value) == PATIENT_ID


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (None, "required"),
        ("", "required"),
        (f"Practitioner/{PATIENT_ID}", "must reference a Patient"),
        ("Patient/", "FHIR id"),
        ("a b", "FHIR id"),
        ("x" * 65, "FHIR id"),
        ("Patient/a/b", "FHIR id"),
        ("'; drop", "FHIR id"),
    ],
)
def test_patient_reference_refuses(value: str | None, problem: str) -> None:
    with pytest.raises(SearchParameterError, match=problem) as raised:
        patient_reference(value)
    assert raised.value.parameter == "patient"


def test_resource_id_names_its_parameter() -> None:
    assert resource_id("abc-1.2", "id") == "abc-1.2"
    with pytest.raises(SearchParameterError, match="search parameter id"):
        resource_id("a/b", "id")


@pytest.mark.parametrize(
    ("value", "size"), [(None, 0), ("1", 1), ("20", 20), ("100", 100), ("101", 100), ("9999", 100)]
)
def test_page_count_is_capped_at_the_maximum(value: str | None, size: int) -> None:
    assert page_count(value, 100) == size


@pytest.mark.parametrize("value", ["0", "-1", "abc", "", "1.5", "٣"])
def test_page_count_refuses_anything_but_a_positive_whole_number(value: str) -> None:
    with pytest.raises(SearchParameterError, match="_count"):
        page_count(value, 100)


@pytest.mark.parametrize(
    ("value", "code"), [(None, ""), ("", ""), ("8867-4", "8867-4"), ("http://loinc.org|8867-4", "8867-4")]
)
def test_loinc_code_with_or_without_system(value: str | None, code: str) -> None:
    assert loinc_code(value) == code


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("http://snomed.info/sct|271649006", "only http://loinc.org"),
        ("|8867-4", "only http://loinc.org"),
        ("http://loinc.org|", "has no code"),
        ("8867-4,8480-6", "one code"),
    ],
)
def test_loinc_code_refuses(value: str, problem: str) -> None:
    with pytest.raises(SearchParameterError, match=problem):
        loinc_code(value)
