"""Unit tests of the request guard's pure parts: field limits, timestamp range, token buckets."""

from __future__ import annotations

from emr.identity.v1 import identity_pb2
from emr.records.v1 import records_pb2

from emr_runtime.guard import (
    DEFAULT_STRING_LIMIT,
    MAX_TIMESTAMP_SECONDS,
    TokenBuckets,
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
