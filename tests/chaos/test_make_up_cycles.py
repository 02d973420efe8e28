"""`make up` then `make down`, five times in a row, on the same ports, while a thousand outgoing
connections hold ephemeral ports (a busy developer machine): each start comes up, each stop ends
every process cleanly and before `make down` returns, so the next start finds its ports free."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from emr_devstack.kube import REPO
from emr_devstack.stack import HTTP_SERVICES, Ports

CYCLES = 5
HELD_CONNECTIONS = 1000
UP_WITHIN_SECONDS = 120.0


@pytest.fixture
def busy_ephemeral_ports() -> Iterator[int]:
    """Outgoing connections to a local listener, each holding an ephemeral port as its own."""
    held: list[socket.socket] = []
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(HELD_CONNECTIONS)
        try:
            for _ in range(HELD_CONNECTIONS):
                client = socket.create_connection(server.getsockname())
                held.append(client)
                held.append(server.accept()[0])
            yield HELD_CONNECTIONS
        finally:
            for connection in held:
                connection.close()


async def make_up(env: dict[str, str]) -> tuple[asyncio.subprocess.Process, list[str]]:
    """Starts `make up`; returns once it printed that the platform is up."""
    process = await asyncio.create_subprocess_exec(
        "make", "up", cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    assert process.stdout is not None
    output: list[str] = []
    deadline = time.monotonic() + UP_WITHIN_SECONDS
    while not any("EMR platform is up" in line for line in output):
        remaining = deadline - time.monotonic()
        assert remaining > 0, "make up did not come up in time:\n" + "".join(output[-30:])
        line = (await asyncio.wait_for(process.stdout.readline(), remaining)).decode(errors="replace")
        assert line, "make up ended before the platform was up:\n" + "".join(output[-30:])
        output.append(line)
    return process, output


@pytest.mark.timeout(CYCLES * (UP_WITHIN_SECONDS + 60))
async def test_make_up_then_make_down_five_times_in_a_row(
    tmp_path: Path, busy_ephemeral_ports: int, chaos_figures: Any
) -> None:
    ports = Ports.free()  # below the ephemeral range, as the defaults are; the same for every cycle
    env = {
        **os.environ,
        **{f"DEVSTACK_{f.name.upper()}_PORT": str(getattr(ports, f.name)) for f in fields(Ports)},
        "EMR_RUN_DIR": str(tmp_path / "run"),
    }
    env.pop("MONGODB_URI", None)
    up_seconds: list[float] = []
    down_seconds: list[float] = []
    for cycle in range(1, CYCLES + 1):
        started = time.monotonic()
        up, output = await make_up(env)
        up_seconds.append(time.monotonic() - started)
        try:
            started = time.monotonic()
            down = await asyncio.to_thread(
                subprocess.run,
                ["make", "down"],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=150,
            )
            down_seconds.append(time.monotonic() - started)
            assert down.returncode == 0, down.stdout + down.stderr
            # `make down` returned once the platform had stopped: `make up` ends at once.
            await asyncio.wait_for(up.wait(), 5.0)
            assert up.stdout is not None
            output.extend((await up.stdout.read()).decode(errors="replace").splitlines(keepends=True))
        finally:
            if up.returncode is None:
                up.kill()
                await up.wait()
        assert up.returncode == 0, f"cycle {cycle}:\n" + "".join(output[-30:])
        stopped = next(line for line in output if line.startswith("stopped: "))
        codes = dict(item.split("=") for item in stopped.removeprefix("stopped: ").strip().split(", "))
        # uvicorn (gateway, emulator) re-raises SIGTERM once it has shut down gracefully.
        clean = {name: {"0", f"-{signal.SIGTERM}"} if name in HTTP_SERVICES else {"0"} for name in codes}
        assert all(code in clean[name] for name, code in codes.items()), f"cycle {cycle}: {stopped}"
    chaos_figures["cycles"] = CYCLES
    chaos_figures["held_ephemeral_ports"] = busy_ephemeral_ports
    chaos_figures["slowest_up_s"] = max(up_seconds)
    chaos_figures["slowest_down_s"] = max(down_seconds)
