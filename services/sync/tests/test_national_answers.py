"""Unit tests of what the national side's answers mean for a delivery (pure, no I/O)."""

from __future__ import annotations

import json
from datetime import timedelta
from email.utils import format_datetime

from multidict import CIMultiDict

from emr_runtime.clock import utc_now
from emr_sync.clients import Answer, rejection_reason, retry_after, send_result
from emr_sync.domain import SendOutcome

DEFAULT_WAIT = timedelta(seconds=5)


def answer(status: int, body: object = None, **headers: str) -> Answer:
    raw = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    return Answer(status, CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()}), raw)


def test_success_takes_the_transaction_id_from_the_header_before_the_body() -> None:
    header_and_body = send_result(answer(200, {"id": "from-body"}, X_Transaction_Id="tx-1"), DEFAULT_WAIT)
    body_only = send_result(answer(201, {"id": "from-body"}), DEFAULT_WAIT)
    not_json = send_result(answer(200, b"<ok/>"), DEFAULT_WAIT)
    assert (header_and_body.outcome, header_and_body.transaction_id) == (SendOutcome.DELIVERED, "tx-1")
    assert body_only.transaction_id == "from-body"
    assert (not_json.outcome, not_json.transaction_id) == (SendOutcome.DELIVERED, "")


def test_429_is_throttled_for_retry_after_seconds_or_date_or_the_default() -> None:
    in_seconds = send_result(answer(429, retry_after="7"), DEFAULT_WAIT)
    unreadable = send_result(answer(429, retry_after="soon"), DEFAULT_WAIT)
    absent = send_result(answer(429), DEFAULT_WAIT)
    assert (in_seconds.outcome, in_seconds.retry_after) == (SendOutcome.THROTTLED, timedelta(seconds=7))
    assert unreadable.retry_after == DEFAULT_WAIT
    assert absent.retry_after == DEFAULT_WAIT
    as_date = retry_after(
        answer(429, retry_after=format_datetime(utc_now() + timedelta(minutes=2), True)), DEFAULT_WAIT
    )
    assert timedelta(seconds=100) < as_date <= timedelta(minutes=2)
    assert retry_after(
        answer(429, retry_after=format_datetime(utc_now() - timedelta(minutes=2), True)), DEFAULT_WAIT
    ) == timedelta(0)


def test_validation_errors_are_rejections_with_the_national_reason() -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": [{"diagnostics": "Bundle.entry[0]: required"}]}
    rejected = send_result(answer(422, outcome), DEFAULT_WAIT)
    assert (rejected.outcome, rejected.error) == (SendOutcome.REJECTED, "HTTP 422: Bundle.entry[0]: required")
    assert rejection_reason(answer(400, {"detail": "bad envelope"})) == "HTTP 400: bad envelope"
    assert rejection_reason(answer(409, b"conflict")) == "HTTP 409"


def test_server_errors_are_transient_and_503_honours_retry_after() -> None:
    unavailable = send_result(answer(503, retry_after="30"), DEFAULT_WAIT)
    broken = send_result(answer(500), DEFAULT_WAIT)
    assert (unavailable.outcome, unavailable.retry_after) == (SendOutcome.TRANSIENT, timedelta(seconds=30))
    assert send_result(answer(503), DEFAULT_WAIT).retry_after is None
    assert (broken.outcome, broken.error) == (SendOutcome.TRANSIENT, "national system answered HTTP 500")


def test_a_forbidden_submission_is_a_rejection_not_a_retry() -> None:
    # The portal's 403: this client may not submit that facility's data; resending cannot help.
    outcome = {"resourceType": "OperationOutcome", "issue": [{"diagnostics": "facility 79001 only"}]}
    forbidden = send_result(answer(403, outcome), DEFAULT_WAIT)
    assert (forbidden.outcome, forbidden.error) == (SendOutcome.REJECTED, "HTTP 403: facility 79001 only")
