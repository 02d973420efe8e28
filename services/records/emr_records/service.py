"""Records use cases: encounters and the change feed."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from emr_records.domain import (
    Change,
    ChangeKind,
    Encounter,
    EncounterInput,
    check_feed_request,
    plan_feed,
    validate_encounter,
)
from emr_records.patients import PatientDirectory
from emr_records.repository import ChangeFeedRepository, EncounterRepository
from emr_runtime.clock import utc_now
from emr_runtime.errors import ConflictError, FieldViolation, InvalidArgumentError, NotFoundError
from emr_runtime.idempotency import derive_id
from emr_runtime.paging import decode_page_token, encode_page_token, page_size

log = logging.getLogger("emr.records")


class RecordsService:
    def __init__(
        self,
        encounters: EncounterRepository,
        feed: ChangeFeedRepository,
        patients: PatientDirectory,
        change_settle: timedelta,
    ) -> None:
        self._encounters = encounters
        self._feed = feed
        self._patients = patients
        self._settle = change_settle

    async def create_encounter(self, raw: EncounterInput) -> Encounter:
        now = utc_now()
        encounter = validate_encounter(raw, derive_id("encounter", raw.request_id), now)
        if not await self._patients.exists(encounter.patient_id):
            raise NotFoundError("Patient", "patient_id", encounter.patient_id)
        stored, change_pending = await self._encounters.insert_or_get(encounter)
        if stored.request_fingerprint != encounter.request_fingerprint:
            raise ConflictError("request_id was already used for a different encounter", "request_id")
        if change_pending:
            await self._record_change(stored)
        return stored

    async def _record_change(self, encounter: Encounter) -> None:
        await self._feed.append(encounter, ChangeKind.CREATED)
        await self._encounters.mark_change_recorded(encounter.encounter_id)

    async def get_encounter(self, encounter_id: str) -> Encounter:
        if not encounter_id.strip():
            raise InvalidArgumentError([FieldViolation("encounter_id", "required")])
        encounter = await self._encounters.get(encounter_id)
        if encounter is None:
            raise NotFoundError("Encounter", "encounter_id", encounter_id)
        return encounter

    async def list_encounters(
        self, patient_id: str, requested_page_size: int, page_token: str
    ) -> tuple[list[Encounter], str]:
        if not patient_id.strip():
            raise InvalidArgumentError([FieldViolation("patient_id", "required")])
        limit = page_size(requested_page_size, default=20, maximum=100)
        before = _decode_encounter_position(page_token)
        encounters = await self._encounters.by_patient(patient_id, before, limit + 1)
        if len(encounters) <= limit:
            return encounters, ""
        last = encounters[limit - 1]
        token = encode_page_token({"start": last.start_time.isoformat(), "id": last.encounter_id})
        return encounters[:limit], token

    async def list_changes(
        self, after_sequence: int, requested_limit: int
    ) -> tuple[list[tuple[Change, Encounter]], int]:
        """The next run of changes without holes, with the encounter each one is about."""
        limit = check_feed_request(after_sequence, requested_limit)
        plan = plan_feed(
            after_sequence, await self._feed.after(after_sequence, limit), utc_now(), self._settle
        )
        if plan.holes_to_close:
            now = utc_now()
            for sequence in plan.holes_to_close:
                await self._feed.close_hole(sequence, now)
            plan = plan_feed(after_sequence, await self._feed.after(after_sequence, limit), now, self._settle)
        next_after = plan.ready[-1].sequence if plan.ready else after_sequence
        changes = [change for change in plan.ready if not change.tombstone]
        encounters = await self._encounters.get_many([change.resource_id for change in changes])
        return [(change, encounters[change.resource_id]) for change in changes], next_after

    async def sweep_outbox(self, interval: float = 5.0) -> None:
        """Puts encounters whose change a crash left unrecorded into the feed."""
        while True:
            await asyncio.sleep(interval)
            cutoff = utc_now() - timedelta(seconds=interval)
            try:
                for encounter in await self._encounters.with_change_pending(cutoff, 100):
                    await self._record_change(encounter)
            except Exception:
                log.exception("outbox sweep failed")


def _decode_encounter_position(page_token: str) -> tuple[datetime, str] | None:
    position = decode_page_token(page_token)
    if position is None:
        return None
    try:
        return datetime.fromisoformat(position["start"]), str(position["id"])
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidArgumentError(
            [FieldViolation("page_token", "not a token this service issued")]
        ) from error
