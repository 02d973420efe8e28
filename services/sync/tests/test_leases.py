"""The arithmetic of lease terms and the deadlines a holder keeps (no I/O: the claim is a stub of
the insert's answer)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from emr_sync.leases import RENEW_AT, TermLeases, Terms


def test_a_moment_falls_in_the_term_of_its_floor() -> None:
    terms = Terms(30, 0.15)
    assert terms.number(0) == 0
    assert terms.number(29.999) == 0
    assert terms.number(30) == 1
    assert terms.number(1_765_000_015.5) == 58_833_333
    assert terms.number(-0.001) == -1
    assert (terms.start(4), terms.end(4)) == (120, 150)


def test_fractional_terms_cut_time_without_gaps() -> None:
    terms = Terms(1.5, 0.15)
    assert [terms.number(t) for t in (0, 1.49, 1.5, 2.99, 3.0)] == [0, 0, 1, 1, 2]
    assert terms.end(7) == terms.start(8)


def test_a_holder_renews_before_its_deadline_and_stops_before_the_boundary() -> None:
    terms = Terms(30, 0.15)
    assert terms.renewal(2) == 60 + 20
    assert terms.deadline(2) == pytest.approx(90 - 4.5)
    assert terms.renewal(2) < terms.deadline(2) < terms.end(2) == terms.start(3)
    assert terms.document_id("partition:3", 7) == "partition:3:7"


@pytest.mark.parametrize("fraction", [0, -0.1, 1 - RENEW_AT, 0.5])
def test_a_margin_that_leaves_no_time_to_renew_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match="margin"):
        Terms(30, fraction)


def test_a_term_of_no_length_is_refused() -> None:
    with pytest.raises(ValueError, match="term"):
        Terms(0, 0.1)


class Clocks:
    """A wall clock and a monotonic clock that differ by an offset; a claim can take time."""

    def __init__(self, wall: float, monotonic: float) -> None:
        self.wall_value = wall
        self.monotonic_value = monotonic

    def wall(self) -> float:
        return self.wall_value

    def monotonic(self) -> float:
        return self.monotonic_value

    def advance(self, seconds: float) -> None:
        self.wall_value += seconds
        self.monotonic_value += seconds


class Inserts:
    """The answers of the lease insert: the first owner of (name, term) holds it."""

    def __init__(self, clocks: Clocks, takes_seconds: float = 0.0) -> None:
        self.owners: dict[tuple[str, int], str] = {}
        self.expiries: dict[tuple[str, int], datetime] = {}
        self.clocks = clocks
        self.takes_seconds = takes_seconds

    async def __call__(self, name: str, term: int, owner: str, expires_at: datetime) -> bool:
        self.clocks.advance(self.takes_seconds)
        self.owners.setdefault((name, term), owner)
        self.expiries.setdefault((name, term), expires_at)
        return self.owners[(name, term)] == owner


async def test_a_claim_holds_the_current_term_until_its_deadline_on_the_monotonic_clock() -> None:
    clocks = Clocks(wall=3010.0, monotonic=500.0)  # term 100 of 30 s: 3000..3030
    inserts = Inserts(clocks)
    leases = TermLeases(inserts, "a", Terms(30, 0.15), clocks.wall, clocks.monotonic)
    held = await leases.claim("partition:1")
    assert held is not None
    assert held.term == 100
    assert held.deadline == pytest.approx(500 + (3030 - 4.5 - 3010))
    assert held.renew_at == pytest.approx(500 + (3020 - 3010))
    assert inserts.expiries[("partition:1", 100)] == datetime.fromtimestamp(3030, UTC)


async def test_a_slow_insert_shortens_the_hold_and_never_lengthens_it() -> None:
    clocks = Clocks(wall=3010.0, monotonic=500.0)
    leases = TermLeases(Inserts(clocks, takes_seconds=7), "a", Terms(30, 0.15), clocks.wall, clocks.monotonic)
    held = await leases.claim("partition:1")
    assert held is not None
    # Measured from the readings taken before the insert: 7 s of the term went by meanwhile.
    assert held.deadline - clocks.monotonic() == pytest.approx(3030 - 4.5 - 3017)


async def test_a_wall_clock_step_after_the_claim_does_not_move_the_deadline() -> None:
    clocks = Clocks(wall=3010.0, monotonic=500.0)
    leases = TermLeases(Inserts(clocks), "a", Terms(30, 0.15), clocks.wall, clocks.monotonic)
    held = await leases.claim("partition:1")
    assert held is not None
    clocks.wall_value -= 600  # NTP steps the wall clock back ten minutes
    clocks.monotonic_value += 26
    assert leases.now() >= held.deadline


async def test_only_the_first_inserter_holds_a_term_and_finds_it_again() -> None:
    clocks = Clocks(wall=3010.0, monotonic=500.0)
    inserts = Inserts(clocks)
    terms = Terms(30, 0.15)
    first = TermLeases(inserts, "a", terms, clocks.wall, clocks.monotonic)
    second = TermLeases(inserts, "b", terms, clocks.wall, clocks.monotonic)
    assert await first.claim("partition:1") is not None
    assert await second.claim("partition:1") is None
    again = await first.claim("partition:1")
    assert again is not None and again.term == 100


async def test_a_renewal_takes_the_next_term_ahead_of_the_boundary_and_extends_the_deadline() -> None:
    clocks = Clocks(wall=3010.0, monotonic=500.0)
    inserts = Inserts(clocks)
    terms = Terms(30, 0.15)
    holder = TermLeases(inserts, "a", terms, clocks.wall, clocks.monotonic)
    other = TermLeases(inserts, "b", terms, clocks.wall, clocks.monotonic)
    held = await holder.claim("partition:1")
    assert held is not None
    clocks.advance(10)  # 3020: the renewal point
    renewed = await holder.renew(held)
    assert renewed is not None and renewed.term == 101
    assert renewed.deadline == pytest.approx(held.deadline + 30)
    clocks.advance(10)  # 3030: the boundary; the other replica finds term 101 taken
    assert await other.claim("partition:1") is None


async def test_a_holder_that_lost_the_next_term_keeps_only_its_own_deadline() -> None:
    clocks = Clocks(wall=3010.0, monotonic=500.0)
    inserts = Inserts(clocks)
    terms = Terms(30, 0.15)
    holder = TermLeases(inserts, "a", terms, clocks.wall, clocks.monotonic)
    held = await holder.claim("partition:1")
    assert held is not None
    inserts.owners[("partition:1", 101)] = "b"  # won by a replica whose clock runs ahead
    clocks.advance(10)
    assert await holder.renew(held) is None
    clocks.advance(15.5)  # 3025.5: inside the margin
    assert holder.now() >= held.deadline


async def test_a_renewal_far_behind_takes_the_current_term_not_a_past_one() -> None:
    clocks = Clocks(wall=3010.0, monotonic=500.0)
    inserts = Inserts(clocks)
    holder = TermLeases(inserts, "a", Terms(30, 0.15), clocks.wall, clocks.monotonic)
    held = await holder.claim("partition:1")
    assert held is not None
    clocks.advance(95)  # 3105: term 103
    renewed = await holder.renew(held)
    assert renewed is not None and renewed.term == 103
    assert ("partition:1", 101) not in inserts.owners
