"""Identity use cases: coordinate the pure domain and matcher with the repository."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from prometheus_client import Counter, Gauge

from emr_identity.domain import (
    EventKind,
    IdentifierSystem,
    LinkEvent,
    Outcome,
    PatientChange,
    PatientChangeKind,
    Person,
    PersonStatus,
    Registration,
    RegistrationInput,
    check_patient_id,
    identifier_key,
    masked,
    new_person,
    phone_key,
    validate_registration,
)
from emr_identity.linkage import (
    RESOLUTIONS,
    FacilityRecord,
    ProposedDemographics,
    Resolution,
    ReviewKind,
    ReviewTask,
    facility_person,
    known_as,
    newest,
    proposes_change,
    record_demographics,
    review_task_id,
    shown_demographics,
)
from emr_identity.matching import (
    Candidate,
    Decision,
    MatchRecord,
    MatchResult,
    NameFrequencies,
    block_kind,
    blocking_keys,
    candidate_records,
    decide,
    identifier_conflict,
    match_record,
    proposable,
    rank,
    score,
    shared_identifiers,
)
from emr_identity.repository import PatientChangeRepository, PersonRepository
from emr_identity.vietnamese import fold, normalize_name, normalize_phone, split_name
from emr_runtime.changefeed import check_feed_request
from emr_runtime.clock import utc_now
from emr_runtime.errors import (
    ConflictError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    Violations,
)
from emr_runtime.idempotency import check_request_id, derive_id
from emr_runtime.paging import PageTokens, page_size, position_int
from emr_runtime.visibility import Visibility, current_access, denial_reason

log = logging.getLogger("emr.identity")
_LINK_CHANGES = frozenset(
    {
        PatientChangeKind.MERGED,
        PatientChangeKind.MERGE_SURVIVOR,
        PatientChangeKind.UNMERGED,
        PatientChangeKind.UNMERGE_SURVIVOR,
    }
)

# Merge chains are short (a merged person's survivor is rarely merged again); this bounds a loop
# over corrupted data.
MAX_MERGE_HOPS = 16
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
# A search page holds at most this many persons, whatever page_size asks (searches find persons at
# a desk, they do not list the index), and one call checks the access model for at most
# SEARCH_EXAMINED_PER_CALL persons: a page can come back short, with a token to go on.
MAX_SEARCH_RESULTS = 20
SEARCH_EXAMINED_PER_CALL = 100
# Times an update on behalf of a facility that alone registered the person re-reads the person
# when a concurrent change of it won (it then answers ABORTED).
PERSON_UPDATE_ATTEMPTS = 3

# Registrations take turns on their blocking keys (see IdentityService._turns): a turn is held
# for at most REGISTRATION_TURN_SECONDS (then a holder is presumed crashed and its turn can be
# broken); a registration waits at most REGISTRATION_TURN_WAIT_SECONDS for its turns, polling with
# a back-off from TURN_POLL_FIRST_SECONDS doubling up to TURN_POLL_MAX_SECONDS, then answers
# ABORTED (retry the same request_id). A registration takes well under a second, so the wait
# lets dozens of concurrent registrations of one person through, one after another.
REGISTRATION_TURN_SECONDS = 30.0
REGISTRATION_TURN_WAIT_SECONDS = 60.0
TURN_POLL_FIRST_SECONDS = 0.005
TURN_POLL_MAX_SECONDS = 0.1
TURN_CLOCK_SKEW_SECONDS = 5.0
# Locks in which this process's registrations queue for the blocks whose keys hash alike (bounded
# memory, rare needless waits).
LOCAL_TURN_STRIPES = 1024

# Labelled by outcome only (created, existing, linked, review): never by patient or facility.
MATCH_OUTCOMES = Counter(
    "emr_identity_match_outcomes_total", "Registrations linked, by how the matcher decided.", ("outcome",)
)
for _outcome in Outcome:
    MATCH_OUTCOMES.labels(_outcome.value)
# Block reads whose members were more than retrieval scores (see matching.MAX_BLOCK_MEMBERS), by
# the kind of key (gd, fmd, fy, ph, cccd, bhyt, pp): a sign that kind of key needs narrowing.
OVERSIZED_BLOCKS = Counter(
    "emr_identity_oversized_blocks_total",
    "Block reads that left out the oldest members of a block over the size cap, by key kind.",
    ("kind",),
)
TURN_TIMEOUTS = Counter(
    "emr_identity_registration_turn_timeouts_total",
    "Registrations answered ABORTED after waiting too long for their turn on a blocking key.",
)
REVIEW_QUEUE_SIZE = Gauge("emr_identity_review_queue_size", "Open review tasks (likely duplicates).")


def _turn_timeout() -> ConflictError:
    TURN_TIMEOUTS.inc()
    return ConflictError("registrations of the same person are in progress; retry the request")


@dataclass(frozen=True)
class RegistrationResult:
    """What a registration tells its caller: ``person`` is the caller's own record (what it sent,
    normalised) under the person's id; ``candidates`` only as ``disclosed`` allows."""

    person: Person
    outcome: Outcome
    candidates: tuple[Candidate, ...] = ()
    review_task_id: str = ""


@dataclass(frozen=True)
class UpdateResult:
    """The person as the caller sees it after an update; ``change_proposed``: the name, birth date
    or sex became a proposal (review task ``review_task_id``) and the person is unchanged."""

    person: Person
    candidates: tuple[Candidate, ...] = ()
    review_task_id: str = ""
    change_proposed: bool = False


@dataclass(frozen=True)
class PersonView:
    """A person as GetPatient shows it: the survivor if the requested id was merged."""

    person: Person
    merged_from: str
    record_ids: tuple[str, ...]


@dataclass(frozen=True)
class SearchQuery:
    identifier_key: str = ""
    full_name: str = ""
    birth_year: int = 0
    exact_name: bool = False
    phone: str = ""
    page_size: int = 0
    page_token: str = ""


