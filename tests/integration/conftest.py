"""Fixtures of the audit tests: audit replicas (and callers of them) on their own databases, so that
load, outages and deliberate tampering never touch the shared platform's log."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from emr.audit.v1 import audit_pb2, audit_pb2_grpc

from emr_devstack.processes import ManagedProcess, free_port, poll_until
from emr_devstack.stack import Stack


@dataclass
class ServiceInstance:
    """One extra service process of a test, restartable on the same port and database."""

    stack: Stack
    service: str
    name: str
    port: int
    metrics_port: int
    env: dict[str, str]
    process: ManagedProcess | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServiceInstance:
        ports = self.stack.with_ports(
            **{self.service: self.port, f"{self.service}_metrics": self.metrics_port}
        )
        self.process = self.stack.start_service(self.service, ports, name=self.name, extra_env=self.env)
        return self

    def stop(self) -> int | None:
        code = self.process.stop() if self.process else None
        self.stack.processes.pop(self.name, None)
        return code

    def kill(self) -> None:
        """kill -9: no shutdown hook runs."""
        assert self.process is not None and self.process.popen is not None
        self.process.popen.kill()
        self.process.popen.wait(10)
        self.stack.processes.pop(self.name, None)


ServiceFactory = Callable[..., ServiceInstance]


@pytest.fixture
def service_instance(stack: Stack) -> Iterator[ServiceFactory]:
    """Starts extra instances of a service; all are stopped when the test ends."""
    started: list[ServiceInstance] = []

    def start(
        service: str, env: dict[str, str], name: str | None = None, autostart: bool = True
    ) -> ServiceInstance:
        instance = ServiceInstance(
            stack, service, name or f"{service}-{uuid.uuid4().hex[:6]}", free_port(), free_port(), env
        )
        started.append(instance)
        return instance.start() if autostart else instance

    yield start
    for instance in reversed(started):
        instance.stop()


def audit_env(database: str, every_events: int = 50, interval_seconds: float = 0.5) -> dict[str, str]:
    return {
        "AUDIT_MONGODB_DATABASE": database,
        "AUDIT_CHECKPOINT_EVERY_EVENTS": str(every_events),
        "AUDIT_CHECKPOINT_INTERVAL_SECONDS": str(interval_seconds),
    }


@pytest.fixture
def audit_database() -> str:
    return f"emr_audit_test_{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def open_channel(stack: Stack) -> AsyncIterator[Callable[[str], grpc.aio.Channel]]:
    opened: list[grpc.aio.Channel] = []

    def open_(target: str) -> grpc.aio.Channel:
        channel = stack.dev_channel(target)
        opened.append(channel)
        return channel

    yield open_
    for channel in opened:
        await channel.close()


async def checkpointed_through(audit: audit_pb2_grpc.AuditServiceStub, sequence: int) -> audit_pb2.Checkpoint:
    """Waits until a checkpoint covers ``sequence``."""

    async def probe() -> audit_pb2.Checkpoint | None:
        try:
            latest = (await audit.GetCheckpoint(audit_pb2.GetCheckpointRequest())).checkpoint
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return latest if latest.last_sequence >= sequence else None

    return await poll_until(probe)


async def all_events(audit: audit_pb2_grpc.AuditServiceStub, **filters: Any) -> list[audit_pb2.AuditEvent]:
    """Every event matching the filters, through every page."""
    events: list[audit_pb2.AuditEvent] = []
    token = ""
    while True:
        page = await audit.QueryEvents(
            audit_pb2.QueryEventsRequest(page_size=500, page_token=token, **filters)
        )
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events


@dataclass(frozen=True)
class AuditTools:
    """Helpers of the audit tests, handed out as a fixture (test modules cannot import each other)."""

    poll_until: Callable[..., Awaitable[Any]] = poll_until
    checkpointed_through: Callable[..., Awaitable[audit_pb2.Checkpoint]] = checkpointed_through
    all_events: Callable[..., Awaitable[list[audit_pb2.AuditEvent]]] = all_events
    audit_env: Callable[..., dict[str, str]] = audit_env


@pytest.fixture(scope="session")
def tools() -> AuditTools:
    return AuditTools()
