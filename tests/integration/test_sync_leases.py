"""Sync's work leases on the stack's database: a term is taken by inserting its document, so one
claimer wins it however many race, and a holder that stops extending is replaced at the boundary
without overlapping its successor."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from emr_devstack.stack import DEV_FIELD_ENCRYPTION, Stack
from emr_runtime.fieldcrypt import FieldCrypt
from emr_sync.leases import Held, TermLeases, Terms
from emr_sync.repository import LEASES, SyncRepository

PARTITION = "partition:3"
CLAIMERS = 32


def clock_at(moment: float) -> Callable[[], float]:
    return lambda: moment


@pytest.fixture
async def repositories(
    stack: Stack, mongo: AsyncMongoClient[dict[str, Any]]
) -> AsyncIterator[list[SyncRepository]]:
    """Repositories over four clients of their own (as replicas have), on a database of this test."""
    database = f"emr_sync_leases_{uuid.uuid4().hex[:8]}"
    crypt = FieldCrypt.from_variables(DEV_FIELD_ENCRYPTION)
    clients: list[AsyncMongoClient[dict[str, Any]]] = [
        AsyncMongoClient(stack.effective_mongodb_uri, tz_aware=True) for _ in range(4)
    ]
    try:
        yield [SyncRepository(client[database], crypt) for client in clients]
    finally:
        for client in clients:
            await client.close()
        await mongo.drop_database(database)


async def test_of_32_claimers_racing_for_a_term_exactly_one_wins_term_after_term(
    repositories: list[SyncRepository], mongo: AsyncMongoClient[dict[str, Any]]
) -> None:
    terms = Terms(30, 0.15)
    first = terms.number(time.time())
    winners: dict[int, str] = {}
    for term in range(first, first + 6):
        # Every claimer's clock reads the middle of the term, so all of them try that one term.
        middle = terms.start(term) + terms.seconds / 2
        claimers = [
            TermLeases(
                repositories[i % len(repositories)].claim_term, f"replica-{i}", terms, clock_at(middle)
            )
            for i in range(CLAIMERS)
        ]
        held = await asyncio.gather(*(claimer.claim(PARTITION) for claimer in claimers))
        won = [f"replica-{i}" for i, hold in enumerate(held) if hold is not None]
        assert len(won) == 1, (term, won)
        winners[term] = won[0]
        # Asked again, the winner still holds it and every other claimer is still refused.
        again = await asyncio.gather(*(claimer.claim(PARTITION) for claimer in claimers))
        assert [f"replica-{i}" for i, hold in enumerate(again) if hold is not None] == won
    database = repositories[0]._leases.database.name
    stored = {
        document["term"]: document["owner"]
        async for document in mongo[database][LEASES].find({"name": PARTITION})
    }
    assert stored == winners


async def test_a_holder_that_stops_extending_is_replaced_at_the_boundary_without_overlap(
    repositories: list[SyncRepository],
) -> None:
    terms = Terms(2.0, 0.25)  # deadline 0.5 s before each boundary; renewal at 2/3 of a term
    send_seconds = 0.01
    windows: list[tuple[str, float, float]] = []  # (owner, first instant, last instant), monotonic

    async def work(owner: str, repository: SyncRepository, renewals: int | None, until: float) -> Held | None:
        """Sends while it holds the partition (checking the deadline before each send, as the
        service does), extending ``renewals`` times (None: always); returns its last hold."""
        leases = TermLeases(repository.claim_term, owner, terms)
        held: Held | None = None
        last: Held | None = None
        while leases.now() < until:
            if held is None or leases.now() >= held.deadline:
                if renewals is not None and last is not None:
                    return last  # a holder that stopped extending goes away once its term ran out
                held = await leases.claim(PARTITION)
            elif leases.now() >= held.renew_at and (renewals is None or renewals > 0):
                renewed = await leases.renew(held)
                if renewed is not None:
                    held = renewed
                    renewals = None if renewals is None else renewals - 1
            if held is None or leases.now() >= held.deadline:
                await asyncio.sleep(0.005)
                continue
            last = held
            started = leases.now()
            await asyncio.sleep(send_seconds)
            windows.append((owner, started, leases.now()))
        return last

    # The first holder takes the partition at the start of a term, extends once, then stops.
    start_term = terms.number(time.time()) + 1
    await asyncio.sleep(terms.start(start_term) - time.time())
    leases = TermLeases(repositories[0].claim_term, "first", terms)
    assert await leases.claim(PARTITION) is not None
    until = time.monotonic() + 4 * terms.seconds
    first_last, *_ = await asyncio.gather(
        work("first", repositories[0], 1, until),
        *(work(f"next-{i}", repositories[1 + i % 3], None, until) for i in range(8)),
    )
    assert first_last is not None and first_last.term == start_term + 1
    by_first = [w for w in windows if w[0] == "first"]
    by_others = sorted(w for w in windows if w[0] != "first")
    # It sent in both of its terms.
    assert by_first and by_others
    assert min(w[1] for w in by_first) < first_last.deadline - terms.seconds
    # Nobody sent while another did: windows of different owners never overlap.
    last_instant: dict[str, float] = {}
    for owner, started, ended in sorted(windows, key=lambda w: w[1]):
        others = [instant for other, instant in last_instant.items() if other != owner]
        assert all(instant <= started for instant in others), (owner, started, last_instant)
        last_instant[owner] = max(ended, last_instant.get(owner, ended))
    # The first holder sent nothing past its deadline; its successor took over at the next term.
    assert max(w[2] for w in by_first) <= first_last.deadline + send_seconds + 0.2
    first_other = min(w[1] for w in by_others)
    assert first_other >= max(w[2] for w in by_first)
    boundary = first_last.deadline + terms.margin_fraction * terms.seconds  # on the monotonic clock
    assert boundary - 0.05 <= first_other <= boundary + terms.seconds
