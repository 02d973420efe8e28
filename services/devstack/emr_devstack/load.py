"""Closed-loop load for benches: ``concurrency`` workers call as fast as answers come, for a time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def calls_per_second(
    call: Callable[[int], Awaitable[object]], concurrency: int, seconds: float
) -> float:
    """Runs ``call(n)`` (n = 0, 1, 2 ... across workers) for ``seconds``; returns completed calls a
    second. A failing call fails the measurement: a bench must not count errors as throughput."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal done
        index = offset
        while time.perf_counter() < deadline:
            await call(index)
            done += 1
            index += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return done / (time.perf_counter() - started)
