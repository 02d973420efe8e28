"""Metadata gRPC refuses (a caller's non-ASCII purpose of use, forwarded as it came) fails a call of
a platform channel (emr_runtime.channels) at once, naming the key: before, such a call waited for its
status forever and held its memory."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest
from emr.identity.v1 import identity_pb2, identity_pb2_grpc

from emr_devstack.stack import Stack
from emr_devstack.tokens import dev_admin_token
from emr_runtime.channels import create_channel
from emr_runtime.tls import TlsSettings

IDENTITY_SERVICE = "emr.identity.v1.PatientIdentityService"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("x-purpose-of-use", "điều trị"),
        ("x-break-glass-reason", "line one\nline two"),
        ("x-purpose-of-use", "TREATMENT\x7f"),
    ],
)
async def test_a_call_with_metadata_grpc_refuses_fails_at_once_naming_the_key(
    stack: Stack, key: str, value: str
) -> None:
    tls = TlsSettings(**stack.client_tls.env())  # type: ignore[arg-type]
    async with create_channel(
        stack.target("identity"), IDENTITY_SERVICE, tls=tls, token=dev_admin_token()
    ) as channel:
        stub = identity_pb2_grpc.PatientIdentityServiceStub(channel)
        request = identity_pb2.GetPatientRequest(patient_id=str(uuid.uuid4()))
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(stub.GetPatient(request, metadata=[(key, value)], timeout=30), 10)
        assert time.monotonic() - started < 2  # not the 30 s deadline, and never forever
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert key in (caught.value.details() or "") and value not in (caught.value.details() or "")
        # The channel goes on serving calls whose metadata gRPC can carry.
        with pytest.raises(grpc.aio.AioRpcError) as answered:
            await stub.GetPatient(request, metadata=[("x-purpose-of-use", "TREATMENT")], timeout=10)
        assert answered.value.code() == grpc.StatusCode.NOT_FOUND
