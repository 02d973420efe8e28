"""Unit tests of the spool replay's deadline, back-off and failure reasons (pure, no I/O)."""

from __future__ import annotations

import grpc
from pymongo.errors import ServerSelectionTimeoutError

from emr_runtime.audit import (
    MAX_REPLAY_DEADLINE_SECONDS,
    MAX_REPLAY_WAIT_SECONDS,
    MAX_UNREACHABLE_REPLAY_WAIT_SECONDS,
    replay_deadline,
    replay_failure_reason,
    replay_wait,
)


def test_the_replay_deadline_grows_with_the_batch() -> None:
    assert replay_deadline(2.0, 1, 0) < replay_deadline(2.0, 50, 0) < replay_deadline(2.0, 200, 0)
    assert replay_deadline(2.0, 200, 0) >= 2.0 + 200 * 0.02


def test_the_replay_deadline_doubles_after_each_failure_up_to_a_cap() -> None:
    assert replay_deadline(2.0, 200, 1) == 2 * replay_deadline(2.0, 200, 0)
    assert replay_deadline(2.0, 200, 3) > replay_deadline(2.0, 200, 2)
    assert replay_deadline(2.0, 200, 1_000) == MAX_REPLAY_DEADLINE_SECONDS


def test_the_wait_between_replays_backs_off_after_failures_up_to_a_cap() -> None:
    assert replay_wait(1.0, 0) == replay_wait(1.0, 1) == 1.0
    assert replay_wait(1.0, 2) == 2.0
    assert replay_wait(1.0, 3) == 4.0
    assert replay_wait(1.0, 1_000) == MAX_REPLAY_WAIT_SECONDS


def test_an_unreachable_audit_is_tried_again_often_however_long_it_was_down() -> None:
    assert replay_wait(1.0, 1, unreachable=True) == 1.0
    assert replay_wait(1.0, 1_000, unreachable=True) == MAX_UNREACHABLE_REPLAY_WAIT_SECONDS
    assert replay_wait(1.0, 1_000) > MAX_UNREACHABLE_REPLAY_WAIT_SECONDS


class _Failed(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="patient p-1 secret")


def test_a_failure_reason_is_the_status_or_database_never_the_details() -> None:
    assert replay_failure_reason(_Failed(grpc.StatusCode.DEADLINE_EXCEEDED)) == "deadline_exceeded"
    assert replay_failure_reason(_Failed(grpc.StatusCode.UNAVAILABLE)) == "unavailable"
    assert replay_failure_reason(ServerSelectionTimeoutError("no server")) == "database"
    assert replay_failure_reason(RuntimeError("x")) == "other"
