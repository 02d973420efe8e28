"""`make up`'s ports: outside the kernel's ephemeral range, movable by DEVSTACK_*_PORT, and checked
before anything starts, so a busy one fails at once by name instead of half-way through start-up."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import fields, replace
from pathlib import Path

import pytest
from pydantic import ValidationError

from emr_devstack.processes import _ephemeral_range, free_port
from emr_devstack.settings import DevstackSettings
from emr_devstack.stack import PortBusyError, Ports, Stack


@pytest.fixture
def listening() -> Iterator[int]:
    """A port another program listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


@pytest.fixture
def held_by_a_connection() -> Iterator[int]:
    """A port nothing listens on but another program's outgoing connection holds as its local
    port (what broke `make up` when an ephemeral port was one of ours)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
            client.bind(("127.0.0.1", 0))
            client.connect(server.getsockname())
            accepted, _ = server.accept()
            with accepted:
                yield client.getsockname()[1]


def test_default_ports_lie_below_the_ephemeral_range() -> None:
    low, _ = _ephemeral_range()
    defaults = Ports()
    assert all(getattr(defaults, f.name) < min(low, 32768) for f in fields(Ports))
    assert DevstackSettings().ports() == defaults


def test_a_listening_port_is_refused_by_name(tmp_path: Path, listening: int) -> None:
    stack = Stack(run_dir=tmp_path, ports=replace(Ports.free(), sync=listening))
    with pytest.raises(PortBusyError) as refused:
        stack.check_ports_free()
    assert refused.value.busy == {"sync": listening}
    assert f"port {listening}: sync gRPC (move it: DEVSTACK_SYNC_PORT=<free port>)" in str(refused.value)
    assert not stack.processes


def test_a_port_held_by_an_outgoing_connection_is_refused(tmp_path: Path, held_by_a_connection: int) -> None:
    stack = Stack(run_dir=tmp_path, ports=replace(Ports.free(), audit_health=held_by_a_connection))
    with pytest.raises(
        PortBusyError, match=f"port {held_by_a_connection}: audit health .*DEVSTACK_AUDIT_HEALTH_PORT"
    ):
        stack.check_ports_free()


def test_free_ports_pass_and_mongodb_is_not_checked_when_not_started(tmp_path: Path, listening: int) -> None:
    Stack(run_dir=tmp_path, ports=Ports.free()).check_ports_free()
    external = Stack(
        run_dir=tmp_path, ports=replace(Ports.free(), mongodb=listening), mongodb_uri="mongodb://x/"
    )
    external.check_ports_free()
    with pytest.raises(PortBusyError, match=r"FerretDB \(MongoDB\) .*DEVSTACK_MONGODB_PORT"):
        Stack(run_dir=tmp_path, ports=replace(Ports.free(), mongodb=listening)).check_ports_free()


def test_settings_move_ports_and_refuse_clashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVSTACK_SYNC_PORT", "7154")
    monkeypatch.setenv("DEVSTACK_GATEWAY_METRICS_PORT", "7155")
    ports = DevstackSettings().ports()
    assert (ports.sync, ports.gateway_metrics, ports.identity) == (7154, 7155, Ports.identity)
    monkeypatch.setenv("DEVSTACK_RECORDS_PORT", "7154")
    with pytest.raises(ValidationError, match="DEVSTACK_SYNC_PORT and DEVSTACK_RECORDS_PORT are both 7154"):
        DevstackSettings()


def test_make_up_stops_at_once_naming_the_busy_port(tmp_path: Path, listening: int) -> None:
    env = {
        **os.environ,
        **{f"DEVSTACK_{f.name.upper()}_PORT": str(free_port()) for f in fields(Ports)},
        "DEVSTACK_RECORDS_METRICS_PORT": str(listening),
        "EMR_RUN_DIR": str(tmp_path / "run"),
    }
    env.pop("MONGODB_URI", None)
    result = subprocess.run(
        [sys.executable, "-m", "emr_devstack"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert (
        f"port {listening}: records metrics (move it: DEVSTACK_RECORDS_METRICS_PORT=<free port>)"
        in result.stderr
    )
    assert "nothing was started" in result.stderr
    assert not (tmp_path / "run" / "devstack.pid").exists()
    assert not (tmp_path / "run" / "logs").exists()
