"""The chaos suite: each scenario runs its own platform (FerretDB and every service as processes, on
free loopback ports, in the test's own folder), breaks it the way a bad night does (kill -9 of a
service, SIGSTOP of the database, a national outage, answers dropped after commit, a replica lost),
and then checks what users were promised: acknowledged writes lost = 0, audit events missing for
successful calls = 0, duplicates applied = 0, the audit chain intact, spools drained within a bound.

Every scenario records its figures (``chaos_figures``); they are printed at the end of the run, so
that a CI log shows what each bad night cost, not only that it passed."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from emr.audit.v1 import audit_pb2, audit_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from pymongo import AsyncMongoClient

from emr_devstack.processes import ManagedProcess, StartupError
from emr_devstack.stack import Ports, Stack
from emr_devstack.tokens import dev_channel

REDIAL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
)
# What every scenario's platform gets on top of `make up`'s settings: checkpoints often (the chain's
# verdict covers recent events), access answers never cached (a grant counts at once), sync polls fast.
CHAOS_ENVIRONMENT = {
    "RECORDS_ACCESS_CACHE_SECONDS": "0",
    "AUDIT_CHECKPOINT_INTERVAL_SECONDS": "1",
    "AUDIT_CHECKPOINT_EVERY_EVENTS": "100",
}


@dataclass
class ChaosPlatform:
    """One scenario's own platform, with the ways to break it."""

    stack: Stack
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    def channel(self, service: str, subject: str = "dev-admin") -> grpc.aio.Channel:
        """A mutual-TLS channel to ``service``; calls without their own token act as ``subject``."""
        return self.channel_to(self.stack.target(service), subject)

    def channel_to(self, target: str, subject: str = "dev-admin") -> grpc.aio.Channel:
        """A mutual-TLS channel to ``host:port`` (an extra instance), closed with the platform. It
        redials a restarted service within half a second, as a client that retries through a
        restart must (gRPC's own back-off grows to two minutes: a scenario would measure that)."""
        opened = dev_channel(
            target, subject, credentials=self.stack.client_tls.channel_credentials(), options=REDIAL_OPTIONS
        )
        self._channels.append(opened)
        return opened

    def process(self, name: str) -> ManagedProcess:
        return self.stack.processes[name]

    def kill(self, name: str) -> None:
        """kill -9: no shutdown hook, no flush, no goodbye."""
        process = self.stack.processes.pop(name)
        assert process.popen is not None and process.running(), f"{name} is not running"
        process.popen.kill()
        process.popen.wait(10)
        process.stop()  # closes its log file; the exit code is -9 already

    def restart(self, service: str) -> ManagedProcess:
        """Starts ``service`` again on its ports and database; returns once it answers health."""
        return self.stack.start_service(service)

    @asynccontextmanager
    async def database_paused(self) -> AsyncIterator[None]:
        """FerretDB stopped (SIGSTOP) for the body, resumed (SIGCONT) whatever happens: every
        connection to it hangs, as on a storage stall."""
        ferretdb = self.process("ferretdb")
        ferretdb.signal(signal.SIGSTOP)
        try:
            yield
        finally:
            ferretdb.signal(signal.SIGCONT)

    async def pause_database(self, seconds: float) -> None:
        async with self.database_paused():
            await asyncio.sleep(seconds)

    def mongo(self) -> AsyncMongoClient[dict[str, Any]]:
        return AsyncMongoClient(self.stack.effective_mongodb_uri, tz_aware=True)

    async def close(self) -> None:
        for opened in self._channels:
            await opened.close()


@pytest.fixture
async def chaos(tmp_path: Path) -> AsyncIterator[ChaosPlatform]:
    """A whole platform of this test alone, stopped (with whatever the test left running) after it."""
    stack = Stack(run_dir=tmp_path, ports=Ports.free(), sync_poll_interval=0.2, environment=CHAOS_ENVIRONMENT)
    platform = ChaosPlatform(stack)
    try:
        stack.start()
    except StartupError:
        stack.stop()
        raise
    try:
        yield platform
    finally:
        if "ferretdb" in stack.processes:
            stack.processes["ferretdb"].signal(signal.SIGCONT)  # a test that failed while it was paused
        await platform.close()
        stack.stop()


# --- figures -----------------------------------------------------------------------------------

_FIGURES: list[tuple[str, dict[str, Any]]] = []


@dataclass
class Figures:
    """The numbers of one scenario, printed in the run's summary whether it passed or failed."""

    scenario: str
    values: dict[str, Any] = field(default_factory=dict)

    def __setitem__(self, name: str, value: Any) -> None:
        self.values[name] = value

    def __getitem__(self, name: str) -> Any:
        return self.values[name]


@pytest.fixture
def chaos_figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    figures = Figures(request.node.name)
    yield figures
    _FIGURES.append((figures.scenario, figures.values))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("chaos figures")
    for scenario, values in _FIGURES:
        shown = ", ".join(f"{name}={_shown(value)}" for name, value in values.items())
        terminalreporter.write_line(f"{scenario}: {shown}")


def _shown(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


# --- audit scenarios ---------------------------------------------------------------------------


async def metric_value(metrics_port: int, name: str) -> float | None:
    """The unlabelled sample ``name`` on a service's metrics port; None while it does not answer."""
    try:
        async with httpx.AsyncClient(timeout=2.0) as http:
            body = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    except httpx.HTTPError:
        return None
    match = re.search(rf"^{re.escape(name)} (\S+)$", body, re.MULTILINE)
    return float(match.group(1)) if match else None


async def metric_sum(metrics_port: int, name: str, **labels: str) -> float | None:
    """The sum of the samples ``name`` carrying ``labels`` (others any) on a service's metrics port;
    None while it does not answer."""
    try:
        async with httpx.AsyncClient(timeout=2.0) as http:
            body = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    except httpx.HTTPError:
        return None
    total = 0.0
    for match in re.finditer(rf"^{re.escape(name)}\{{([^}}]*)\}} (\S+)$", body, re.MULTILINE):
        carried = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if all(carried.get(label) == value for label, value in labels.items()):
            total += float(match.group(2))
    return total


async def audit_events(audit: audit_pb2_grpc.AuditServiceStub, **filters: Any) -> list[audit_pb2.AuditEvent]:
    """Every stored event matching ``filters`` (none: the whole log), through every page, in
    sequence order."""
    if not filters:
        filters = {"start_time": Timestamp(seconds=1)}  # QueryEvents wants some filter
    events: list[audit_pb2.AuditEvent] = []
    token = ""
    while True:
        page = await audit.QueryEvents(
            audit_pb2.QueryEventsRequest(page_size=500, page_token=token, **filters), timeout=30
        )
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events


@dataclass(frozen=True)
class AuditProbes:
    """The audit scenarios' ways to read what was recorded, as a fixture (test modules cannot
    import each other)."""

    metric_value: Callable[[int, str], Awaitable[float | None]] = metric_value
    metric_sum: Callable[..., Awaitable[float | None]] = metric_sum
    audit_events: Callable[..., Awaitable[list[audit_pb2.AuditEvent]]] = audit_events


@pytest.fixture(scope="session")
def audit_probes() -> AuditProbes:
    return AuditProbes()
