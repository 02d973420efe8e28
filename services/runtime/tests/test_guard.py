"""Unit tests of the request guard's pure parts: field limits, timestamp range, token buckets."""

from __future__ import annotations

import pytest
from emr.identity.v1 import identity_pb2
from emr.records.v1 import records_pb2

from emr_runtime.guard import (
    DEFAULT_STRING_LIMIT,
    MAX_TIMESTAMP_SECONDS,
    TokenBuckets,
    is_free_text,
    request_violations,
    string_limit,
)


def test_limits_follow_field_names() -> None:
    assert string_limit("request_id") == 128
    assert string_limit("facility_code") == 64
    assert string_limit("icd10_code") == 64
    assert string_limit("page_token") == 1024
    assert string_limit("full_name") == DEFAULT_STRING_LIMIT


def test_violations_name_nested_and_repeated_fields() -> None:
    request = identity_pb2.RegisterPatientRequest(
        request_id="r" * 128,
        full_name="n" * (DEFAULT_STRING_LIMIT + 1),
        identifiers=[
            identity_pb2.Identifier(value="ok"),
            identity_pb2.Identifier(value="v" * (DEFAULT_STRING_LIMIT + 1), facility_code="f" * 65),
        ],
    )
    assert sorted(v.field for v in request_violations(request)) == [
        "full_name",
        "identifiers[1].facility_code",
        "identifiers[1].value",
    ]


def test_free_text_is_told_by_field_name() -> None:
    for name in ("reason", "break_glass_reason", "value_text", "display", "justification", "note"):
        assert is_free_text(name), name
    for name in ("request_id", "patient_id", "facility_code", "code", "full_name", "drug_name", "page_token"):
        assert not is_free_text(name), name


@pytest.mark.parametrize(
    ("character", "plain", "free_text"),
    [
        ("\x00", False, False),  # NUL (C0)
        ("\x1b", False, False),  # ESC: terminal escape sequences
        ("\x7f", False, False),  # DEL
        ("\x85", False, False),  # NEL (C1)
        ("\x9b", False, False),  # CSI (C1)
        ("\t", False, True),
        ("\n", False, True),
        ("\r", False, True),
        ("\u2028", False, True),  # line separator
        ("\u200e", False, True),  # left-to-right mark
        ("\u200f", False, True),  # right-to-left mark
        ("\u061c", False, True),  # Arabic letter mark
        ("\u202a", False, False),  # bidi embedding
        ("\u202e", False, False),  # right-to-left override
        ("\u2066", False, False),  # bidi isolate
        ("\u2069", False, False),  # pop directional isolate
        ("ễ", True, True),
        ("\u00a0", True, True),  # no-break space: a printable character
        ("\u200d", True, True),  # zero-width joiner: emoji sequences
    ],
)
def test_characters_allowed_by_kind_of_field(character: str, plain: bool, free_text: bool) -> None:
    request = records_pb2.CreateEncounterRequest(
        request_id="r-1",
        patient_id=f"p{character}1",
        department=f"Khoa{character}Nội",
        reason=f"Sốt cao{character}3 ngày",
    )
    refused = {v.field for v in request_violations(request)}
    assert ("patient_id" not in refused) is plain
    assert ("department" not in refused) is plain  # neither free text nor an id: plain by default
    assert ("reason" not in refused) is free_text


def test_character_violations_name_nested_and_repeated_fields_and_the_code_point() -> None:
    request = identity_pb2.RegisterPatientRequest(
        request_id="r\n1",
        full_name="Nguyễn \u202eVăn",
        identifiers=[
            identity_pb2.Identifier(value="079192000001"),
            identity_pb2.Identifier(value="07919\x0000002"),
        ],
    )
    violations = {v.field: v.description for v in request_violations(request)}
    assert sorted(violations) == ["full_name", "identifiers[1].value", "request_id"]
    assert "U+202E" in violations["full_name"]
    assert "bidirectional" in violations["full_name"]
    assert "U+0000" in violations["identifiers[1].value"]
    assert "U+000A" in violations["request_id"]


def test_an_over_long_string_is_one_violation_whatever_it_holds() -> None:
    request = identity_pb2.RegisterPatientRequest(request_id="\x00" * 200)
    assert [(v.field, v.description) for v in request_violations(request)] == [
        ("request_id", "at most 128 characters")
    ]


def test_timestamps_outside_the_calendar_are_violations() -> None:
    request = records_pb2.ListObservationsRequest(patient_id="p")
    request.start_time.seconds = MAX_TIMESTAMP_SECONDS
    assert request_violations(request) == []
    request.start_time.seconds = MAX_TIMESTAMP_SECONDS + 1
    request.end_time.nanos = 1_000_000_000
    assert [v.field for v in request_violations(request)] == ["start_time", "end_time"]


def test_token_bucket_grants_the_burst_then_refills_per_key() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=3, clock=lambda: now[0])
    assert [buckets.take("his-a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("his-a") == 0.5  # one token comes after half a second at 2/s
    assert buckets.take("his-b") == 0.0
    now[0] = 0.5
    assert buckets.take("his-a") == 0.0
    assert buckets.take("his-a") > 0


def test_token_buckets_forget_refilled_keys_when_full() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=1.0, burst=1, clock=lambda: now[0])
    buckets.MAX_KEYS = 2
    buckets.take("a")
    buckets.take("b")
    now[0] = 10.0
    buckets.take("c")
    assert buckets.take("a") == 0.0  # forgotten means full again, as it would be
    assert len(buckets._buckets) <= 3
