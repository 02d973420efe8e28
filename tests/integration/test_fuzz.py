"""Fuzzing every RPC of every service (hypothesis): random field values drawn from the request's
descriptor, and random bytes as the serialized request. No answer may be INTERNAL or UNKNOWN, a call
answered with an error writes nothing, and every service is still SERVING afterwards.

The RPCs are found by walking the contracts' service descriptors, so a new RPC is fuzzed without an
edit here. Bounded: ``STRUCTURED_EXAMPLES`` + ``RAW_EXAMPLES`` calls per RPC.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from emr.audit.v1 import audit_pb2, breach_pb2
from emr.identity.v1 import identity_pb2
from emr.records.v1 import records_pb2, retention_pb2
from emr.sync.v1 import sync_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emr_devstack.processes import grpc_serving
from emr_devstack.stack import GRPC_SERVICES, Stack
from emr_devstack.tokens import caller_metadata

STRUCTURED_EXAMPLES = 10
RAW_EXAMPLES = 5
MAX_DEPTH = 3
CALL_DEADLINE_SECONDS = 10.0
STREAM_DEADLINE_SECONDS = 1.0
# Answers that mean a bug of ours, whatever the input.
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
# The services whose stored documents tests/conftest.py counts (audit records failures on purpose).
COUNTED = {"identity", "records"}
CALLER = caller_metadata("fuzz-synthetic-01", "79001", "TREATMENT")

# (the service serving it, the contract module): records and audit serve two contracts each.
CONTRACTS = (
    ("identity", identity_pb2),
    ("records", records_pb2),
    ("records", retention_pb2),
    ("audit", audit_pb2),
    ("audit", breach_pb2),
    ("sync", sync_pb2),
)
METHODS: list[tuple[str, MethodDescriptor]] = [
    (service, method)
    for service, module in CONTRACTS
    for descriptor in module.DESCRIPTOR.services_by_name.values()
    for method in descriptor.methods
]
# Strings that reach deeper than random text: ids of real data (filled in by `known_ids`), codes of
# the right shape, lengths at and over the limits, operators a query builder must not obey.
SEEDED_STRINGS: list[str] = [
    "",
    "79001",
    "079192000001",
    "1990-05-01",
    "8867-4",
    "J18.9",
    "x" * 129,
    "y" * 5000,
    '{"$gt": ""}',
    "$where",
    "\x00",
    "Nguyễn Thị Ngọc Điệp",
]


def test_every_service_of_the_platform_is_fuzzed() -> None:
    assert {service for service, _ in METHODS} == set(GRPC_SERVICES)
    assert len(METHODS) >= 30


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return st.one_of(st.sampled_from(SEEDED_STRINGS), st.text(max_size=40))
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        numbers = [value.number for value in field.enum_type.values]
        return st.integers(min(numbers) - 2, max(numbers) + 3)  # unknown values too
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=64 if kind == FieldDescriptor.TYPE_DOUBLE else 32)
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return st.integers(-(2**63), 2**63 - 1)
    return st.integers(-(2**31), 2**31 - 1)


def _field_value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None
        return None if depth >= MAX_DEPTH else messages(field.message_type, depth + 1)
    return _scalar(field)


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    message = cls()
    for name, value in values.items():
        field = message.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.is_repeated:
                for item in value:
                    target.add().CopyFrom(item)
            else:
                target.CopyFrom(value)
        elif field.is_repeated:
            target.extend(value)
        else:
            setattr(message, name, value)  # a later member of a oneof replaces an earlier one
    return message


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor`` with any subset of fields set to random values, nested to
    ``MAX_DEPTH``."""
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        value = _field_value(field, depth)
        if value is not None:
            optional[field.name] = st.lists(value, max_size=3) if field.is_repeated else value
    cls = message_factory.GetMessageClass(descriptor)
    return st.fixed_dictionaries({}, optional=optional).map(lambda values: _build(cls, values))


def _call(channel: grpc.aio.Channel, method: MethodDescriptor, payload: bytes) -> Any:
    """The RPC with ``payload`` as its serialized request: a unary call, or a stream read to its end
    (a change stream never ends by itself: its short deadline ends it)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    if method.server_streaming:
        stream: Any = channel.unary_stream(path)  # no serializers: the payload goes out as it is
        return stream(payload, timeout=STREAM_DEADLINE_SECONDS, metadata=CALLER)
    unary: Any = channel.unary_unary(path)
    return unary(payload, timeout=CALL_DEADLINE_SECONDS, metadata=CALLER)


async def _answer(channel: grpc.aio.Channel, method: MethodDescriptor, payload: bytes) -> grpc.StatusCode:
    call = _call(channel, method, payload)
    try:
        if method.server_streaming:
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


# The stored documents after the last refused call: the next call's "before", unless a call was
# answered OK since (it may have written). Counting is most of the fuzz's time.
_last_counts: list[Any] = []


async def _check(
    service: str,
    method: MethodDescriptor,
    payload: bytes,
    channels: dict[str, grpc.aio.Channel],
    stored_documents: Callable[[], Any],
) -> None:
    counted = service in COUNTED
    before = (_last_counts.pop() if _last_counts else await stored_documents()) if counted else None
    code = await _answer(channels[service], method, payload)
    assert code not in FORBIDDEN, f"{method.full_name} answered {code.name} to {payload!r}"
    if before is not None and code != grpc.StatusCode.OK:
        after = await stored_documents()
        assert after == before, f"{method.full_name} wrote despite {code.name}"
        _last_counts.append(after)


@pytest.fixture(scope="module")
async def known_ids(identity: Any) -> None:
    """A real patient whose id the fuzzer may pick, so that calls get past lookups."""
    registered = await identity.RegisterPatient(
        identity_pb2.RegisterPatientRequest(
            request_id="fuzz-seed-patient",
            full_name="Phạm Văn Fuzz",
            birth_date="1985-02-03",
            sex=identity_pb2.SEX_MALE,
            facility_code="79001",
            identifiers=[
                identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_CCCD, value="079085000777")
            ],
        ),
        metadata=CALLER,
    )
    SEEDED_STRINGS.append(registered.patient.patient_id)


FUZZ_SETTINGS = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.usefixtures("known_ids")
@pytest.mark.parametrize(("service", "method"), METHODS, ids=[m.full_name for _, m in METHODS])
@settings(FUZZ_SETTINGS, max_examples=STRUCTURED_EXAMPLES)
@given(data=st.data())
async def test_random_field_values(
    service: str,
    method: MethodDescriptor,
    channels: dict[str, grpc.aio.Channel],
    stored_documents: Callable[[], Any],
    data: st.DataObject,
) -> None:
    request = data.draw(messages(method.input_type), label="request")
    await _check(service, method, request.SerializeToString(), channels, stored_documents)


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[m.full_name for _, m in METHODS])
@settings(FUZZ_SETTINGS, max_examples=RAW_EXAMPLES)
@given(payload=st.binary(min_size=1, max_size=200))
async def test_random_bytes_as_the_request(
    service: str,
    method: MethodDescriptor,
    channels: dict[str, grpc.aio.Channel],
    stored_documents: Callable[[], Any],
    payload: bytes,
) -> None:
    await _check(service, method, payload, channels, stored_documents)


def test_every_service_still_serving_after_the_fuzz(stack: Stack) -> None:
    credentials = stack.client_tls.channel_credentials()
    for service in GRPC_SERVICES:
        assert stack.processes[service].running(), f"{service} exited"
        assert grpc_serving(stack.target(service), credentials=credentials), f"{service} not SERVING"
