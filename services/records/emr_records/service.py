"""Records use cases: create and update resources as immutable versions, read them, and publish
every version through the change feed.

The access model (emr_runtime.visibility): a facility sees the records it created, and other
facilities' records only as far as the patient's grants, a referral or an emergency access open them
(identity answers that; records adds the facility's own records). Reads return only what the caller's
facility sees; writes stay in its lane (a facility writes to its own encounters and resources only).
Platform callers (the sync service) see everything."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from datetime import datetime, timedelta

from emr.identity.v1 import identity_pb2
from prometheus_client import Counter, Gauge

from emr_claims.codelists import CodeLists
from emr_records.domain import (
    Change,
    ClinicalRecord,
    EncounterContent,
    ResourceInput,
    ResourceType,
    TimelineQuery,
    check_codes,
    encounter_field_path,
    facilities_seen,
    id_field_path,
    new_record,
    next_version,
    resource_type_of,
    validate_resource,
    verify_document,
)
from emr_records.repository import ChangeFeedRepository, ResourceRepository
from emr_records.retention_service import RetentionService
from emr_records.sensitivity import (
    DENIED,
    Restricted,
    check_sensitivity,
    hidden,
    keep_marks,
    own_categories,
    restricted,
    visit_of,
)
from emr_runtime.changefeed import check_feed_request
from emr_runtime.clock import utc_now
from emr_runtime.errors import (
    ConflictError,
    DataIntegrityError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    Violations,
)
from emr_runtime.idempotency import derive_id
from emr_runtime.paging import PageTokens, position_str, position_time
from emr_runtime.patients import PatientDirectory
from emr_runtime.visibility import CallAccess, Visibility, current_access

log = logging.getLogger("emr.records")
EXPORT_PAGE = 200

# Bounded labels: eight resource types, two kinds (created, updated).
WRITES = Counter("emr_records_writes_total", "Resource versions written, by type.", ("resource_type", "kind"))
for _type in ResourceType:
    for _kind in ("created", "updated"):
        WRITES.labels(_type.value, _kind)
CHANGE_FEED_HEAD = Gauge(
    "emr_records_change_feed_head", "Highest change feed sequence this replica has written."
)


class RecordsService:
    def __init__(
        self,
        resources: ResourceRepository,
        feed: ChangeFeedRepository,
        patients: PatientDirectory,
        change_settle: timedelta,
        page_tokens: PageTokens,
        code_lists: CodeLists,
        verify_patients: bool = True,
        retention: RetentionService | None = None,
    ) -> None:
        self._retention = retention
        self._code_lists = code_lists
        self._page_tokens = page_tokens
        self._resources = resources
        self._feed = feed
        self._feed_head = 0
        self._patients = patients
        self._settle = change_settle
        self._verify_patients = verify_patients

    # --- the access model ---------------------------------------------------------------------

    async def visibility(
        self, patient_id: str, facility_code: str, purpose_of_use: str, export: bool
    ) -> Visibility:
        """The access model's answer: identity's (registration, grants, referrals, emergency access),
        and the facility's own records, which count as its registration (a facility that opened an
        encounter for a patient it never registered sees what it wrote, and only that)."""
        found = await self._patients.access(patient_id, facility_code, purpose_of_use, export)
        if found.registered:
            return found
        for holder_id in dict.fromkeys(i for i in (patient_id, found.resolved_patient_id) if i):
            if await self._resources.holds_records(holder_id, facility_code):
                return replace(found, registered=True)
        return found

    # --- writes -----------------------------------------------------------------------------------

    async def create(self, raw: ResourceInput) -> ClinicalRecord:
        now = utc_now()
        validate_resource(raw, now)
        _check_sensitivity(raw)
        record = new_record(raw, derive_id(resource_type_of(raw.content).value, raw.request_id), now)
        await self._check_references(record, raw)
        stored, inserted = await self._resources.store_version(record)
        stay_in_lane(stored.facility_code, "request_id names a resource of another facility")
        if stored.request_fingerprint != record.request_fingerprint:
            raise ConflictError("request_id was already used for a different resource", "request_id")
        await self._finish(stored, fresh=inserted)
        if inserted:
            WRITES.labels(stored.resource_type.value, "created").inc()
        return await self._with_categories(stored)

    async def update(self, raw: ResourceInput, expected_version: int) -> ClinicalRecord:
        now = utc_now()
        validate_resource(raw, now, updating=True)
        _check_sensitivity(raw)
        if expected_version < 1:
            raise InvalidArgumentError(
                [FieldViolation("expected_version", "the version the update is based on")]
            )
        replayed = await self._resources.version_by_request(raw.resource_id, raw.request_id)
        if replayed is not None:
            stay_in_lane(replayed.facility_code, _FOREIGN_UPDATE)
            if replayed.request_fingerprint != raw.fingerprint:
                raise ConflictError("request_id was already used for a different update", "request_id")
            return await self._with_categories(replayed)
        current = await self._current(raw.resource_id, type(raw.content), id_field_path(raw))
        if current.version != expected_version:
            raise ConflictError(
                f"expected_version is {expected_version} but the current version is {current.version}",
                "expected_version",
            )
        # An author's mark stays: a special category is never dropped by an update (the safe direction).
        record = keep_marks(next_version(current, raw, now), current)
        # The patient cannot change and was checked when the resource was created.
        await self._check_references(record, raw, check_patient=False)
        stored, inserted = await self._resources.store_version(record)
        if not inserted and stored.request_fingerprint != record.request_fingerprint:
            # Another update took this version first; make sure it is complete, then refuse ours.
            await self._finish(stored, fresh=False)
            raise ConflictError(
                f"the resource was updated concurrently to version {stored.version}; read it and retry",
                "expected_version",
            )
        await self._finish(stored, fresh=inserted)
        WRITES.labels(stored.resource_type.value, "updated").inc()
        return await self._with_categories(stored)

    async def _note_retention(self, record: ClinicalRecord) -> None:
        """A death raises the retention of all the patient's records (emr_records.retention_service)."""
        if self._retention is not None:
            await self._retention.note_written(record)

    async def _current(self, resource_id: str, content_type: type, field: str) -> ClinicalRecord:
        current = await self._resources.get(resource_id)
        if current is None or not isinstance(current.content, content_type):
            raise NotFoundError(content_type.__name__.removesuffix("Content"), field, resource_id)
        stay_in_lane(current.facility_code, _FOREIGN_UPDATE)
        if await self._resources.change_pending(current):
            # The previous version's change goes into the feed before this one's, so that a
            # consumer sees versions of a resource in order.
            await self._recover_change(current)
        return current

    async def _check_references(
        self, record: ClinicalRecord, raw: ResourceInput, check_patient: bool = True
    ) -> None:
        """The patient and encounter a resource names exist and fit, and its national codes are in
        the code lists in force on the day its visit started."""
        if check_patient and self._verify_patients and not await self._patients.exists(record.patient_id):
            raise NotFoundError(
                "Patient", f"{raw.path}.patient_id" if raw.path else "patient_id", record.patient_id
            )
        visit = record if record.resource_type is ResourceType.ENCOUNTER else None
        if record.encounter_id and record.resource_type is not ResourceType.ENCOUNTER:
            encounter = await self._resources.get(record.encounter_id)
            if encounter is None or encounter.resource_type is not ResourceType.ENCOUNTER:
                raise NotFoundError("Encounter", encounter_field_path(raw), record.encounter_id)
            if encounter.facility_code != record.facility_code:
                stay_in_lane(encounter.facility_code, "encounter_id names an encounter of another facility")
                raise InvalidArgumentError(
                    [
                        FieldViolation(
                            encounter_field_path(raw),
                            "belongs to another facility: a resource attaches to an encounter of its own facility",
                        )
                    ]
                )
            if encounter.patient_id != record.patient_id:
                raise InvalidArgumentError(
                    [FieldViolation(encounter_field_path(raw), "belongs to another patient")]
                )
            visit = encounter
        if visit is not None:
            assert isinstance(visit.content, EncounterContent) and visit.content.start_time is not None
            check_codes(raw, visit.content.start_time, self._code_lists)

    async def _finish(self, record: ClinicalRecord, fresh: bool) -> None:
        """Steps 2 and 3 for a version this call stored (``fresh``), or completes one that another
        call stored (a repeated request, a concurrent writer that may have stopped half way)."""
        if not fresh and await self._feed.recorded(record):
            return
        # Before the record becomes readable: every readable record's facility counts as holding
        # records of the patient (the access model's "its own records").
        await self._resources.note_holder(record.patient_id, record.facility_code)
        # Likewise a death's retention floor: every readable death has raised the patient's records.
        await self._note_retention(record)
        # Likewise its visit's special categories: a reader never sees the visit without them.
        await self._resources.mark_visit(visit_of(record), own_categories(record))
        await self._resources.advance(record)
        await self._append(record)
        await self._resources.mark_change_recorded(record)

    async def _append(self, record: ClinicalRecord) -> None:
        sequence = await self._feed.append(record)
        if sequence is not None:
            self._feed_head = max(self._feed_head, sequence)
            CHANGE_FEED_HEAD.set(self._feed_head)

    async def _recover_change(self, record: ClinicalRecord) -> None:
        """Records a version's change that a crash may or may not have recorded already."""
        if not await self._feed.recorded(record):
            await self._append(record)
        await self._resources.mark_change_recorded(record)

    async def sweep_outbox(self, interval: float = 5.0) -> None:
        """Puts versions whose change a crash left unrecorded into the feed."""
        while True:
            await asyncio.sleep(interval)
            try:
                for record in await self._resources.with_change_pending(
                    utc_now() - timedelta(seconds=interval), 100
                ):
                    await self._recover_change(record)
            except Exception:
                log.exception("outbox sweep failed")

    # --- reads ------------------------------------------------------------------------------------

    async def get(
        self, resource_type: ResourceType | None, resource_id: str, field: str = "resource_id"
    ) -> ClinicalRecord:
        violations = Violations()
        if resource_type is None:
            violations.add("resource_type", "required: a resource type")
        if not resource_id.strip():
            violations.add(field, "required")
        violations.raise_if_any()
        assert resource_type is not None
        record = await self._resources.get(resource_id)
        if record is None or record.resource_type is not resource_type:
            raise NotFoundError(resource_type.value, field, resource_id)
        # Read by id: the patient is known only now; the caller's facility must see this record.
        seen = await current_access().require(record.patient_id, record.facility_code)
        if not verify_document(record):
            raise DataIntegrityError(record.resource_type.value, record.resource_id)
        record = await self._with_categories(record)
        if hidden(seen, record):
            raise PermissionDeniedError(DENIED)
        return record

    async def history(self, resource_type: ResourceType | None, resource_id: str) -> list[ClinicalRecord]:
        current = await self.get(resource_type, resource_id)
        versions = await self._resources.history(current.resource_id)
        if not all(verify_document(version) for version in versions):
            raise DataIntegrityError(current.resource_type.value, current.resource_id)
        # Each version with the categories the resource carries now (its visit's only ever add).
        return [replace(v, sensitivity=current.sensitivity | own_categories(v)) for v in versions]

    async def timeline(
        self, query: TimelineQuery, include_merged: bool = False
    ) -> tuple[list[ClinicalRecord], str]:
        """A page of a patient's resources the caller sees (one of a special category it may not
        see left out: the page may come back short)."""
        entries, token = await self.timeline_entries(query, include_merged)
        return [entry for entry in entries if isinstance(entry, ClinicalRecord)], token

    async def timeline_entries(
        self, query: TimelineQuery, include_merged: bool = False
    ) -> tuple[list[ClinicalRecord | Restricted], str]:
        """A page of a patient's resources; one of a special category the caller may not see comes
        as a ``Restricted`` entry. With ``include_merged``, the patient is resolved through
        identity: a merged id reads as its survivor, and the survivor's record includes the persons
        merged into it (and stops including them once unmerged)."""
        access = current_access()
        seen = await access.require(query.patient_id)
        query = replace(query, visible_facilities=facilities_seen(seen))
        if include_merged and self._verify_patients:
            view = await self._patients.get(query.patient_id)
            if view is not None:
                query = replace(query, owner_ids=view.record_owner_ids)
        page = await self._resources.timeline(replace(query, limit=query.limit + 1))
        token = ""
        if len(page) > query.limit:
            last = page[query.limit - 1]
            token = self._page_tokens.encode({"t": last.time.isoformat(), "id": last.resource_id})
            page = page[: query.limit]
        page = await self._with_categories_all(page)
        shown = _noted(access, seen, [r for r in page if not hidden(seen, r)])
        ids = {record.resource_id for record in shown}
        return [r if r.resource_id in ids else restricted(r) for r in page], token

    def timeline_position(self, page_token: str) -> tuple[datetime, str] | None:
        """Where a timeline page starts: after the (time, resource id) of the token's position."""
        position = self._page_tokens.decode(page_token)
        if position is None:
            return None
        return position_time(position, "t"), position_str(position, "id")

    async def encounter_bundle(self, encounter_id: str) -> tuple[ClinicalRecord, list[ClinicalRecord]]:
        encounter = await self.get(ResourceType.ENCOUNTER, encounter_id, field="encounter_id")
        access = current_access()
        seen = await access.visibility(encounter.patient_id)
        attached = await self._with_categories_all(
            [
                r
                for r in await self._resources.attached_to(encounter_id)
                if r.resource_id != encounter_id and seen.sees(r.facility_code)
            ]
        )
        return encounter, _noted(access, seen, [r for r in attached if not hidden(seen, r)])

    async def export(self, patient_id: str) -> tuple[identity_pb2.Patient, list[ClinicalRecord]]:
        if not patient_id.strip():
            raise InvalidArgumentError([FieldViolation("patient_id", "required")])
        # The call's access is an export's: no emergency access counts (emr_runtime.policy).
        access = current_access()
        seen = await access.require(patient_id)
        view = await self._patients.get(patient_id)
        if view is None:
            raise NotFoundError("Patient", "patient_id", patient_id)
        records: list[ClinicalRecord] = []
        after: tuple[datetime, str] | None = None
        while True:
            query = TimelineQuery(
                patient_id,
                (),
                None,
                None,
                "",
                "",
                EXPORT_PAGE,
                after,
                view.record_owner_ids,
                facilities_seen(seen),
            )
            page = await self._resources.timeline(query)
            # A record of a special category the caller may not see does not leave the platform.
            records.extend(r for r in await self._with_categories_all(page) if not hidden(seen, r))
            if len(page) < EXPORT_PAGE:
                return patient_as_seen(view.patient, seen), _noted(access, seen, records)
            after = (page[-1].time, page[-1].resource_id)

    # --- special categories -----------------------------------------------------------------------

    async def _with_categories(self, record: ClinicalRecord) -> ClinicalRecord:
        return (await self._with_categories_all([record]))[0]

    async def _with_categories_all(self, records: list[ClinicalRecord]) -> list[ClinicalRecord]:
        """The records, each with every category it carries: its own and its visit's."""
        visits = sorted({visit_of(record) for record in records} - {""})
        found = await asyncio.gather(*(self._resources.visit_categories(visit) for visit in visits))
        of_visit = dict(zip(visits, found, strict=True))
        return [
            replace(r, sensitivity=own_categories(r) | of_visit.get(visit_of(r), frozenset()))
            for r in records
        ]

    # --- change feed ------------------------------------------------------------------------------

    async def list_changes(
        self, after_sequence: int, requested_limit: int
    ) -> tuple[list[tuple[Change, ClinicalRecord]], int]:
        """The next run of changes without holes, each with the resource as of its version."""
        limit = check_feed_request(after_sequence, requested_limit)
        changes, next_after = await self._feed.next_run(after_sequence, limit, self._settle)
        versions = await self._resources.versions([(c.resource_id, c.resource_version) for c in changes])
        # A change whose version was disposed of (emr_records.retention_service) is left out; the
        # others go with their categories: sync's national submissions follow a rule for each category.
        shown = await self._with_categories_all(list(versions.values()))
        by_key = {(r.resource_id, r.version): r for r in shown}
        return [
            (c, by_key[(c.resource_id, c.resource_version)])
            for c in changes
            if (c.resource_id, c.resource_version) in by_key
        ], next_after

    async def stream_changes(
        self, after_sequence: int, poll_interval: float = 0.2
    ) -> AsyncIterator[tuple[Change, ClinicalRecord]]:
        check_feed_request(after_sequence, 0)
        while True:
            changes, after_sequence = await self.list_changes(after_sequence, 100)
            for item in changes:
                yield item
            if not changes:
                await asyncio.sleep(poll_interval)


