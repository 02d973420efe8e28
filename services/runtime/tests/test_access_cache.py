"""The records-side client of identity's CheckAccess: the answer as a Visibility and the
per-process cache of answers (emr_runtime.patients), without I/O."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from emr.identity.v1 import identity_pb2

from emr_runtime.errors import DependencyUnavailableError
from emr_runtime.patients import AccessCache, PatientDirectory, visibility_of
from emr_runtime.visibility import Visibility

REGISTERED = Visibility("79001", registered=True)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key(
    patient_id: str = "p", purpose: str = "TREATMENT", export: bool = False
) -> tuple[str, str, str, bool]:
    return (patient_id, "79001", purpose, export)


def test_an_answer_is_reused_until_its_time_is_up_then_asked_again() -> None:
    clock = Clock()
    cache = AccessCache(30, 100, clock)
    cache.put(key(), REGISTERED)
    clock.now += 29.9
    assert cache.get(key()) == REGISTERED
    clock.now += 0.1
    assert cache.get(key()) is None
    assert len(cache) == 0


def test_answers_are_kept_per_patient_purpose_and_export() -> None:
    cache = AccessCache(30, 100, Clock())
    cache.put(key(), REGISTERED)
    assert cache.get(key("q")) is None
    assert cache.get(key(purpose="PAYMENT")) is None
    assert cache.get(key(export=True)) is None


def test_answers_that_open_nothing_or_that_an_emergency_opened_are_never_kept() -> None:
    cache = AccessCache(30, 100, Clock())
    cache.put(key("stranger"), Visibility("79001"))
    cache.put(key("unknown"), Visibility("79001", exists=False))
    emergency = Visibility("79001", registered=True, all_facilities=True, emergency_access_id="e1")
    cache.put(key("er"), emergency)
    assert len(cache) == 0
    assert cache.get(key("stranger")) is None and cache.get(key("er")) is None


def test_zero_seconds_keeps_nothing() -> None:
    cache = AccessCache(0, 100, Clock())
    cache.put(key(), REGISTERED)
    assert cache.get(key()) is None


def test_the_cache_keeps_the_most_recently_used_answers_up_to_its_size() -> None:
    cache = AccessCache(30, 2, Clock())
    cache.put(key("a"), REGISTERED)
    cache.put(key("b"), REGISTERED)
    assert cache.get(key("a")) == REGISTERED  # a is now the most recently used
    cache.put(key("c"), REGISTERED)
    assert len(cache) == 2
    assert cache.get(key("b")) is None
    assert cache.get(key("a")) == REGISTERED and cache.get(key("c")) == REGISTERED


def test_identity_answer_becomes_the_visibility_it_describes() -> None:
    referral = visibility_of(
        "79001",
        identity_pb2.CheckAccessResponse(
            exists=True, visible_facility_codes=["79002"], resolved_patient_id="survivor"
        ),
    )
    assert referral == Visibility(
        "79001", facilities=frozenset({"79002"}), resolved_patient_id="survivor", exists=True
    )
    assert referral.sees("79002") and not referral.sees("79003") and not referral.registered
    emergency = visibility_of(
        "79001",
        identity_pb2.CheckAccessResponse(
            exists=True,
            all_facilities=True,
            visible_facility_codes=["79002"],
            emergency_access_id="e1",
            emergency_reason="EMERGENCY_REASON_LIFE_THREATENING",
        ),
    )
    assert emergency.all_facilities and emergency.facilities == frozenset()
    assert (emergency.emergency_access_id, emergency.emergency_reason) == (
        "e1",
        "EMERGENCY_REASON_LIFE_THREATENING",
    )
    unknown = visibility_of("79001", identity_pb2.CheckAccessResponse())
    assert not unknown.exists and not unknown.opens_anything


class IdentityChannel:
    """A channel whose CheckAccess answers from a table (or fails with a status), counting calls."""

    def __init__(self, answers: dict[str, identity_pb2.CheckAccessResponse | grpc.StatusCode]) -> None:
        self.answers = answers
        self.asked: list[identity_pb2.CheckAccessRequest] = []

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Callable[..., Awaitable[Any]]:
        async def call(request: Any, **options: Any) -> Any:  # timeout, metadata
            self.asked.append(request)
            answer = self.answers[request.patient_id]
            if isinstance(answer, grpc.StatusCode):
                raise grpc.aio.AioRpcError(answer, grpc.aio.Metadata(), grpc.aio.Metadata(), "refused")
            return answer

        return call


def directory(channel: IdentityChannel, cache_seconds: float = 30) -> PatientDirectory:
    return PatientDirectory(channel, "records", "PATIENT_REFERENCE_CHECK", access_cache_seconds=cache_seconds)  # type: ignore[arg-type]


def test_the_directory_asks_identity_once_per_fresh_answer_and_always_for_an_emergency() -> None:
    channel = IdentityChannel({"p": identity_pb2.CheckAccessResponse(exists=True, registered=True)})
    patients = directory(channel)

    async def ask(purpose: str, export: bool = False) -> Visibility:
        return await patients.access("p", "79001", purpose, export)

    async def scenario() -> None:
        assert (await ask("TREATMENT")).registered
        assert (await ask("TREATMENT")).registered
        await ask("TREATMENT", export=True)
        await ask("EMERGENCY")
        await ask("EMERGENCY")

    asyncio.run(scenario())
    assert [(r.purpose_of_use, r.export) for r in channel.asked] == [
        ("TREATMENT", False),
        ("TREATMENT", True),
        ("EMERGENCY", False),
        ("EMERGENCY", False),
    ]
    assert channel.asked[0].facility_code == "79001"


def test_an_unknown_or_malformed_patient_is_nobody_and_other_failures_are_identity_unavailable() -> None:
    channel = IdentityChannel(
        {
            "unknown": grpc.StatusCode.NOT_FOUND,
            "bad": grpc.StatusCode.INVALID_ARGUMENT,
            "down": grpc.StatusCode.UNAVAILABLE,
            "old": grpc.StatusCode.UNIMPLEMENTED,
        }
    )
    patients = directory(channel)

    async def ask(patient_id: str) -> Visibility:
        return await patients.access(patient_id, "79001", "TREATMENT", False)

    for nobody in ("unknown", "bad"):
        found = asyncio.run(ask(nobody))
        assert not found.exists and not found.opens_anything
    for failing in ("down", "old"):
        with pytest.raises(DependencyUnavailableError):
            asyncio.run(ask(failing))
