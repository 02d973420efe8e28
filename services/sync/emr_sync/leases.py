"""Work leases as time-sliced terms, taken by insert (the only compare-and-set FerretDB 1.x does
atomically: its conditional updates race, measured at 4 winners of 32).

Time is cut into terms of ``seconds``; term k runs from k * seconds to (k + 1) * seconds (Unix
time). The lease ``name`` for term k is the document ``{_id: "<name>:<k>"}``: whoever inserts it
holds ``name`` during term k, and a document is never updated afterwards. A holder extends by
inserting term k + 1 ahead of the boundary, at ``RENEW_AT`` of its term; the others try only the
term their clock is in, so nobody else can take k + 1 before the boundary. A holder that did not win
the next term stops at its term's end minus a margin (a fraction of the term), which covers the clock
skew between replicas and the tail of a send started just before. Its deadline is kept on the
monotonic clock, measured from readings taken before the claim, so a slow insert or a wall clock
step never lengthens it.

No release: a holder keeps its term to its end (its next round takes it again at once); another
replica can take the partition at the next boundary. Lease documents of past terms are removed by a
periodic cleanup (one delete every ``CLEANUP_TERMS`` terms), never by the claims themselves.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

# Where in its term a holder inserts the next one: early enough to retry before the deadline.
RENEW_AT = 2 / 3
# Terms between two cleanups of past lease documents.
CLEANUP_TERMS = 10


@dataclass(frozen=True)
class Terms:
    """The arithmetic of terms: ``seconds`` long, the last ``margin_fraction`` of one unused."""

    seconds: float
    margin_fraction: float

    def __post_init__(self) -> None:
        if self.seconds <= 0:
            raise ValueError("a term must last more than 0 seconds")
        # The renewal must come before the deadline, or a holder could never extend in time.
        if not 0 < self.margin_fraction < 1 - RENEW_AT:
            raise ValueError(f"the margin must be a fraction of a term in (0, {1 - RENEW_AT:.3f})")

    def number(self, epoch_seconds: float) -> int:
        """The term that Unix time ``epoch_seconds`` falls in."""
        return math.floor(epoch_seconds / self.seconds)

    def start(self, term: int) -> float:
        return term * self.seconds

    def end(self, term: int) -> float:
        return (term + 1) * self.seconds

    def deadline(self, term: int) -> float:
        """The Unix time after which the holder of ``term`` (with no next term) starts nothing."""
        return self.end(term) - self.margin_fraction * self.seconds

    def renewal(self, term: int) -> float:
        """The Unix time at which the holder of ``term`` inserts the next one."""
        return self.start(term) + RENEW_AT * self.seconds

    def document_id(self, name: str, term: int) -> str:
        return f"{name}:{term}"


@dataclass(frozen=True)
class Held:
    """A lease won for ``term``; ``deadline`` and ``renew_at`` are on the monotonic clock."""

    name: str
    term: int
    deadline: float
    renew_at: float


# Inserts the lease document of (name, term, owner, expiry); True when ``owner`` holds it.
ClaimTerm = Callable[[str, int, str, datetime], Awaitable[bool]]


class TermLeases:
    """Claims and renews terms for one owner; knows nothing of what the leases guard."""

    def __init__(
        self,
        claim_term: ClaimTerm,
        owner: str,
        terms: Terms,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._claim_term = claim_term
        self._owner = owner
        self.terms = terms
        self._wall = wall
        self._monotonic = monotonic

    def now(self) -> float:
        """The monotonic clock deadlines are kept on."""
        return self._monotonic()

    async def claim(self, name: str) -> Held | None:
        """Takes (or finds already ours) the current term of ``name``; None when another holds it."""
        return await self._take(name, None)

    async def renew(self, held: Held) -> Held | None:
        """Takes the term after ``held`` (or the current one, if the holder fell further behind);
        None when another replica won it: ``held`` then runs out at its deadline."""
        return await self._take(held.name, held.term + 1)

    async def _take(self, name: str, at_least: int | None) -> Held | None:
        # Both clocks read before the insert: its duration is taken from the term, never added.
        wall, monotonic = self._wall(), self._monotonic()
        term = self.terms.number(wall)
        if at_least is not None:
            term = max(term, at_least)
        expires = datetime.fromtimestamp(self.terms.end(term), UTC)
        if not await self._claim_term(name, term, self._owner, expires):
            return None
        return Held(
            name=name,
            term=term,
            deadline=monotonic + self.terms.deadline(term) - wall,
            renew_at=monotonic + self.terms.renewal(term) - wall,
        )
