"""Strangers are cheap: a call without a valid token is refused UNAUTHENTICATED before any audit
write or database read, counted by reason; one address's flood is refused RESOURCE_EXHAUSTED before
its tokens are even parsed, while health keeps answering and other addresses and the platform's own
components are served.

The attacks are a table: who attacks, with which call, what they get, under which reason the
service counts it, and how many audit events the attack may add (0 for every stranger; a known
caller whom the policy denies is audited, which shows the count would see an event)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from emr.audit.v1 import audit_pb2, audit_pb2_grpc
from emr.identity.v1 import identity_pb2, identity_pb2_grpc
from emr.records.v1 import records_pb2, records_pb2_grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from emr_devstack.processes import free_port, poll_until
from emr_devstack.stack import Ports, Stack
from emr_devstack.tokens import AUDIENCE, caller_metadata, issue_token
from emr_runtime.auth import DEV_ISSUER, dev_private_key, key_thumbprint, sign_token
from emr_runtime.guard import PEER_REFUSAL_PAUSE_SECONDS

STRANGER_KEY = ec.generate_private_key(ec.SECP256R1())
VALID_CLAIMS = {"iss": DEV_ISSUER, "aud": AUDIENCE, "sub": "mallory", "roles": ["admin"], "azp": "evil-app"}
ADMIN = caller_metadata("security-test-admin")
# Attackers: the authorization metadata each sends (None: none).
NO_TOKEN = None
NOT_BEARER = "Basic bWFsbG9yeTpzZWNyZXQ="
MALFORMED = "Bearer not.a.jwt"
ALG_NONE = "Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJtYWxsb3J5In0."
UNKNOWN_KEY = f"Bearer {sign_token(STRANGER_KEY, key_thumbprint(STRANGER_KEY), VALID_CLAIMS, 600)}"
# The platform's own key id, signed with the stranger's key.
FORGED = f"Bearer {sign_token(STRANGER_KEY, key_thumbprint(dev_private_key()), VALID_CLAIMS, 600)}"
EXPIRED = f"Bearer {issue_token('mallory', lifetime_seconds=-3600)}"
WRONG_AUDIENCE = f"Bearer {issue_token('mallory', aud='another-platform')}"
NOT_YET_VALID = f"Bearer {issue_token('mallory', nbf=2_000_000_000)}"
UNTRUSTED_ISSUER = f"Bearer {issue_token('mallory', iss='https://idp.attacker.example')}"
# Not a stranger: a nurse with a valid token whom the policy denies (no treatment relationship).
NURSE = caller_metadata("nurse-curious", "79001", "TREATMENT", role="nurse")[0][1]

ATTACKS_PER_ROW = 3


@dataclass(frozen=True)
class AuditedCall:
    """An audited RPC whose audit event names the patient of its request."""

    service: str
    method: str
    request: Callable[[str], Any]

    def stub_method(self, channel: grpc.aio.Channel) -> Any:
        if self.service == "identity":
            return getattr(identity_pb2_grpc.PatientIdentityServiceStub(channel), self.method)
        return getattr(records_pb2_grpc.ClinicalRecordsServiceStub(channel), self.method)

    @property
    def grpc_service(self) -> str:
        return {
            "identity": "emr.identity.v1.PatientIdentityService",
            "records": "emr.records.v1.ClinicalRecordsService",
        }[self.service]


GET_PATIENT = AuditedCall("identity", "GetPatient", lambda p: identity_pb2.GetPatientRequest(patient_id=p))
TIMELINE = AuditedCall(
    "records", "GetPatientTimeline", lambda p: records_pb2.GetPatientTimelineRequest(patient_id=p)
)
EXPORT = AuditedCall("records", "ExportPatient", lambda p: records_pb2.ExportPatientRequest(patient_id=p))

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
# attacker, authorization, call, expected status, counted reason, audit events the attack adds
ATTACK_TABLE = [
    pytest.param(NO_TOKEN, GET_PATIENT, UNAUTHENTICATED, "missing", 0, id="no token-GetPatient"),
    pytest.param(NO_TOKEN, TIMELINE, UNAUTHENTICATED, "missing", 0, id="no token-GetPatientTimeline"),
    pytest.param(NO_TOKEN, EXPORT, UNAUTHENTICATED, "missing", 0, id="no token-ExportPatient"),
    pytest.param(NOT_BEARER, GET_PATIENT, UNAUTHENTICATED, "missing", 0, id="basic auth-GetPatient"),
    pytest.param(MALFORMED, GET_PATIENT, UNAUTHENTICATED, "malformed", 0, id="malformed token-GetPatient"),
    pytest.param(MALFORMED, EXPORT, UNAUTHENTICATED, "malformed", 0, id="malformed token-ExportPatient"),
    pytest.param(ALG_NONE, GET_PATIENT, UNAUTHENTICATED, "malformed", 0, id="alg none-GetPatient"),
    pytest.param(UNKNOWN_KEY, GET_PATIENT, UNAUTHENTICATED, "unknown_key", 0, id="unknown key-GetPatient"),
    pytest.param(UNKNOWN_KEY, TIMELINE, UNAUTHENTICATED, "unknown_key", 0, id="unknown key-GetPatientTimeline"),
    pytest.param(FORGED, GET_PATIENT, UNAUTHENTICATED, "bad_signature", 0, id="forged signature-GetPatient"),
    pytest.param(EXPIRED, GET_PATIENT, UNAUTHENTICATED, "expired", 0, id="expired token-GetPatient"),
    pytest.param(EXPIRED, EXPORT, UNAUTHENTICATED, "expired", 0, id="expired token-ExportPatient"),
    pytest.param(WRONG_AUDIENCE, GET_PATIENT, UNAUTHENTICATED, "wrong_audience", 0, id="wrong audience-GetPatient"),
    pytest.param(WRONG_AUDIENCE, TIMELINE, UNAUTHENTICATED, "wrong_audience", 0, id="wrong audience-GetPatientTimeline"),
    pytest.param(NOT_YET_VALID, GET_PATIENT, UNAUTHENTICATED, "not_yet_valid", 0, id="not yet valid-GetPatient"),
    pytest.param(UNTRUSTED_ISSUER, GET_PATIENT, UNAUTHENTICATED, "untrusted_issuer", 0, id="untrusted issuer-GetPatient"),
    pytest.param(NURSE, GET_PATIENT, grpc.StatusCode.PERMISSION_DENIED, None, ATTACKS_PER_ROW, id="known nurse, no treatment-GetPatient"),
]  # fmt: skip


async def status_of(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def audit_events_of(
    audit: audit_pb2_grpc.AuditServiceStub, patient_id: str
) -> list[audit_pb2.AuditEvent]:
    page = await audit.QueryEvents(audit_pb2.QueryEventsRequest(patient_id=patient_id, page_size=500))
    return list(page.events)


@pytest.mark.parametrize(("authorization", "call", "expected", "reason", "audit_events"), ATTACK_TABLE)
async def test_attack_table(
    stack: Stack,
    stranger_channel: Callable[..., grpc.aio.Channel],
    channels: dict[str, grpc.aio.Channel],
    audit: audit_pb2_grpc.AuditServiceStub,
    metric: Callable[..., Any],
    authorization: str | None,
    call: AuditedCall,
    expected: grpc.StatusCode,
    reason: str | None,
    audit_events: int,
) -> None:
    patient_id = str(uuid.uuid4())  # this row's alone: its audit events are counted by it
    metrics_port = getattr(stack.ports, f"{call.service}_metrics")
    counted = {"grpc_service": call.grpc_service, "grpc_method": call.method, "reason": reason or ""}
    refused_before = await metric(metrics_port, "emr_unauthenticated_calls_total", **counted)
    attack = call.stub_method(stranger_channel(stack.target(call.service)))
    metadata = [("authorization", authorization)] if authorization else []
    for _ in range(ATTACKS_PER_ROW):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await attack(call.request(patient_id), metadata=metadata, timeout=10)
        assert refused.value.code() == expected, refused.value.details()
        assert "mallory" not in (refused.value.details() or "")  # nothing of the token echoed
    refused_after = await metric(metrics_port, "emr_unauthenticated_calls_total", **counted)
    assert refused_after - refused_before == (ATTACKS_PER_ROW if reason else 0)

    # An admin's call about the same patient afterwards: once its event is in the log, whatever the
    # attack recorded (before it answered) is there too.
    control = call.stub_method(channels[call.service])(call.request(patient_id), metadata=ADMIN, timeout=10)
    assert await status_of(control) in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND)  # answered

    async def control_recorded() -> list[audit_pb2.AuditEvent] | None:
        events = await audit_events_of(audit, patient_id)
        return events if any(e.actor_id == "security-test-admin" for e in events) else None

    events = await poll_until(control_recorded)
    # Records checks the patient with identity for the admin's call: that event is the service's.
    attack_events = [
        e for e in events if e.actor_id != "security-test-admin" and not e.actor_id.startswith("service:")
    ]
    assert len(attack_events) == audit_events, [(e.actor_id, e.operation) for e in attack_events]


# --- one address's flood ------------------------------------------------------------------------

PEER_BURST = 40  # with a failed authentication costing UNAUTHENTICATED_PEER_COST (20): two strangers' calls
FLOOD = 30


@pytest.fixture(scope="module")
def flooded_identity(stack: Stack) -> Iterator[Ports]:
    """An identity replica that lets one address save up PEER_BURST calls and (almost) never refills,
    listening on 127.0.0.1 and ::1 (two peer addresses on one machine); its ports."""
    ports = stack.with_ports(identity=free_port())
    name = f"identity-flooded-{uuid.uuid4().hex[:6]}"
    process = stack.start_service(
        "identity",
        ports,
        name=name,
        extra_env={
            "IDENTITY_LISTEN_HOST": "localhost",
            "IDENTITY_PEER_RATE_LIMIT_PER_SECOND": "0.001",
            "IDENTITY_PEER_RATE_LIMIT_BURST": str(PEER_BURST),
        },
    )
    yield ports
    assert process.stop() == 0
    stack.processes.pop(name, None)


async def test_a_flood_from_one_address_is_refused_while_health_answers_and_others_are_served(
    stack: Stack,
    flooded_identity: Ports,
    stranger_channel: Callable[..., grpc.aio.Channel],
    audit: audit_pb2_grpc.AuditServiceStub,
    metric: Callable[..., Any],
) -> None:
    port, metrics_port = flooded_identity.identity, flooded_identity.identity_metrics
    patient_id = str(uuid.uuid4())
    request = identity_pb2.GetPatientRequest(patient_id=patient_id)
    ipv4 = stranger_channel(f"127.0.0.1:{port}")
    stranger = identity_pb2_grpc.PatientIdentityServiceStub(ipv4)

    # Each failed authentication costs the address 20 calls of its 40: the third call is refused
    # before its token is read.
    assert [await status_of(stranger.GetPatient(request, timeout=10)) for _ in range(3)] == [
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ]
    # The flood: every call refused, each answered after a pause (so a caller that calls again
    # as soon as it is answered waits instead of keeping the replica busy), with a RetryInfo.
    started = time.monotonic()
    errors = await asyncio.gather(*(refusal(stranger.GetPatient(request, timeout=10)) for _ in range(FLOOD)))
    assert {error.code() for error in errors} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert time.monotonic() - started >= PEER_REFUSAL_PAUSE_SECONDS / 2
    for error in errors:
        status = rpc_status.from_call(error)
        assert status is not None and status.details[0].Is(error_details_pb2.RetryInfo.DESCRIPTOR)
    assert await metric(metrics_port, "emr_rate_limited_calls_total", limit="peer") == 1 + FLOOD
    assert await metric(metrics_port, "emr_unauthenticated_calls_total", reason="missing") == 2

    # Health keeps answering that address, on the API port and on the plaintext health port.
    checked = await health_pb2_grpc.HealthStub(ipv4).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert checked.status == health_pb2.HealthCheckResponse.SERVING
    async with grpc.aio.insecure_channel(f"127.0.0.1:{flooded_identity.identity_health}") as plaintext:
        checked = await health_pb2_grpc.HealthStub(plaintext).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert checked.status == health_pb2.HealthCheckResponse.SERVING
    # The address is refused even with a valid token: the limit comes before the token is read.
    assert await status_of(stranger.GetPatient(request, metadata=ADMIN, timeout=10)) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )

    # Another address with valid tokens may make its whole budget (authenticated calls cost one
    # each), and a platform component is never limited per address, even from the flooded one.
    other_address = identity_pb2_grpc.PatientIdentityServiceStub(stranger_channel(f"[::1]:{port}"))
    platform = identity_pb2_grpc.PatientIdentityServiceStub(stranger_channel(f"127.0.0.1:{port}", "records"))
    answered = [
        await status_of(other_address.GetPatient(request, metadata=ADMIN, timeout=10))
        for _ in range(PEER_BURST)
    ]
    answered.append(await status_of(platform.GetPatient(request, metadata=ADMIN, timeout=10)))
    assert set(answered) == {grpc.StatusCode.NOT_FOUND}  # served: nobody has this patient

    # Those answered calls are the patient's only audit events: the strangers added none.
    async def served_recorded() -> list[audit_pb2.AuditEvent] | None:
        events = await audit_events_of(audit, patient_id)
        return events if len(events) >= PEER_BURST + 1 else None

    events = await poll_until(served_recorded)
    assert [e.actor_id for e in events] == ["security-test-admin"] * (PEER_BURST + 1)


async def refusal(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    return refused.value
