"""Fixtures for cross-service tests: the real platform (FerretDB and every service as processes on
free loopback ports), started once per test session, and stubs to call it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from emr.audit.v1 import audit_pb2_grpc
from emr.identity.v1 import identity_pb2, identity_pb2_grpc
from emr.records.v1 import records_pb2_grpc
from emr.sync.v1 import sync_pb2_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pymongo import AsyncMongoClient

from emr_devstack.processes import StartupError
from emr_devstack.stack import Ports, Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    platform = Stack(
        run_dir=Path(tmp_path_factory.mktemp("stack")), ports=Ports.free(), sync_poll_interval=0.2
    )
    try:
        platform.start()
    except StartupError:
        platform.stop()
        raise
    yield platform
    codes = platform.stop()
    # Every gRPC service must stop cleanly on SIGTERM.
    assert all(codes[name] == 0 for name in ("audit", "identity", "records", "sync") if name in codes), codes


@pytest.fixture(scope="session")
async def channels(stack: Stack) -> AsyncIterator[dict[str, grpc.aio.Channel]]:
    opened = {
        name: grpc.aio.insecure_channel(stack.target(name))
        for name in ("identity", "records", "audit", "sync")
    }
    yield opened
    for channel in opened.values():
        await channel.close()


@pytest.fixture(scope="session")
def identity(channels: dict[str, grpc.aio.Channel]) -> identity_pb2_grpc.PatientIdentityServiceStub:
    return identity_pb2_grpc.PatientIdentityServiceStub(channels["identity"])


@pytest.fixture(scope="session")
def records(channels: dict[str, grpc.aio.Channel]) -> records_pb2_grpc.ClinicalRecordsServiceStub:
    return records_pb2_grpc.ClinicalRecordsServiceStub(channels["records"])


@pytest.fixture(scope="session")
def audit(channels: dict[str, grpc.aio.Channel]) -> audit_pb2_grpc.AuditServiceStub:
    return audit_pb2_grpc.AuditServiceStub(channels["audit"])


@pytest.fixture(scope="session")
def sync(channels: dict[str, grpc.aio.Channel]) -> sync_pb2_grpc.NationalSyncServiceStub:
    return sync_pb2_grpc.NationalSyncServiceStub(channels["sync"])


@pytest.fixture(scope="session")
async def mongo(stack: Stack) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    """Direct database access, to check what was (not) written."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.effective_mongodb_uri, tz_aware=True)
    yield client
    await client.close()


def violated_fields(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields named by the google.rpc.BadRequest detail of an INVALID_ARGUMENT error."""
    status = rpc_status.from_call(error)
    assert status is not None, "error carries no google.rpc.Status details"
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields.extend(violation.field for violation in bad_request.field_violations)
    return fields


@pytest.fixture
def bad_fields() -> Callable[[grpc.aio.AioRpcError], list[str]]:
    return violated_fields


_facility_counter = iter(range(10_000, 99_999))


@pytest.fixture
def facility_code() -> str:
    """A facility code of this test alone, so that per-facility counts are this test's."""
    return f"{next(_facility_counter):05d}"


def synthetic_registration(
    registering_facility: str, /, **overrides: Any
) -> identity_pb2.RegisterPatientRequest:
    """A valid registration of a synthetic person (never real data)."""
    serial = uuid.uuid4().int % 10**6
    fields: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "full_name": "Trần Thị Thu Hà",
        "birth_date": "1992-03-14",
        "sex": identity_pb2.SEX_FEMALE,
        "facility_code": registering_facility,
        # CCCD: province 079, century/sex digit 1 (1900s, female), birth year 92, then 6 digits.
        "identifiers": [
            identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_CCCD, value=f"079192{serial:06d}")
        ],
    }
    fields.update(overrides)
    return identity_pb2.RegisterPatientRequest(**fields)


@pytest.fixture
def registration() -> Callable[..., identity_pb2.RegisterPatientRequest]:
    return synthetic_registration