class IdentityService:
    def __init__(
        self,
        persons: PersonRepository,
        changes: PatientChangeRepository,
        change_settle: timedelta,
        page_tokens: PageTokens,
    ) -> None:
        self._persons = persons
        self._changes = changes
        self._change_settle = change_settle
        self._page_tokens = page_tokens
        self._frequencies: NameFrequencies | None = None
        self._local_turns = [asyncio.Lock() for _ in range(LOCAL_TURN_STRIPES)]
        # Called after a merge or unmerge changed which registrations make up a person (the access
        # model's kept answers depend on it).
        self.links_changed: list[Callable[[], None]] = []

    @property
    def page_tokens(self) -> PageTokens:
        """The identity service's page tokens (its sharing listings issue them too)."""
        return self._page_tokens

    async def _name_frequencies(self) -> NameFrequencies:
        # Loaded once per process, then kept current by this process's registrations; other
        # replicas' registrations arrive at the next start (frequencies need not be exact).
        if self._frequencies is None:
            self._frequencies = await self._persons.name_frequencies()
        return self._frequencies

    # --- registration -----------------------------------------------------------------------------

    async def register(self, raw: RegistrationInput, actor_id: str = "") -> RegistrationResult:
        """Registers a facility record once per request_id and links it: a CCCD or facility MRN
        already registered resolves to its person (claimed through unique ids, safe under
        concurrency without transactions); otherwise the matcher links automatically, opens a
        review task, or creates a person. A CCCD, BHYT or passport held only by persons known by
        another name or birth date links to none of them (Outcome.CONFLICT). The caller gets back
        its own record of the person, never what other facilities entered."""
        now = utc_now()
        registration = validate_registration(raw, now.date())
        candidate = new_person(registration, derive_id("person", registration.request_id), now)
        stored = await self._persons.insert_or_get(candidate)
        if stored.request_fingerprint != candidate.request_fingerprint:
            raise ConflictError("request_id was already used for a different registration", "request_id")
        record_id = derive_id("record", registration.request_id)
        # The record is written once, finished (with its outcome): the first of two concurrent twins
        # of the request to write it wins, and a repeat finds it. Until then it is absent, which
        # candidate retrieval treats like an unfinished record (its blocks may list it already).
        record = await self._persons.get_record(record_id)
        if record is None:
            record = await self._link_in_turn(stored, registration, record_id, actor_id, now)
        assert record.outcome is not None
        person = (await self._view(record.person_id, "patient_id")).person
        shown = facility_person(person.person_id, record)
        if (await current_access().visibility(person.person_id)).shares_demographics:
            # The version of what the caller's GetPatient shows: the person, not its own record.
            shown = replace(shown, version=person.version)
        disclosed = record.outcome in (Outcome.LINKED, Outcome.REVIEW)
        return RegistrationResult(
            person=shown,
            outcome=record.outcome,
            candidates=await self._disclosed(record.candidates, visible_only=False) if disclosed else (),
            review_task_id=record.review_task_id,
        )

    async def _link_in_turn(
        self, stored: Person, registration: Registration, record_id: str, actor_id: str, now: datetime
    ) -> FacilityRecord:
        """Links the registration and writes its finished record while holding the turns on its
        blocking keys. Why every one of them, not only the strongest: candidate retrieval reads
        exactly the blocks of the new record's keys, and a record is filed under the same keys, so
        two registrations that could find each other share at least one key however their data
        differ (a typo in the name still shares the phone or given name + birth date key), and
        whichever gets that turn second finds the first finished, instead of both creating a
        person. Any subset could miss such a pair. (Keys a registration reads or files under are
        one set today, ``blocking_keys``; should they ever differ, the turns must cover both.)"""
        match = match_record(registration, record_id)
        async with self._turns(blocking_keys(match)):
            # A concurrent twin of the request may have finished it while this one waited.
            record = await self._persons.get_record(record_id)
            if record is not None:
                return record
            linked = await self._link(
                stored,
                FacilityRecord(
                    record_id=record_id,
                    person_id=stored.person_id,
                    facility_code=registration.facility_code,
                    match=match,
                    request_fingerprint=registration.fingerprint,
                    created_at=now,
                    identifiers=registration.identifiers,
                    demographics=record_demographics(registration),
                ),
                actor_id,
                now,
            )
            record, inserted = await self._persons.insert_or_get_record(linked)
        if inserted:
            assert linked.outcome is not None
            MATCH_OUTCOMES.labels(linked.outcome.value).inc()
        return record

    @asynccontextmanager
    async def _turns(self, keys: Iterable[str]) -> AsyncIterator[None]:
        """Holds the registration turns on ``keys`` (a short serialisation per block). Turns are
        held in sorted order, the same in every process, so two registrations never each hold a
        key the other waits for: all free turns are taken in one round trip; from the first one
        another holds, the rest are taken one at a time (any taken beyond it first given back).
        Given back when the block ends, however it ends."""
        ordered = sorted(set(keys))
        # Registrations of this process queue for a block here first (in stripe order: no
        # deadlock), so that one of them at a time polls the database for its turn and the next
        # one goes on the moment it is done.
        stripes = sorted({hash(key) % LOCAL_TURN_STRIPES for key in ordered})
        deadline = asyncio.get_running_loop().time() + REGISTRATION_TURN_WAIT_SECONDS
        async with AsyncExitStack() as local_turns:
            try:
                async with asyncio.timeout_at(deadline):
                    for stripe in stripes:
                        await local_turns.enter_async_context(self._local_turns[stripe])
            except TimeoutError:
                raise _turn_timeout() from None
            async with self._database_turns(ordered, deadline):
                yield

    @asynccontextmanager
    async def _database_turns(self, ordered: list[str], deadline: float) -> AsyncIterator[None]:
        """The turns on ``ordered`` (sorted keys) in the database, shared by every replica;
        ConflictError once the event loop's clock passes ``deadline``."""
        holder = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        first_taken_at = time.time()
        taken_now = await self._persons.take_turns(ordered, holder, first_taken_at, REGISTRATION_TURN_SECONDS)
        first_missing = next((i for i, key in enumerate(ordered) if key not in taken_now), len(ordered))
        held = ordered[:first_missing]
        try:
            beyond = [key for key in ordered[first_missing:] if key in taken_now]
            if beyond:
                await self._persons.end_turns(beyond, holder, unexpired=True)
            for key in ordered[first_missing:]:
                delay = TURN_POLL_FIRST_SECONDS
                while not await self._persons.take_turn(key, holder, time.time(), REGISTRATION_TURN_SECONDS):
                    if loop.time() >= deadline:
                        raise _turn_timeout()
                    # Jitter keeps waiters of one key from polling in step.
                    await asyncio.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311 (jitter, not a secret)
                    delay = min(delay * 2, TURN_POLL_MAX_SECONDS)
                held.append(key)
            yield
        finally:
            # Turns expire REGISTRATION_TURN_SECONDS after they were taken (on the clock of this
            # process; other replicas' clocks may differ by up to TURN_CLOCK_SKEW_SECONDS).
            unexpired = time.time() < first_taken_at + REGISTRATION_TURN_SECONDS - TURN_CLOCK_SKEW_SECONDS
            # Shielded: a cancelled caller still gives its turns back (else they wait out expiry).
            await asyncio.shield(self._persons.end_turns(held, holder, unexpired))

    async def _disclosed(self, candidates: Iterable[Candidate], visible_only: bool) -> tuple[Candidate, ...]:
        """Candidates as the caller may see them: ids and scores; the per-field contributions only
        of persons whose every facility's demographics the caller may see (they compare with other
        facilities' data, and would tell a registrar what those hold). ``visible_only``: persons
        the caller's facility has no relationship with are left out."""
        access = current_access()
        shown: list[Candidate] = []
        for candidate in candidates:
            visibility = await access.visibility(candidate.person_id)
            if visible_only and not visibility.opens_anything:
                continue
            if not visibility.shares_demographics:
                candidate = replace(candidate, score=replace(candidate.score, contributions=()))
            shown.append(candidate)
        return tuple(shown)

    async def _link(
        self, stored: Person, record: FacilityRecord, actor_id: str, now: datetime
    ) -> FacilityRecord:
        if stored.status is PersonStatus.SUPERSEDED:
            return replace(record, person_id=stored.superseded_by, outcome=Outcome.EXISTING)
        if stored.status is not PersonStatus.PROVISIONAL:
            # Finished before a crash (or by a concurrent twin): keep it, and make sure it is in the feed.
            await self._changed(PatientChangeKind.REGISTERED, stored.person_id, "registered")
            return replace(record, outcome=Outcome.CREATED)
        # Claimed at once; the first key owned by another person (CCCD first) decides.
        owners = await asyncio.gather(*(self._persons.claim(k, stored.person_id) for k in stored.claim_keys))
        for claim_key, owner_id in zip(stored.claim_keys, owners, strict=True):
            if owner_id != stored.person_id:
                # The owner may have stopped before activating; its document is complete, so finish it.
                await self._persons.activate(owner_id)
                if claim_key.startswith(("cccd:", "cccd#")):  # as new, or as stored (blind index)
                    holders = await self._known_demographics({owner_id})
                    if identifier_conflict(record.match, holders):
                        return await self._keep_apart(stored, record, holders, actor_id, now)
                if await self._persons.supersede(stored.person_id, owner_id):
                    await self._persons.release_claims(stored.person_id, stored.claim_keys)
                    await self._attach(record, owner_id, EventKind.LINKED, actor_id, now)
                    return replace(record, person_id=owner_id, outcome=Outcome.EXISTING)
                # A rival registration already resolved to this person (it won an earlier claim), so
                # it stays; the matcher below decides about the contested identifier.
        holders = await self._identifier_holders(record.match, exclude={stored.person_id})
        if identifier_conflict(record.match, holders):
            return await self._keep_apart(stored, record, holders, actor_id, now)
        result = await self._match(record.match, exclude={stored.person_id})
        if result.decision is Decision.LINK:
            target = result.candidates[0].person_id
            if await self._persons.supersede(stored.person_id, target):
                await self._persons.transfer_claims(stored.claim_keys, stored.person_id, target)
                await self._attach(record, target, EventKind.LINKED, actor_id, now)
                return replace(record, person_id=target, outcome=Outcome.LINKED, candidates=result.candidates)
        await self._persons.activate(stored.person_id)
        await self._attach(record, stored.person_id, EventKind.CREATED, actor_id, now)
        await self._changed(PatientChangeKind.REGISTERED, stored.person_id, "registered")
        if result.decision is not Decision.REVIEW:
            return replace(record, outcome=Outcome.CREATED)
        task = ReviewTask(
            task_id=review_task_id(await self._persons.next_review_sequence()),
            person_id=stored.person_id,
            record_id=record.record_id,
            candidates=result.candidates,
            created_at=now,
        )
        await self._persons.insert_task(task)
        await self._log(
            EventKind.REVIEW_OPENED, stored.person_id, f"{record.record_id}:review", actor_id, now
        )
        return replace(
            record, outcome=Outcome.REVIEW, candidates=result.candidates, review_task_id=task.task_id
        )

    async def _keep_apart(
        self,
        stored: Person,
        record: FacilityRecord,
        holders: dict[str, list[MatchRecord]],
        actor_id: str,
        now: datetime,
    ) -> FacilityRecord:
        """An identifier conflict: the registration becomes a person of its own (the facility keeps
        treating and recording under it, and gains no relationship with the holders), and a review
        task asks a data steward whether it is one of them. The record names no candidate: the
        caller learns nothing of the holders."""
        await self._persons.activate(stored.person_id)
        await self._attach(record, stored.person_id, EventKind.CREATED, actor_id, now)
        await self._changed(PatientChangeKind.REGISTERED, stored.person_id, "registered")
        known = [(person_id, match) for person_id, matches in holders.items() for match in matches]
        task = ReviewTask(
            task_id=review_task_id(await self._persons.next_review_sequence()),
            person_id=stored.person_id,
            record_id=record.record_id,
            candidates=tuple(rank(record.match, known, await self._name_frequencies())),
            created_at=now,
            kind=ReviewKind.IDENTIFIER_CONFLICT,
            facility_code=record.facility_code,
        )
        await self._persons.insert_task(task)
        await self._log(
            EventKind.REVIEW_OPENED, stored.person_id, f"{record.record_id}:review", actor_id, now
        )
        return replace(
            record, person_id=stored.person_id, outcome=Outcome.CONFLICT, review_task_id=task.task_id
        )

    async def _identifier_holders(
        self, match: MatchRecord, exclude: set[str]
    ) -> dict[str, list[MatchRecord]]:
        """The persons (but ``exclude``) whose finished records carry the BHYT or passport of
        ``match``, with the demographics they are known by. (A CCCD is unique: its claim names its
        one holder.)"""
        keys = [
            identifier_key(system, value)
            for system, value in (
                (IdentifierSystem.BHYT, match.bhyt_code),
                (IdentifierSystem.PASSPORT, match.passport),
            )
            if value
        ]
        if not keys:
            return {}
        members = await self._block_members(keys)
        sharing = [
            record_id
            for record_id, member in members.items()
            if record_id != match.record_id and set(shared_identifiers(match, member)) & {"bhyt", "passport"}
        ]
        records = [r for r in await self._persons.records(sharing) if r.outcome is not None]
        return await self._known_demographics({r.person_id for r in records} - exclude)

    async def _known_demographics(self, person_ids: set[str]) -> dict[str, list[MatchRecord]]:
        """Each person with what it is known by: its current demographics and its facility records
        (and those of persons merged into it)."""
        known: dict[str, list[MatchRecord]] = {}
        for person in await self._persons.get_many(person_ids):
            merged = await self._persons.get_many(person.merged_person_ids)
            record_ids = person.record_ids + tuple(r for m in merged for r in m.record_ids)
            records = await self._persons.records(record_ids)
            known[person.person_id] = [known_as(person), *(r.match for r in records if r.outcome is not None)]
        for person_id in person_ids - set(known):
            known[person_id] = []  # unreadable: known by nothing, so never taken on trust
        return known

    async def _attach(
        self, record: FacilityRecord, person_id: str, kind: EventKind, actor_id: str, now: datetime
    ) -> None:
        frequencies = await self._name_frequencies()  # loaded before this record is counted
        # Idempotent writes to different documents, so concurrently rather than one after another
        # (two concurrent updates of one document may lose one on FerretDB 1.x, which reads and
        # writes a document in separate steps). The person gets the record and the event in one update.
        await asyncio.gather(
            self._persons.file_in_blocks(blocking_keys(record.match), record.match),
            self._persons.count_names(record.match.names),
            self._log(
                kind, person_id, record.record_id, actor_id, now, record_id=record.record_id, attach=True
            ),
        )
        frequencies.add(record.match.names)

    async def _log(
        self,
        kind: EventKind,
        person_id: str,
        origin: str,
        actor_id: str,
        now: datetime,
        other_person_id: str = "",
        record_id: str = "",
        reason: str = "",
        attach: bool = False,
        **details: str | int,
    ) -> None:
        """Appends to the person's link log; the event id derives from what caused it (``origin``),
        so a repeated request does not log twice. ``attach``: also lists ``record_id`` among the
        person's records (same update). ``details``: LinkEvent's optional fields."""
        event = LinkEvent(
            event_id=derive_id(f"event:{kind.value}:{person_id}", origin),
            kind=kind,
            person_id=person_id,
            at=now,
            actor_id=actor_id,
            other_person_id=other_person_id,
            record_id=record_id,
            reason=reason,
            **details,  # type: ignore[arg-type]
        )
        await self._persons.append_event(event, attach_record=attach)

    # --- update -----------------------------------------------------------------------------------

    async def update(
        self, raw: RegistrationInput, patient_id: str, expected_version: int, actor_id: str
    ) -> UpdateResult:
        """Updates a person's demographics at ``expected_version`` (the version of what the caller
        reads: the person, or its own facility record when it sees only its own data)."""
        view = await self._view(patient_id, "patient_id")
        visibility = await current_access().visibility(patient_id)
        if visibility.shares_demographics:
            return await self._update_person(raw, view.person, expected_version, actor_id)
        return await self._update_own_record(raw, view, visibility, expected_version, actor_id)

    async def _update_person(
        self, raw: RegistrationInput, person: Person, expected_version: int, actor_id: str
    ) -> UpdateResult:
        """Replaces the best-known demographics at ``expected_version``, then re-evaluates this
        person's links only: likely matches open a review task (never an automatic merge)."""
        done = await self._persons.get_event(derive_id(f"event:updated:{person.person_id}", raw.request_id))
        if done is not None:
            if done.request_fingerprint != raw.fingerprint:
                raise ConflictError("request_id was already used for a different update", "request_id")
            candidates, task_id = await self._finish_update(person.person_id, done)
            current = (await self._view(person.person_id, "patient_id")).person
            return UpdateResult(current, await self._disclosed(candidates, visible_only=True), task_id)
        now = utc_now()
        registration = validate_registration(
            replace(raw, facility_code=person.registering_facility_code), now.date()
        )
        if expected_version < 1:
            raise InvalidArgumentError([FieldViolation("expected_version", "the version read, 1 or more")])
        if raw.claim_profile is None:
            registration = replace(registration, claim_profile=person.claim_profile)
        replaced = await self._replace_demographics(
            person, registration, expected_version, raw.request_id, raw.fingerprint, actor_id, now
        )
        if replaced is None:
            raise ConflictError(
                "the person changed since expected_version; read it again", "expected_version"
            )
        updated, candidates, task_id = replaced
        return UpdateResult(updated, await self._disclosed(candidates, visible_only=True), task_id)

    async def _finish_update(self, person_id: str, done: LinkEvent) -> tuple[tuple[Candidate, ...], str]:
        """A retry of an update that happened: puts the change in the feed (a crash may have come
        between the update and its change) and returns what the update found."""
        await self._changed(PatientChangeKind.UPDATED, person_id, f"v{done.version}")
        task = await self._persons.get_task(done.review_task_id) if done.review_task_id else None
        return (task.candidates if task else ()), done.review_task_id

    async def _replace_demographics(
        self,
        person: Person,
        registration: Registration,
        expected_version: int,
        request_id: str,
        fingerprint: str,
        actor_id: str,
        now: datetime,
        reason: str = "",
    ) -> tuple[Person, tuple[Candidate, ...], str] | None:
        """Replaces the person's demographics with the registration's if the person is at
        ``expected_version`` (None if not), re-evaluates its links (likely matches open a review
        task) and logs and feeds the change; returns the person, the candidates and the task id."""
        updated = replace(
            person,
            full_name=registration.full_name,
            birth_date=registration.birth_date,
            sex=registration.sex,
            phone=registration.phone,
            province_code=registration.province_code,
            claim_profile=registration.claim_profile,
            version=expected_version + 1,
        )
        if not await self._persons.update_demographics(updated, expected_version, request_id):
            return None
        result = await self._match(
            match_record(registration, f"{person.person_id}:v{updated.version}"),
            exclude={person.person_id, *person.merged_person_ids},
            rejected=frozenset(person.rejected_person_ids),
        )
        task_id = ""
        if result.candidates:
            task_id = review_task_id(await self._persons.next_review_sequence())
            await self._persons.insert_task(ReviewTask(task_id, person.person_id, "", result.candidates, now))
        await self._log(
            EventKind.UPDATED,
            person.person_id,
            request_id,
            actor_id,
            now,
            reason=reason,
            version=updated.version,
            review_task_id=task_id,
            request_fingerprint=fingerprint,
        )
        await self._changed(PatientChangeKind.UPDATED, person.person_id, f"v{updated.version}")
        return updated, result.candidates, task_id

    async def _replace_current_demographics(
        self,
        person_id: str,
        demographics: Callable[[Person], Registration],
        request_id: str,
        fingerprint: str,
        actor_id: str,
        now: datetime,
        reason: str = "",
    ) -> tuple[tuple[Candidate, ...], str]:
        """Replaces the person's demographics, at whatever version it has now, with what
        ``demographics`` makes of it (for a change already decided: a facility's update of a person
        it alone registered, an accepted proposal); idempotent by ``request_id``. ConflictError if
        concurrent changes keep winning."""
        for _ in range(PERSON_UPDATE_ATTEMPTS):
            done = await self._persons.get_event(derive_id(f"event:updated:{person_id}", request_id))
            if done is not None:
                return await self._finish_update(person_id, done)
            person = (await self._view(person_id, "patient_id")).person
            replaced = await self._replace_demographics(
                person, demographics(person), person.version, request_id, fingerprint, actor_id, now, reason
            )
            if replaced is not None:
                return replaced[1], replaced[2]
        raise ConflictError("the person is being changed concurrently; retry the request", "patient_id")

    async def _update_own_record(
        self,
        raw: RegistrationInput,
        view: PersonView,
        visibility: Visibility,
        expected_version: int,
        actor_id: str,
    ) -> UpdateResult:
        """An update by a facility that sees only its own data: its own (newest) record of the person
        is updated at ``expected_version``. Of the person, when the facility alone registered it, as
        an update of the person; otherwise a new name, birth date or sex becomes a proposal for
        review (what one facility entered never overwrites what others registered), and the phone
        and province stay the facility's own."""
        person = view.person
        records = [r for r in await self._persons.records(view.record_ids) if r.outcome is not None]
        own = newest([r for r in records if r.facility_code == visibility.facility_code])
        if own is None:
            raise PermissionDeniedError(
                "the caller's facility has no registration of this patient to update: register the "
                "patient at the facility first"
            )
        event_id = derive_id(f"event:record_updated:{person.person_id}", raw.request_id)
        done = await self._persons.get_event(event_id)
        if done is not None:
            if done.request_fingerprint != raw.fingerprint:
                raise ConflictError("request_id was already used for a different update", "request_id")
            return await self._record_update_result(person.person_id, own, done.review_task_id)
        now = utc_now()
        registration = validate_registration(replace(raw, facility_code=own.facility_code), now.date())
        if expected_version < 1:
            raise InvalidArgumentError([FieldViolation("expected_version", "the version read, 1 or more")])
        _, before = shown_demographics(own)
        # An update that does not replace the claim profile keeps the record's.
        if raw.claim_profile is None:
            registration = replace(registration, claim_profile=before.claim_profile)
        demographics = replace(record_demographics(registration), version=expected_version + 1)
        alone = all(r.facility_code == own.facility_code for r in records)
        proposed = ProposedDemographics(registration.full_name, registration.birth_date, registration.sex)
        # A proposal when the facility changes its own name, birth date or sex of the person to
        # something the person does not have (re-sending what it registered proposes nothing).
        changed_here = (before.full_name, before.birth_date, before.sex) != (
            proposed.full_name,
            proposed.birth_date,
            proposed.sex,
        )
        propose = not alone and changed_here and proposes_change(person, proposed)
        task_id = review_task_id(await self._persons.next_review_sequence()) if propose else ""
        plan = await self._persons.update_record_demographics(
            own.record_id, demographics, expected_version, raw.request_id, {"proposal_task_id": task_id}
        )
        if plan is None:
            raise ConflictError(
                "the facility's record of the person changed since expected_version; read it again",
                "expected_version",
            )
        task_id = str(plan.get("proposal_task_id", ""))
        if task_id:
            await self._persons.insert_task(
                ReviewTask(
                    task_id,
                    person.person_id,
                    own.record_id,
                    (),
                    now,
                    kind=ReviewKind.DEMOGRAPHICS_CHANGE,
                    proposed=proposed,
                    facility_code=own.facility_code,
                )
            )
        elif alone:
            _, task_id = await self._replace_current_demographics(
                person.person_id, lambda _: registration, raw.request_id, raw.fingerprint, actor_id, now
            )
        await self._log(
            EventKind.RECORD_UPDATED,
            person.person_id,
            raw.request_id,
            actor_id,
            now,
            record_id=own.record_id,
            version=demographics.version,
            review_task_id=task_id,
            request_fingerprint=raw.fingerprint,
        )
        return await self._record_update_result(
            person.person_id, replace(own, demographics=demographics), task_id
        )

    async def _record_update_result(self, person_id: str, own: FacilityRecord, task_id: str) -> UpdateResult:
        task = await self._persons.get_task(task_id) if task_id else None
        proposal = task is not None and task.kind is ReviewKind.DEMOGRAPHICS_CHANGE
        candidates = task.candidates if task is not None and not proposal else ()
        return UpdateResult(
            facility_person(person_id, own),
            await self._disclosed(candidates, visible_only=True),
            task_id,
            change_proposed=proposal,
        )

    # --- matching ---------------------------------------------------------------------------------

    async def _match(
        self, match: MatchRecord, exclude: set[str], rejected: frozenset[str] = frozenset()
    ) -> MatchResult:
        members = await self._block_members(blocking_keys(match))
        members.pop(match.record_id, None)
        frequencies = await self._name_frequencies()
        # Members are scored from their blocks; only those worth proposing are read, for their
        # person and to leave out records whose registration never finished.
        wanted = [i for i, member in members.items() if proposable(score(match, member, frequencies))]
        records = [r for r in await self._persons.records(wanted) if r.outcome is not None]
        owners = await self._current_persons({r.person_id for r in records})
        candidates = [
            (owners[r.person_id], r.match)
            for r in records
            if r.person_id in owners and owners[r.person_id] not in exclude
        ]
        # Cards are checked against everything a candidate person is known by, not only the records
        # that scored: a person never gains a second CCCD, BHYT or passport by an automatic link.
        known = await self._known_demographics({person_id for person_id, _ in candidates})
        candidates += [(person_id, other) for person_id, matches in known.items() for other in matches]
        return decide(match, candidates, frequencies, rejected)

    async def _block_members(self, keys: Iterable[str]) -> dict[str, MatchRecord]:
        members, oversized = candidate_records(await self._persons.blocks(keys))
        for key in oversized:
            OVERSIZED_BLOCKS.labels(block_kind(key)).inc()
        return members

    async def _current_persons(self, person_ids: set[str]) -> dict[str, str]:
        """For each person id, the active person it resolves to through merges (absent if none)."""
        resolved: dict[str, str] = {}
        for person in await self._persons.get_many(person_ids):
            current: Person | None = person
            for _ in range(MAX_MERGE_HOPS):
                if current is None or current.status is not PersonStatus.MERGED:
                    break
                current = await self._persons.get(current.merged_into)
            if current is not None and current.status is PersonStatus.ACTIVE:
                resolved[person.person_id] = current.person_id
        return resolved

    async def match(self, raw: RegistrationInput, patient_id: str = "") -> MatchResult:
        """A dry run of registration matching; writes nothing. The decision is the matcher's; the
        candidates are those the caller's facility may see (as ``_disclosed``)."""
        now = utc_now()
        registration = validate_registration(replace(raw, request_id=raw.request_id or "match"), now.date())
        exclude: set[str] = set()
        rejected: frozenset[str] = frozenset()
        if patient_id:
            on_behalf = (await self._view(patient_id, "patient_id")).person
            exclude = {on_behalf.person_id, patient_id}
            rejected = frozenset(on_behalf.rejected_person_ids)
        result = await self._match(match_record(registration, "dry-run"), exclude, rejected)
        return MatchResult(result.decision, await self._disclosed(result.candidates, visible_only=True))

    # --- reads ------------------------------------------------------------------------------------

    async def _view(self, patient_id: str, field: str) -> PersonView:
        person = await self._persons.get(check_patient_id(patient_id, field))
        if person is None or person.status in (PersonStatus.PROVISIONAL, PersonStatus.SUPERSEDED):
            raise NotFoundError("Patient", field, patient_id)
        merged_from = ""
        for _ in range(MAX_MERGE_HOPS):
            if person.status is not PersonStatus.MERGED:
                break
            merged_from = merged_from or person.person_id
            survivor = await self._persons.get(person.merged_into)
            if survivor is None:
                raise NotFoundError("Patient", field, patient_id)
            person = survivor
        merged = await self._persons.get_many(person.merged_person_ids)
        record_ids = person.record_ids + tuple(r for m in merged for r in m.record_ids)
        return PersonView(person, merged_from, record_ids)

    async def get(self, patient_id: str) -> PersonView:
        """The person as stored (the access model's own read: no visibility applied)."""
        return await self._view(patient_id, "patient_id")

    async def read(self, patient_id: str) -> PersonView:
        """The person as the caller may see it (GetPatient): the best-known demographics when the
        caller sees every facility's data of the person (a consent grant, an emergency access, a
        platform role); otherwise its own facility's record of the person."""
        view = await self._view(patient_id, "patient_id")
        visibility = await current_access().visibility(patient_id)
        if visibility.shares_demographics:
            return view
        return await self._facility_view(view, visibility)

    async def _facility_view(self, view: PersonView, visibility: Visibility) -> PersonView:
        """The person as the newest record of the caller's facility shows it (or, without one, the
        newest record the facility may see: a referring facility's), with the ids of the records it
        may see. PermissionDeniedError when it may see none."""
        records = [r for r in await self._persons.records(view.record_ids) if r.outcome is not None]
        visible = [r for r in records if visibility.sees(r.facility_code)]
        shown = newest([r for r in visible if r.facility_code == visibility.facility_code]) or newest(visible)
        if shown is None:
            raise PermissionDeniedError(denial_reason(export=False))
        return PersonView(
            facility_person(view.person.person_id, shown),
            view.merged_from,
            tuple(r.record_id for r in visible),
        )

    async def registered_at(self, patient_id: str, facility_code: str) -> bool:
        """Whether the facility registered the person (or a person merged into it)."""
        if not facility_code:
            return False
        try:
            view = await self._view(patient_id, "patient_id")
        except (NotFoundError, InvalidArgumentError):
            return False
        records = await self._persons.records(view.record_ids)
        return any(record.facility_code == facility_code for record in records)

    async def search(self, query: SearchQuery) -> tuple[list[Person], str]:
        """Persons the caller's facility may see, as it may see them (see ``get``), identifiers and
        phone masked; at most MAX_SEARCH_RESULTS a page."""
        size = min(page_size(query.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE), MAX_SEARCH_RESULTS)
        position = self._page_tokens.decode(query.page_token)
        offset = position_int(position, "offset") if position else 0
        key, exact = self._search_key(query)
        records = [r for r in await self._persons.records(await self._block_members([key])) if r.outcome]
        if exact:
            records = [r for r in records if r.match.names.full == exact]
        owners = await self._current_persons({r.person_id for r in records})
        person_ids = sorted(set(owners.values()))
        access = current_access()
        found: list[Person] = []
        examined = offset
        while (
            examined < len(person_ids) and len(found) < size and examined - offset < SEARCH_EXAMINED_PER_CALL
        ):
            person_id = person_ids[examined]
            examined += 1
            visibility = await access.visibility(person_id)
            if not visibility.opens_anything:
                continue
            view = await self._view(person_id, "patient_id")
            if not visibility.shares_demographics:
                try:
                    view = await self._facility_view(view, visibility)
                except PermissionDeniedError:
                    continue
            found.append(masked(view.person))
        more = examined < len(person_ids)
        return found, self._page_tokens.encode({"offset": examined}) if more else ""

    @staticmethod
    def _search_key(query: SearchQuery) -> tuple[str, str]:
        """The block key to read and, for exact name search, the tone-preserving name to keep."""
        given = [bool(query.identifier_key), bool(query.full_name), bool(query.phone)]
        if sum(given) != 1:
            raise InvalidArgumentError(
                [
                    FieldViolation(
                        "identifier", "give exactly one of identifier, full_name + birth_year, phone"
                    )
                ]
            )
        if query.identifier_key:
            return query.identifier_key, ""
        if query.phone:
            phone = normalize_phone(query.phone)
            if not phone:
                raise InvalidArgumentError([FieldViolation("phone", "a Vietnamese phone number")])
            return phone_key(phone), ""
        if not 1900 <= query.birth_year <= 2200:
            raise InvalidArgumentError([FieldViolation("birth_year", "required with full_name, e.g. 1990")])
        name = normalize_name(query.full_name).lower()
        return f"fy:{fold(name)}|{query.birth_year}", name if query.exact_name else ""

    # --- review -----------------------------------------------------------------------------------

    async def watch_review_queue(self, interval: float = 15.0) -> None:
        """Keeps the review queue gauge current (read from the database: replicas share the queue)."""
        while True:
            try:
                REVIEW_QUEUE_SIZE.set(await self._persons.open_task_count())
            except Exception:
                log.warning("review queue size not refreshed")
            await asyncio.sleep(interval)

    async def list_review_tasks(self, requested_size: int, token: str) -> tuple[list[ReviewTask], str]:
        size = page_size(requested_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        position = self._page_tokens.decode(token)
        sequence = position_int(position, "next", minimum=1) if position else 1
        last = await self._persons.last_review_sequence()
        found: list[ReviewTask] = []
        while sequence <= last and len(found) < size:
            batch = range(sequence, min(last, sequence + size - len(found) - 1) + 1)
            found.extend(t for t in await self._persons.tasks(review_task_id(s) for s in batch) if t.open)
            sequence = batch[-1] + 1
        found.sort(key=lambda t: t.task_id)
        return found, self._page_tokens.encode({"next": sequence}) if sequence <= last else ""

    async def resolve_review_task(
        self,
        request_id: str,
        task_id: str,
        resolution: Resolution | None,
        candidate_id: str,
        reason: str,
        actor_id: str,
    ) -> Person:
        """Decides a review task: SAME_PERSON merges the task's person into a candidate and
        DIFFERENT_PERSONS remembers the pair (likely duplicates, identifier conflicts);
        ACCEPT_CHANGE applies a proposed name, birth date and sex to the person and REJECT_CHANGE
        leaves it (demographics changes)."""
        violations = Violations()
        check_request_id(violations, request_id)
        if not task_id.strip():
            violations.add("review_task_id", "required")
        if resolution is None:
            violations.add("resolution", "SAME_PERSON, DIFFERENT_PERSONS, ACCEPT_CHANGE or REJECT_CHANGE")
        violations.raise_if_any()
        assert resolution is not None
        task = await self._persons.get_task(task_id)
        if task is None:
            raise NotFoundError("ReviewTask", "review_task_id", task_id)
        if resolution not in RESOLUTIONS[task.kind]:
            allowed = " or ".join(sorted(r.name for r in RESOLUTIONS[task.kind]))
            raise InvalidArgumentError(
                [FieldViolation("resolution", f"a {task.kind.value} task is resolved by {allowed}")]
            )
        if not task.open:
            if task.resolution != f"{resolution.value}:{request_id}":
                raise ConflictError("the review task was already resolved", "review_task_id")
            return (await self._view(task.person_id, "review_task_id")).person  # a repeated request
        now = utc_now()
        proposed = [c.person_id for c in task.candidates]
        if resolution is Resolution.SAME_PERSON:
            if not proposed:
                raise InvalidArgumentError([FieldViolation("resolution", "the task has no candidate")])
            survivor = candidate_id or proposed[0]
            if survivor not in proposed:
                raise InvalidArgumentError(
                    [FieldViolation("candidate_patient_id", "not a candidate of this task")]
                )
            await self.merge(
                f"{request_id}:merge", survivor, task.person_id, reason or "review: same person", actor_id
            )
        elif resolution is Resolution.DIFFERENT_PERSONS:
            rejected = [candidate_id] if candidate_id else proposed
            for other in rejected:
                await self._persons.reject_pair(task.person_id, other)
                for one, two in ((task.person_id, other), (other, task.person_id)):
                    await self._log(
                        EventKind.REJECTED, one, request_id, actor_id, now, two, task.record_id, reason
                    )
        elif resolution is Resolution.ACCEPT_CHANGE:
            assert task.proposed is not None  # every demographics change carries its proposal
            await self._accept_proposal(task, task.proposed, request_id, reason, actor_id, now)
        else:
            await self._log(
                EventKind.CHANGE_REJECTED,
                task.person_id,
                request_id,
                actor_id,
                now,
                record_id=task.record_id,
                reason=reason,
            )
        await self._persons.close_task(task.task_id, f"{resolution.value}:{request_id}")
        return (await self._view(task.person_id, "review_task_id")).person

    async def _accept_proposal(
        self,
        task: ReviewTask,
        proposed: ProposedDemographics,
        request_id: str,
        reason: str,
        actor_id: str,
        now: datetime,
    ) -> None:
        """Applies a proposed name, birth date and sex to the person (the task's person, or the
        survivor it was merged into); its phone, province and claim profile stay."""

        def proposal_of(person: Person) -> Registration:
            return Registration(
                request_id=request_id,
                identifiers=(),
                full_name=proposed.full_name,
                birth_date=proposed.birth_date,
                sex=proposed.sex,
                facility_code=task.facility_code,
                fingerprint="",
                name_parts=split_name(proposed.full_name),
                phone=person.phone,
                province_code=person.province_code,
                claim_profile=person.claim_profile,
            )

        person_id = (await self._view(task.person_id, "review_task_id")).person.person_id
        await self._replace_current_demographics(
            person_id,
            proposal_of,
            request_id,
            "",
            actor_id,
            now,
            reason or "review: proposed change accepted",
        )

    # --- merge ------------------------------------------------------------------------------------

    async def merge(
        self, request_id: str, survivor_id: str, merged_id: str, reason: str, actor_id: str
    ) -> Person:
        violations = Violations()
        check_request_id(violations, request_id)
        if survivor_id.strip() and survivor_id.strip() == merged_id.strip():
            violations.add("merged_patient_id", "must differ from survivor_patient_id")
        violations.raise_if_any()
        merged = await self._persons.get(check_patient_id(merged_id, "merged_patient_id"))
        survivor = await self._view(survivor_id, "survivor_patient_id")
        if merged is None or merged.status in (PersonStatus.PROVISIONAL, PersonStatus.SUPERSEDED):
            raise NotFoundError("Patient", "merged_patient_id", merged_id)
        done = await self._persons.get_event(derive_id(f"event:merged:{merged.person_id}", request_id))
        if done is not None:
            if done.other_person_id != survivor.person.person_id:
                raise ConflictError("request_id was already used for a different merge", "request_id")
            await self._merge_changed(merged.person_id, survivor.person.person_id, request_id)
            return (await self._view(survivor.person.person_id, "survivor_patient_id")).person
        if survivor.person.person_id == merged.person_id:
            raise InvalidArgumentError(
                [FieldViolation("merged_patient_id", "already merged into the survivor")]
            )
        if not await self._persons.merge(survivor.person.person_id, merged.person_id, request_id):
            raise ConflictError("merged_patient_id is not an active person", "merged_patient_id")
        now = utc_now()
        for one, two in (
            (merged.person_id, survivor.person.person_id),
            (survivor.person.person_id, merged.person_id),
        ):
            await self._log(EventKind.MERGED, one, request_id, actor_id, now, two, reason=reason)
        await self._merge_changed(merged.person_id, survivor.person.person_id, request_id)
        return (await self._view(survivor.person.person_id, "survivor_patient_id")).person

    async def unmerge(
        self, request_id: str, merged_id: str, reason: str, actor_id: str
    ) -> tuple[Person, Person]:
        violations = Violations()
        check_request_id(violations, request_id)
        violations.raise_if_any()
        merged = await self._persons.get(check_patient_id(merged_id, "merged_patient_id"))
        if merged is None or merged.status in (PersonStatus.PROVISIONAL, PersonStatus.SUPERSEDED):
            raise NotFoundError("Patient", "merged_patient_id", merged_id)
        done = await self._persons.get_event(derive_id(f"event:unmerged:{merged.person_id}", request_id))
        if done is None:
            if merged.status is not PersonStatus.MERGED:
                raise ConflictError("merged_patient_id is not merged", "merged_patient_id")
            survivor_id = merged.merged_into
            await self._persons.unmerge(merged.person_id, survivor_id, request_id)
            now = utc_now()
            for one, two in ((merged.person_id, survivor_id), (survivor_id, merged.person_id)):
                await self._log(EventKind.UNMERGED, one, request_id, actor_id, now, two, reason=reason)
        else:
            survivor_id = done.other_person_id
        await self._changed(PatientChangeKind.UNMERGED, merged.person_id, request_id, survivor_id)
        await self._changed(PatientChangeKind.UNMERGE_SURVIVOR, survivor_id, request_id, merged.person_id)
        restored = await self._persons.get(merged.person_id)
        survivor = await self._view(survivor_id, "merged_patient_id")
        assert restored is not None
        return restored, survivor.person

    async def history(self, patient_id: str) -> list[LinkEvent]:
        person = await self._persons.get(check_patient_id(patient_id))
        if person is None or person.status in (PersonStatus.PROVISIONAL, PersonStatus.SUPERSEDED):
            raise NotFoundError("Patient", "patient_id", patient_id)
        # The person lists its events in the order they were appended (one write each).
        return await self._persons.events(person.event_ids)

    # --- patient change feed ------------------------------------------------------------------------

    async def _changed(
        self, kind: PatientChangeKind, person_id: str, cause: str, other_person_id: str = ""
    ) -> None:
        """Puts a change of a person into the feed, after the change is stored (a reader of the feed
        then finds the person changed). Its key derives from the cause (a request, a version), so a
        retry of the request adds nothing."""
        key = derive_id(f"change:{kind.value}:{person_id}", cause)
        await self._changes.append(kind, person_id, key, other_person_id)
        if kind in _LINK_CHANGES:
            for listener in self.links_changed:
                listener()

    async def _merge_changed(self, merged_id: str, survivor_id: str, request_id: str) -> None:
        await self._changed(PatientChangeKind.MERGED, merged_id, request_id, survivor_id)
        await self._changed(PatientChangeKind.MERGE_SURVIVOR, survivor_id, request_id, merged_id)

    async def patient_changes(
        self, after_sequence: int, requested_limit: int
    ) -> tuple[list[tuple[PatientChange, Person | None]], int]:
        """The next run of patient changes without holes, each with its person as it is now (its
        own record, not followed through merges; None if it cannot be read)."""
        limit = check_feed_request(after_sequence, requested_limit)
        changes, next_after = await self._changes.next_run(after_sequence, limit, self._change_settle)
        persons = {p.person_id: p for p in await self._persons.get_many({c.person_id for c in changes})}
        return [(change, persons.get(change.person_id)) for change in changes], next_after
