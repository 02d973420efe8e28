"""Fixtures of the security tests: they attack the shared test platform of tests/conftest.py (the
session's `stack`, its stubs and its audit log) as strangers would, and read what it counted."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from emr_devstack.certs import tls_files
from emr_devstack.stack import Stack

MetricReader = Callable[..., Awaitable[float]]


@pytest.fixture
async def stranger_channel(stack: Stack) -> AsyncIterator[Callable[..., grpc.aio.Channel]]:
    """Opens mutual-TLS channels that add no token (unlike ``stack.dev_channel``): what a caller
    holding a client certificate of the platform CA, and nothing else, can send. ``certificate``
    names another certificate of the run (e.g. ``records``, a platform component's)."""
    opened: list[grpc.aio.Channel] = []

    def open_(target: str, certificate: str = "client") -> grpc.aio.Channel:
        channel = tls_files(stack.certs_dir, certificate).aio_channel(target)
        opened.append(channel)
        return channel

    yield open_
    for channel in opened:
        await channel.close()


@pytest.fixture(scope="session")
def metric() -> MetricReader:
    """``await metric(port, name, **labels)``: the sum of the samples of ``name`` with these labels
    on the /metrics page at ``port`` (0 when there are none yet)."""

    async def read(port: int, name: str, **labels: str) -> float:
        async with httpx.AsyncClient(timeout=10) as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    return read
