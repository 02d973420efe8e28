"""Pure parts of refusing strangers cheaply: the per-peer rate-limit key, the sampled log of
refusals, the reason labels of refused tokens, and the outgoing metadata check and status wait of
client channels (no server, no network)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest

from emr_runtime.authn import LogSampler
from emr_runtime.channels import _ClientInterceptor, metadata_problem
from emr_runtime.errors import UNAUTHENTICATED_REASONS, UnauthenticatedError
from emr_runtime.guard import TokenBuckets, peer_address


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ("ipv4:127.0.0.1:51186", "127.0.0.1"),
        ("ipv4:10.20.0.7:443", "10.20.0.7"),
        # gRPC escapes the brackets of IPv6 peers.
        ("ipv6:%5B::1%5D:41562", "::/64"),
        ("ipv6:[::1]:41562", "::/64"),
        # A host rotating through its /64 stays one peer.
        ("ipv6:%5B2001:db8:0:1::7%5D:5100", "2001:db8:0:1::/64"),
        ("ipv6:%5B2001:db8:0:1:ffff:ffff:ffff:fffe%5D:5100", "2001:db8:0:1::/64"),
        # An IPv4 caller of a dual-stack socket is its IPv4 address.
        ("ipv6:%5B::ffff:10.20.0.7%5D:5100", "10.20.0.7"),
        ("ipv6:%5Bfe80::1%25eth0%5D:5100", "fe80::/64"),
        ("unix:/run/emr.sock", "unix"),
        ("unix-abstract:emr", "unix"),
        ("ipv4:not-an-address:1", "unknown"),
        ("", "unknown"),
        ("vsock:3:5000", "unknown"),
    ],
)
def test_peer_address_drops_the_port_and_groups_ipv6_by_64(peer: str, key: str) -> None:
    assert peer_address(peer) == key


def test_peer_addresses_differ_only_by_address_not_by_port() -> None:
    assert peer_address("ipv4:192.0.2.1:1000") == peer_address("ipv4:192.0.2.1:2000")
    assert peer_address("ipv4:192.0.2.1:1000") != peer_address("ipv4:192.0.2.2:1000")


def test_log_sampler_logs_once_per_interval_per_key_and_counts_the_rest() -> None:
    now = [100.0]
    sampler = LogSampler(10.0, clock=lambda: now[0])
    assert sampler.admit("expired") == 0  # the first one is logged
    assert [sampler.admit("expired") for _ in range(5)] == [None] * 5
    assert sampler.admit("missing") == 0  # another reason has its own interval
    now[0] = 109.9
    assert sampler.admit("expired") is None
    now[0] = 110.0
    assert sampler.admit("expired") == 6  # the six left unlogged since the last line
    assert sampler.admit("expired") is None
    now[0] = 125.0
    assert sampler.admit("expired") == 1
    assert sampler.admit("missing") == 0


def test_refused_tokens_carry_a_reason_of_the_fixed_set() -> None:
    assert UnauthenticatedError("x", "expired").reason == "expired"
    assert UnauthenticatedError("x").reason == "invalid"
    # A reason outside the set (a metric label) is never used as one.
    assert UnauthenticatedError("x", "eyJhbGciOi...").reason == "invalid"
    assert "invalid" in UNAUTHENTICATED_REASONS and len(UNAUTHENTICATED_REASONS) < 12


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ([("x-purpose-of-use", "TREATMENT"), ("authorization", "Bearer abc.def-ghi_j")], None),
        ([("x-purpose-of-use", "")], None),
        ([("trace-bin", b"\x00\xff")], None),
        (
            [("x-purpose-of-use", "trị liệu")],
            "the value of metadata 'x-purpose-of-use' is not printable ASCII",
        ),
        (
            [("x-break-glass-reason", "a\nb")],
            "the value of metadata 'x-break-glass-reason' is not printable ASCII",
        ),
        (
            [("x-purpose-of-use", "tab\there")],
            "the value of metadata 'x-purpose-of-use' is not printable ASCII",
        ),
        ([("x-purpose-of-use", b"\xe9")], "the value of metadata 'x-purpose-of-use' is not printable ASCII"),
        ([("X-Purpose", "ok")], "a metadata key is not lowercase letters, digits, '-', '_' or '.'"),
        ([("", "ok")], "a metadata key is not lowercase letters, digits, '-', '_' or '.'"),
    ],
)
def test_metadata_problem_names_the_key_never_the_value(
    metadata: list[tuple[str, str | bytes]], problem: str | None
) -> None:
    assert metadata_problem(metadata) == problem


class _CallWithoutStatus:
    """A call whose status never comes (what grpc.aio does with metadata its core refuses)."""

    def __init__(self) -> None:
        self.cancelled = False

    async def code(self) -> grpc.StatusCode:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    def cancel(self) -> bool:
        self.cancelled = True
        return True


def _details(metadata: list[tuple[str, str]], timeout: float) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        "/emr.identity.v1.PatientIdentityService/GetPatient",
        timeout,
        grpc.aio.Metadata(*metadata),
        None,
        None,
    )


async def test_a_call_without_status_fails_after_its_deadline_and_is_cancelled() -> None:
    stuck = _CallWithoutStatus()

    async def continuation(details: grpc.aio.ClientCallDetails, request: Any) -> _CallWithoutStatus:
        return stuck

    interceptor = _ClientInterceptor(default_deadline=5.0, token=None)
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await interceptor.intercept_unary_unary(continuation, _details([], 0.1), object())
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert stuck.cancelled
    assert time.monotonic() - started < 0.1 + 1.0 + 0.5  # deadline + grace, not forever


async def test_a_call_with_metadata_grpc_refuses_is_never_started() -> None:
    started: list[object] = []

    async def continuation(details: grpc.aio.ClientCallDetails, request: Any) -> object:
        started.append(request)
        return _CallWithoutStatus()

    interceptor = _ClientInterceptor(default_deadline=5.0, token=None)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await interceptor.intercept_unary_unary(
            continuation, _details([("x-purpose-of-use", "điều trị")], 5.0), object()
        )
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "x-purpose-of-use" in str(caught.value.details()) and "điều" not in str(caught.value.details())
    assert started == []


def test_a_charge_puts_a_peer_in_debt_down_to_minus_the_burst() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=10.0, burst=5, clock=lambda: now[0])
    buckets.charge("192.0.2.1", 3)
    assert [buckets.take("192.0.2.1") for _ in range(2)] == [0.0, 0.0]
    assert buckets.take("192.0.2.1") == pytest.approx(0.1)
    buckets.charge("192.0.2.1", 100)  # a failed authentication's cost, and more: the debt is capped
    assert buckets.take("192.0.2.1") == pytest.approx((1 + 5) / 10)
    assert buckets.take("192.0.2.2") == 0.0  # another address owes nothing
    now[0] = 0.6
    assert buckets.take("192.0.2.1") == 0.0
