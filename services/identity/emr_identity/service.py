"""Identity use cases: coordinate the pure domain and matcher with the repository."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from prometheus_client import Counter, Gauge

from emr_identity.domain import (
    EventKind,
    LinkEvent,
    Outcome,
    PatientChange,
    PatientChangeKind,
    Person,
    PersonStatus,
    RegistrationInput,
    check_patient_id,
    new_person,
    phone_key,
    validate_registration,
)
from emr_identity.linkage import FacilityRecord, ReviewTask, review_task_id
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
    match_record,
    proposable,
    score,
)
from emr_identity.repository import PatientChangeRepository, PersonRepository
from emr_identity.vietnamese import fold, normalize_name, normalize_phone
from emr_runtime.changefeed import check_feed_request
from emr_runtime.clock import utc_now
from emr_runtime.errors import ConflictError, FieldViolation, InvalidArgumentError, NotFoundError, Violations
from emr_runtime.idempotency import check_request_id, derive_id
from emr_runtime.paging import PageTokens, page_size, position_int

log = logging.getLogger("emr.identity")

# Merge chains are short (a merged person's survivor is rarely merged again); this bounds a loop
# over corrupted data.
MAX_MERGE_HOPS = 16
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20

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
REVIEW_QUEUE_SIZE = Gauge("emr_identity_review_queue_size", "Open review tasks (likely duplicates).")


@dataclass(frozen=True)
class RegistrationResult:
    person: Person
    outcome: Outcome
    candidates: tuple[Candidate, ...] = ()
    review_task_id: str = ""


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
        review task, or creates a person."""
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
            linked = await self._link(
                stored,
                FacilityRecord(
                    record_id=record_id,
                    person_id=stored.person_id,
                    facility_code=registration.facility_code,
                    match=match_record(registration, record_id),
                    request_fingerprint=registration.fingerprint,
                    created_at=now,
                ),
                actor_id,
                now,
            )
            record, inserted = await self._persons.insert_or_get_record(linked)
            if inserted:
                assert linked.outcome is not None
                MATCH_OUTCOMES.labels(linked.outcome.value).inc()
        assert record.outcome is not None
        return RegistrationResult(
            person=(await self._view(record.person_id, "patient_id")).person,
            outcome=record.outcome,
            candidates=record.candidates,
            review_task_id=record.review_task_id,
        )

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
        for owner_id in owners:
            if owner_id != stored.person_id:
                # The owner may have stopped before activating; its document is complete, so finish it.
                await self._persons.activate(owner_id)
                if await self._persons.supersede(stored.person_id, owner_id):
                    await self._persons.release_claims(stored.person_id, stored.claim_keys)
                    await self._attach(record, owner_id, EventKind.LINKED, actor_id, now)
                    return replace(record, person_id=owner_id, outcome=Outcome.EXISTING)
                # A rival registration already resolved to this person (it won an earlier claim), so
                # it stays; the matcher below decides about the contested identifier.
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
    ) -> RegistrationResult:
        """Replaces the best-known demographics at ``expected_version``, then re-evaluates this
        person's links only: likely matches open a review task (never an automatic merge)."""
        person = (await self._view(patient_id, "patient_id")).person
        done = await self._persons.get_event(derive_id(f"event:updated:{person.person_id}", raw.request_id))
        if done is not None:
            if done.request_fingerprint != raw.fingerprint:
                raise ConflictError("request_id was already used for a different update", "request_id")
            # A retry after a crash between the update and its change puts the change in the feed.
            await self._changed(PatientChangeKind.UPDATED, person.person_id, f"v{done.version}")
            task = await self._persons.get_task(done.review_task_id) if done.review_task_id else None
            current = (await self._view(person.person_id, "patient_id")).person
            return RegistrationResult(
                current, Outcome.EXISTING, task.candidates if task else (), done.review_task_id
            )
        now = utc_now()
        registration = validate_registration(
            replace(raw, facility_code=person.registering_facility_code), now.date()
        )
        if expected_version < 1:
            raise InvalidArgumentError([FieldViolation("expected_version", "the version read, 1 or more")])
        updated = replace(
            person,
            full_name=registration.full_name,
            birth_date=registration.birth_date,
            sex=registration.sex,
            phone=registration.phone,
            province_code=registration.province_code,
            version=expected_version + 1,
        )
        if not await self._persons.update_demographics(updated, expected_version, raw.request_id):
            raise ConflictError(
                "the person changed since expected_version; read it again", "expected_version"
            )
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
            raw.request_id,
            actor_id,
            now,
            version=updated.version,
            review_task_id=task_id,
            request_fingerprint=raw.fingerprint,
        )
        await self._changed(PatientChangeKind.UPDATED, person.person_id, f"v{updated.version}")
        return RegistrationResult(updated, Outcome.EXISTING, result.candidates, task_id)

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
        """A dry run of registration matching; writes nothing."""
        now = utc_now()
        registration = validate_registration(replace(raw, request_id=raw.request_id or "match"), now.date())
        exclude: set[str] = set()
        rejected: frozenset[str] = frozenset()
        if patient_id:
            on_behalf = (await self._view(patient_id, "patient_id")).person
            exclude = {on_behalf.person_id, patient_id}
            rejected = frozenset(on_behalf.rejected_person_ids)
        return await self._match(match_record(registration, "dry-run"), exclude, rejected)

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
        return await self._view(patient_id, "patient_id")

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
        size = page_size(query.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        position = self._page_tokens.decode(query.page_token)
        offset = position_int(position, "offset") if position else 0
        key, exact = self._search_key(query)
        records = [r for r in await self._persons.records(await self._block_members([key])) if r.outcome]
        if exact:
            records = [r for r in records if r.match.names.full == exact]
        owners = await self._current_persons({r.person_id for r in records})
        person_ids = sorted(set(owners.values()))
        page = await self._persons.get_many(person_ids[offset : offset + size])
        more = offset + size < len(person_ids)
        return page, self._page_tokens.encode({"offset": offset + size}) if more else ""

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
        same_person: bool | None,
        candidate_id: str,
        reason: str,
        actor_id: str,
    ) -> Person:
        violations = Violations()
        check_request_id(violations, request_id)
        if not task_id.strip():
            violations.add("review_task_id", "required")
        if same_person is None:
            violations.add("resolution", "SAME_PERSON or DIFFERENT_PERSONS")
        violations.raise_if_any()
        task = await self._persons.get_task(task_id)
        if task is None:
            raise NotFoundError("ReviewTask", "review_task_id", task_id)
        resolution = "same" if same_person else "different"
        if not task.open:
            if task.resolution != f"{resolution}:{request_id}":
                raise ConflictError("the review task was already resolved", "review_task_id")
            return (await self._view(task.person_id, "review_task_id")).person  # a repeated request
        now = utc_now()
        proposed = [c.person_id for c in task.candidates]
        if same_person:
            survivor = candidate_id or proposed[0]
            if survivor not in proposed:
                raise InvalidArgumentError(
                    [FieldViolation("candidate_patient_id", "not a candidate of this task")]
                )
            await self.merge(
                f"{request_id}:merge", survivor, task.person_id, reason or "review: same person", actor_id
            )
        else:
            rejected = [candidate_id] if candidate_id else proposed
            for other in rejected:
                await self._persons.reject_pair(task.person_id, other)
                for one, two in ((task.person_id, other), (other, task.person_id)):
                    await self._log(
                        EventKind.REJECTED, one, request_id, actor_id, now, two, task.record_id, reason
                    )
        await self._persons.close_task(task.task_id, f"{resolution}:{request_id}")
        return (await self._view(task.person_id, "review_task_id")).person

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
