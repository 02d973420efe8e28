"""Unit tests of the pure parts of emr_runtime: paging, idempotency, error mapping, caller (no I/O)."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from google.rpc import error_details_pb2

from emr_runtime.caller import (
    PURPOSE_OF_USE_KEY,
    UNKNOWN_ACTOR,
    Caller,
    caller_from_metadata,
    purpose_metadata,
)
from emr_runtime.errors import (
    ConflictError,
    DependencyUnavailableError,
    DomainError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    Violations,
)
from emr_runtime.fieldcrypt import FieldCrypt
from emr_runtime.idempotency import MAX_REQUEST_ID_LENGTH, check_request_id, derive_id, fingerprint
from emr_runtime.interceptors import ERROR_DOMAIN, status_for
from emr_runtime.keys import REQUEST_FINGERPRINT, page_token_purpose
from emr_runtime.paging import page_size

# --- paging (page tokens: test_page_tokens.py) -------------------------------------------------


@pytest.mark.parametrize(("requested", "expected"), [(0, 50), (1, 1), (73, 73), (500, 500)])
def test_page_size_within_bounds(requested: int, expected: int) -> None:
    assert page_size(requested, default=50, maximum=500) == expected


@pytest.mark.parametrize("requested", [-1, 501, 10_000])
def test_page_size_out_of_bounds(requested: int) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        page_size(requested, default=50, maximum=500)
    assert [(v.field, v.description) for v in caught.value.violations] == [
        ("page_size", "must be between 0 and 500")
    ]


# --- idempotency -----------------------------------------------------------------------------------


def test_derive_id_is_deterministic() -> None:
    assert derive_id("patient", "req-1") == derive_id("patient", "req-1")


def test_derive_id_is_a_version_5_uuid() -> None:
    derived = uuid.UUID(derive_id("encounter", "req-1"))
    assert derived.version == 5
    assert str(derived) == derive_id("encounter", "req-1")


def test_derive_id_differs_by_kind_and_request_id() -> None:
    ids = {
        derive_id("patient", "req-1"),
        derive_id("encounter", "req-1"),
        derive_id("patient", "req-2"),
        derive_id("encounter", "req-2"),
        derive_id("patient", "REQ-1"),
    }
    assert len(ids) == 5


def test_derive_id_separates_kind_from_request_id() -> None:
    assert derive_id("ab", "c") != derive_id("a", "bc")


def test_fingerprint_is_stable_for_one_key_and_differs_across_keys() -> None:
    key, other_key = b"k" * 32, b"K" * 32
    assert fingerprint(key, b"abc") == fingerprint(key, b"abc")
    assert fingerprint(key, b"abc") != fingerprint(key, b"abd")
    assert fingerprint(key, b"abc") != fingerprint(other_key, b"abc")


def test_fingerprint_is_not_the_plain_hash_of_the_request() -> None:
    # A database dump holds the digest: unkeyed, a 12-digit CCCD inside it is found by trying them all.
    payload = b"\x0a\x0c079192000001"
    assert fingerprint(b"k" * 32, payload) != hashlib.sha256(payload).hexdigest()
    with pytest.raises(ValueError, match="key"):
        fingerprint(b"", payload)


def test_fingerprint_keys_are_derived_per_purpose_from_the_blind_index_key() -> None:
    crypt = FieldCrypt({"k1": b"e" * 32}, "k1", b"i" * 32)
    other = FieldCrypt({"k1": b"e" * 32}, "k1", b"j" * 32)
    key = crypt.derived_key(REQUEST_FINGERPRINT)
    assert key == crypt.derived_key(REQUEST_FINGERPRINT)  # replicas with the same secret agree
    assert key != other.derived_key(REQUEST_FINGERPRINT)
    assert key != crypt.derived_key(page_token_purpose("records"))
    assert key not in (crypt.blind_index_key, b"i" * 32)
    assert fingerprint(key, b"abc") != fingerprint(other.derived_key(REQUEST_FINGERPRINT), b"abc")


@pytest.mark.parametrize("request_id", ["r", "2f8c0a36-6a4e-4a0c-9d0b-1f1b6a9f5c11", "x" * 128, "mã số 1"])
def test_check_request_id_accepts(request_id: str) -> None:
    violations = Violations()
    check_request_id(violations, request_id)
    assert not violations


@pytest.mark.parametrize(
    ("request_id", "description"),
    [
        ("", "required: a unique id of this request, e.g. a UUID"),
        ("   ", "required: a unique id of this request, e.g. a UUID"),
        ("x" * 129, "at most 128 characters"),
        ("abc\x00", "must be printable text"),
        ("a\nb", "must be printable text"),
        ("\u200b" + "a", "must be printable text"),
    ],
)
def test_check_request_id_rejects(request_id: str, description: str) -> None:
    assert MAX_REQUEST_ID_LENGTH == 128
    violations = Violations()
    check_request_id(violations, request_id, field="create.request_id")
    with pytest.raises(InvalidArgumentError) as caught:
        violations.raise_if_any()
    assert caught.value.violations == (FieldViolation("create.request_id", description),)


# --- errors ----------------------------------------------------------------------------------------


def test_violations_collect_all_and_raise_once() -> None:
    violations = Violations()
    violations.raise_if_any()  # nothing yet: no error
    violations.add("a", "first")
    violations.add("b[0].c", "second")
    assert violations
    with pytest.raises(InvalidArgumentError) as caught:
        violations.raise_if_any()
    assert caught.value.violations == (FieldViolation("a", "first"), FieldViolation("b[0].c", "second"))
    assert caught.value.message == "invalid request: a, b[0].c"


# --- interceptors.status_for -----------------------------------------------------------------------


def test_invalid_argument_becomes_code_3_with_bad_request() -> None:
    error = InvalidArgumentError(
        [FieldViolation("full_name", "required"), FieldViolation("identifiers[1].value", "12 digits")]
    )
    status = status_for(error)
    assert status.code == 3
    assert status.message == "invalid request: full_name, identifiers[1].value"
    assert len(status.details) == 1
    assert status.details[0].type_url == "type.googleapis.com/google.rpc.BadRequest"
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("full_name", "required"),
        ("identifiers[1].value", "12 digits"),
    ]


def test_not_found_becomes_code_5_with_error_info() -> None:
    status = status_for(NotFoundError("Patient", "patient_id", "p-1"))
    assert status.code == 5
    assert status.message == "Patient named by patient_id was not found"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "NOT_FOUND"
    assert info.domain == ERROR_DOMAIN
    assert info.metadata["field"] == "patient_id"
    assert info.metadata["resource_type"] == "Patient"
    assert "p-1" not in status.SerializeToString().decode("utf-8", "replace")


def test_conflict_becomes_code_10() -> None:
    status = status_for(ConflictError("request_id reused for different content", field="request_id"))
    assert status.code == 10
    assert status.message == "request_id reused for different content"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "CONFLICT"
    assert info.metadata["field"] == "request_id"


def test_dependency_unavailable_becomes_code_14_with_retry_info() -> None:
    status = status_for(DependencyUnavailableError("database"))
    assert status.code == 14
    assert status.message == "database is unavailable; retry later"
    retry = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry)
    assert retry.retry_delay.seconds == 1


def test_other_domain_error_becomes_failed_precondition() -> None:
    class QuotaSpentError(DomainError):
        pass

    status = status_for(QuotaSpentError("quota spent"))
    assert status.code == 9
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "QuotaSpentError"


# --- caller ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("metadata", [None, [], [("other", "x")]])
def test_caller_defaults(metadata: list[tuple[str, str]] | None) -> None:
    assert caller_from_metadata(metadata) == Caller(
        actor_id=UNKNOWN_ACTOR, facility_code="", purpose_of_use=""
    )
    assert UNKNOWN_ACTOR == "anonymous"


def test_caller_reads_only_the_purpose_from_metadata() -> None:
    # Identity comes from the verified token alone (emr_runtime.access), never from headers.
    metadata = [("x-actor-id", "doctor-17"), ("x-facility-code", "79001"), (PURPOSE_OF_USE_KEY, "TREAT")]
    assert caller_from_metadata(metadata) == Caller(UNKNOWN_ACTOR, "", "TREAT")


def test_caller_ignores_binary_values_and_truncates_the_purpose() -> None:
    assert caller_from_metadata([(PURPOSE_OF_USE_KEY, b"TREAT")]).purpose_of_use == ""
    assert caller_from_metadata([(PURPOSE_OF_USE_KEY, "p" * 100)]).purpose_of_use == "p" * 32


def test_purpose_metadata_round_trip() -> None:
    assert purpose_metadata("") == []
    assert caller_from_metadata(purpose_metadata("TREAT")).purpose_of_use == "TREAT"


def test_lock_races_and_lost_connections_are_transient_other_failures_are_not() -> None:
    from pymongo.errors import AutoReconnect, OperationFailure

    from emr_runtime.db import is_transient

    busy = OperationFailure("[collection.go:177 UpdateAll] database is locked (5) (SQLITE_BUSY)", code=1)
    assert is_transient(busy)
    assert is_transient(AutoReconnect("connection reset"))
    assert not is_transient(OperationFailure("unknown operator: $foo", code=2))
    assert not is_transient(ValueError("not a database error"))


def test_grpc_code_labels_are_the_go_grpc_prometheus_names() -> None:
    import grpc

    from emr_runtime.metrics import code_label

    assert code_label(grpc.StatusCode.OK) == "OK"
    assert code_label(grpc.StatusCode.NOT_FOUND) == "NotFound"
    assert code_label(grpc.StatusCode.CANCELLED) == "Canceled"
    assert code_label(grpc.StatusCode.DEADLINE_EXCEEDED) == "DeadlineExceeded"
    assert code_label(grpc.StatusCode.UNAUTHENTICATED) == "Unauthenticated"
