"""The chaos suite: each scenario runs its own platform (FerretDB and every service as processes, on
free loopback ports, in the test's own folder), breaks it the way a bad night does (kill -9 of a
service, SIGSTOP of the database, a national outage, answers dropped after commit, a replica lost),
and then checks what users were promised: acknowledged writes lost = 0, audit events missing for
successful calls = 0, duplicates applied = 0, the audit chain intact, spools drained within a bound.

Every scenario records its figures (``chaos_figures``); they are printed at the end of the run, so
that a CI log shows what each bad night cost, not only that it passed."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from pymongo import AsyncMongoClient

from emr_devstack.processes import ManagedProcess, StartupError
from emr_devstack.stack import Ports, Stack

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
        opened = self.stack.dev_channel(self.stack.target(service), subject)
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


# --- write scenarios ---

# gRPC's own reconnect back-off grows to two minutes; a client that retries through a restart redials
# within half a second, or a scenario measures that back-off instead of the platform.
REDIAL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
)


@dataclass
class Redialer:
    """Opens mutual-TLS channels that redial a restarted service quickly, closed with the platform."""

    platform: ChaosPlatform

    def channel(self, service: str) -> grpc.aio.Channel:
        from emr_devstack.tokens import dev_channel  # here: the imports above belong to every section

        opened = dev_channel(
            self.platform.stack.target(service),
            credentials=self.platform.stack.client_tls.channel_credentials(),
            options=REDIAL_OPTIONS,
        )
        self.platform._channels.append(opened)
        return opened


@pytest.fixture
def redial(chaos: ChaosPlatform) -> Redialer:
    return Redialer(chaos)