_FOREIGN_UPDATE = (
    "resource_id names a resource of another facility; a facility updates its own resources only"
)


def _check_sensitivity(raw: ResourceInput) -> None:
    violations = Violations()
    check_sensitivity(violations, raw)
    violations.raise_if_any()


def stay_in_lane(data_facility_code: str, message: str) -> None:
    """Writes stay in the caller's facility's lane: another facility's encounter or resource is
    never written to, whatever the caller may read of it. Platform callers have no lane."""
    access = current_access()
    if not access.platform and data_facility_code != access.facility_code:
        raise PermissionDeniedError(message)


def _noted(access: CallAccess, seen: Visibility, records: list[ClinicalRecord]) -> list[ClinicalRecord]:
    """The records a read returns, after noting whether an emergency access opened any of them."""
    note_emergency_reads(access, seen, {record.facility_code for record in records})
    return records


def note_emergency_reads(access: CallAccess, seen: Visibility, data_facility_codes: Iterable[str]) -> None:
    """Notes on the call (its audit event says so) that an emergency access opened data, when it
    returns another facility's records that only the emergency access opens."""
    for facility_code in data_facility_codes:
        access.note_emergency(seen, facility_code)


def patient_as_seen(patient: identity_pb2.Patient, seen: Visibility) -> identity_pb2.Patient:
    """The person as the caller's facility may see them: unless every facility's demographics are
    open to it, without the record numbers and the registering facility of facilities it cannot see."""
    if seen.shares_demographics:
        return patient
    shown = identity_pb2.Patient()
    shown.CopyFrom(patient)
    del shown.identifiers[:]
    shown.identifiers.extend(
        i for i in patient.identifiers if not i.facility_code or seen.sees(i.facility_code)
    )
    if patient.registering_facility_code and not seen.sees(patient.registering_facility_code):
        shown.registering_facility_code = ""
    return shown
