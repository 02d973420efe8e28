"""Retention use cases: the retention of a record, explicit classes, legal holds, and the disposal
job (list what is due, request, approve by another person, dispose, certify).

Every step is an insert with a unique ``_id`` (emr_records.retention_repository), so a disposal a
crash interrupted resumes when it is approved again, and never disposes of a record twice or of one
that a hold or a raised class has stopped since it was listed."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from emr.audit.v1 import audit_pb2

from emr_records.domain import VIETNAM_TIME, ClinicalRecord, ResourceType, visit_day
from emr_records.repository import ResourceRepository
from emr_records.retention import (
    MINIMUM_YEARS,
    Episode,
    RetentionClass,
    add_years,
    disposal_day,
    episode_of,
    is_due,
    list_digest,
    longest,
    own_class,
    records_death,
)
from emr_records.retention_repository import RetentionRepository
from emr_runtime.audit import MAX_EVENTS_PER_CALL, AuditRecorder
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
from emr_runtime.patients import PatientDirectory

log = logging.getLogger("emr.records.retention")
MAX_REASON_LENGTH = 500
MAX_ID_LENGTH = 64
# Episodes one disposal lists at most; more are left to the next disposal.
MAX_DISPOSAL_EPISODES = 500
# Records one disposal lists at most (its plan is one document, under MongoDB's 16 MiB).
MAX_DISPOSAL_RECORDS = 20_000
# Records the due scan reads at most per call (bounds the work of one call).
MAX_SCAN = 50_000
SCAN_PAGE = 200
PATIENT = "patient"
ENCOUNTER = "encounter"
RECORD = "record"


@dataclass(frozen=True)
class RecordRetention:
    record: ClinicalRecord
    own_class: RetentionClass
    episode: Episode
    disposal_date: date | None
    hold_ids: tuple[str, ...]


@dataclass(frozen=True)
class DueEpisode:
    episode: Episode
    disposal_date: date


def check_as_of(value: str, today: date) -> date:
    """A disposal day: "YYYY-MM-DD", not after today (a later day would make records due early)."""
    try:
        day = date.fromisoformat(value) if len(value) == 10 else None
    except ValueError:
        day = None
    if day is None:
        raise InvalidArgumentError([FieldViolation("as_of", "a day YYYY-MM-DD")])
    if day > today:
        raise InvalidArgumentError([FieldViolation("as_of", "must not be after today (Vietnam time)")])
    return day


# The audit label of each class (emr.audit.v1.AuditRetentionClass).
AUDIT_RETENTION = {
    RetentionClass.STANDARD_10_YEARS: audit_pb2.AUDIT_RETENTION_CLASS_STANDARD,
    RetentionClass.SPECIAL_20_YEARS: audit_pb2.AUDIT_RETENTION_CLASS_EXTENDED_20_YEARS,
    RetentionClass.DEATH_30_YEARS: audit_pb2.AUDIT_RETENTION_CLASS_EXTENDED_30_YEARS,
    RetentionClass.PERMANENT: audit_pb2.AUDIT_RETENTION_CLASS_PERMANENT,
}
PATIENT_RECORDS = "PatientRecords"


def patient_records_disposed_event(
    disposal_id: str, approver: str, patient_id: str, retention_class: RetentionClass
) -> audit_pb2.AuditEvent:
    """The event that tells audit a disposal removed the last record of a patient."""
    event = audit_pb2.AuditEvent(
        event_id=str(uuid.uuid4()),
        action=audit_pb2.AUDIT_ACTION_DELETE,
        outcome=audit_pb2.AUDIT_OUTCOME_SUCCESS,
        actor_id=approver,
        source_service="records",
        operation="/emr.records.v1.RecordRetentionService/ApproveDisposal",
        resource_type=PATIENT_RECORDS,
        patient_id=patient_id,
        resource_id=disposal_id,
        retention_class=AUDIT_RETENTION[retention_class],
    )
    event.entities.add(
        role=audit_pb2.AUDIT_ENTITY_ROLE_PATIENT, patient_id=patient_id, resource_type="Patient"
    )
    event.occurred_time.FromDatetime(utc_now())
    return event


def _check_reason(violations: Violations, reason: str, field: str = "reason") -> None:
    if not reason.strip():
        violations.add(field, "required: why, without patient data")
    elif len(reason) > MAX_REASON_LENGTH:
        violations.add(field, f"at most {MAX_REASON_LENGTH} characters")


def _check_id(violations: Violations, field: str, value: str) -> None:
    if not value.strip():
        violations.add(field, "required")
    elif len(value) > MAX_ID_LENGTH or not value.isprintable():
        violations.add(field, f"an id of at most {MAX_ID_LENGTH} printable characters")


def _scan_cutoff(as_of: date) -> datetime:
    """Records with a clinical time from this moment on cannot be due on ``as_of``."""
    last_day = add_years(as_of, -MINIMUM_YEARS)
    return datetime.combine(last_day + timedelta(days=1), time(), VIETNAM_TIME)


def _within_record_limit(due: list[DueEpisode]) -> list[DueEpisode]:
    """The first episodes of ``due`` whose records fit one plan document (at least one episode)."""
    total = 0
    for index, item in enumerate(due):
        total += len(item.episode.records)
        if total > MAX_DISPOSAL_RECORDS and index > 0:
            return due[:index]
    return due


def episode_key(record: ClinicalRecord) -> str:
    if record.resource_type is ResourceType.ENCOUNTER:
        return record.resource_id
    return record.encounter_id or record.resource_id


class RetentionService:
    def __init__(
        self,
        resources: ResourceRepository,
        store: RetentionRepository,
        patients: PatientDirectory,
        verify_patients: bool = True,
        audit: AuditRecorder | None = None,
    ) -> None:
        self._audit = audit
        self._resources = resources
        self._store = store
        self._patients = patients
        self._verify_patients = verify_patients

    # --- upgrades by later events -----------------------------------------------------------------

    async def note_written(self, record: ClinicalRecord) -> None:
        """Raises the patient's floor when a record tells of their death: every record of the
        patient is then kept 30 years. Called before the version becomes readable, on every path
        that makes it so (a retry completes what a crash left), so no readable death lacks it."""
        if records_death(record):
            await self._store.raise_floor(
                PATIENT,
                record.patient_id,
                RetentionClass.DEATH_30_YEARS,
                "death recorded",
                record.resource_id,
                utc_now(),
            )

    # --- reading a record's retention -------------------------------------------------------------

    async def _episode(self, key: str, members: list[ClinicalRecord]) -> Episode:
        patient_floors = await self._store.floors(PATIENT, {m.patient_id for m in members})
        record_floors = await self._store.floors(RECORD, [m.resource_id for m in members])
        floors = [
            c for found in (patient_floors, record_floors) for classes in found.values() for c in classes
        ]
        return episode_of(key, members, floors)

    async def _members(self, key: str) -> list[ClinicalRecord]:
        head = await self._resources.get(key)
        attached = await self._resources.attached_to(key)
        members = [head] if head is not None else []
        return members + [r for r in attached if r.resource_id != key]

    async def _holds(self, episode: Episode) -> list[str]:
        targets = [episode.key, *{r.patient_id for r in episode.records}]
        standing = await self._store.standing_holds(targets)
        return sorted(hold_id for ids in standing.values() for hold_id in ids)

    async def _record(self, resource_type: ResourceType | None, resource_id: str) -> ClinicalRecord:
        violations = Violations()
        if resource_type is None:
            violations.add("resource_type", "required: a resource type")
        _check_id(violations, "resource_id", resource_id)
        violations.raise_if_any()
        assert resource_type is not None
        record = await self._resources.get(resource_id)
        if record is None or record.resource_type is not resource_type:
            raise NotFoundError(resource_type.value, "resource_id", resource_id)
        return record

    async def retention(self, resource_type: ResourceType | None, resource_id: str) -> RecordRetention:
        record = await self._record(resource_type, resource_id)
        key = episode_key(record)
        members = await self._members(key) or [record]
        episode = await self._episode(key, members)
        return RecordRetention(
            record, own_class(record), episode, disposal_day(episode), tuple(await self._holds(episode))
        )

    async def classify(
        self,
        request_id: str,
        resource_type: ResourceType | None,
        resource_id: str,
        retention_class: RetentionClass | None,
        reason: str,
        actor_id: str,
    ) -> RecordRetention:
        violations = Violations()
        check_request_id(violations, request_id)
        if retention_class is None:
            violations.add("retention_class", "required: " + ", ".join(c.name for c in RetentionClass))
        _check_reason(violations, reason)
        violations.raise_if_any()
        assert retention_class is not None
        record = await self._record(resource_type, resource_id)
        if retention_class is not RetentionClass.STANDARD_10_YEARS:
            await self._store.raise_floor(
                RECORD, record.resource_id, retention_class, reason, actor_id, utc_now()
            )
        return await self.retention(resource_type, resource_id)

    # --- legal holds ----------------------------------------------------------------------------

    async def place_hold(
        self, request_id: str, target: str | None, target_id: str, reason: str, actor_id: str
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        violations = Violations()
        check_request_id(violations, request_id)
        if target is None:
            violations.add("target", "required: PATIENT or ENCOUNTER")
        _check_id(violations, "target_id", target_id)
        _check_reason(violations, reason)
        violations.raise_if_any()
        target_id = target_id.strip()
        if target == ENCOUNTER:
            encounter = await self._resources.get(target_id)
            if encounter is None or encounter.resource_type is not ResourceType.ENCOUNTER:
                raise NotFoundError("Encounter", "target_id", target_id)
            patient_id = encounter.patient_id
        else:
            if self._verify_patients and not await self._patients.exists(target_id):
                raise NotFoundError("Patient", "target_id", target_id)
            patient_id = target_id
        hold = {
            "_id": derive_id("legal-hold", request_id),
            "target": target,
            "target_id": target_id,
            "patient_id": patient_id,
            "reason": reason,
            "placed_by": actor_id,
            "placed_at": utc_now(),
        }
        stored = await self._store.place_hold(hold)
        if (stored["target"], stored["target_id"], stored["reason"]) != (target, target_id, reason):
            raise ConflictError("request_id was already used for a different hold", "request_id")
        _, release = await self._store.hold(stored["_id"])
        return stored, release

    async def release_hold(
        self, hold_id: str, reason: str, actor_id: str
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        violations = Violations()
        _check_id(violations, "hold_id", hold_id)
        _check_reason(violations, reason)
        violations.raise_if_any()
        hold, _ = await self._store.hold(hold_id)
        if hold is None:
            raise NotFoundError("LegalHold", "hold_id", hold_id)
        release = await self._store.release_hold(
            {"_id": hold_id, "released_by": actor_id, "released_at": utc_now(), "reason": reason}
        )
        return hold, release

    # --- what is due ------------------------------------------------------------------------------

    async def due(self, as_of: date, limit: int) -> tuple[list[DueEpisode], bool]:
        """Episodes due on ``as_of`` and not held, in the order of their first scanned record's id,
        at most ``limit``; and whether more may be due."""
        cutoff = _scan_cutoff(as_of)
        seen: set[str] = set()
        found: list[DueEpisode] = []
        after, scanned = "", 0
        while scanned < MAX_SCAN:
            page = await self._resources.clinical_time_before(cutoff, after, SCAN_PAGE)
            for record in page:
                key = episode_key(record)
                if key in seen:
                    continue
                seen.add(key)
                episode = await self._episode(key, await self._members(key) or [record])
                day = disposal_day(episode)
                if day is None or day > as_of or await self._holds(episode):
                    continue
                if len(found) == limit:
                    return found, True
                found.append(DueEpisode(episode, day))
            scanned += len(page)
            if len(page) < SCAN_PAGE:
                return found, False
            after = page[-1].resource_id
        return found, True

    # --- disposal -------------------------------------------------------------------------------

    async def request_disposal(
        self, request_id: str, as_of_text: str, reason: str, actor_id: str
    ) -> dict[str, Any]:
        violations = Violations()
        check_request_id(violations, request_id)
        _check_reason(violations, reason)
        violations.raise_if_any()
        as_of = check_as_of(as_of_text, visit_day(utc_now()))
        disposal_id = derive_id("disposal", request_id)
        existing = await self._store.plan(disposal_id)
        if existing is None:
            due, _ = await self.due(as_of, MAX_DISPOSAL_EPISODES)
            due = _within_record_limit(due)
            listed: list[dict[str, Any]] = [
                {
                    "key": item.episode.key,
                    "patient_id": item.episode.patient_id,
                    "retention_class": item.episode.retention_class.value,
                    "clock_start": item.episode.clock_start,
                    "disposal_date": item.disposal_date.isoformat(),
                    "records": [
                        {"resource_type": r.resource_type.value, "resource_id": r.resource_id}
                        for r in item.episode.records
                    ],
                }
                for item in due
            ]
            existing = await self._store.insert_plan(
                {
                    "_id": disposal_id,
                    "as_of": as_of.isoformat(),
                    "reason": reason,
                    "requested_by": actor_id,
                    "requested_at": utc_now(),
                    "episodes": listed,
                    "list_sha256": list_digest(
                        (r["resource_type"], r["resource_id"]) for e in listed for r in e["records"]
                    ),
                }
            )
        if (existing["as_of"], existing["reason"], existing["requested_by"]) != (
            as_of.isoformat(),
            reason,
            actor_id,
        ):
            raise ConflictError("request_id was already used for a different disposal", "request_id")
        return existing

    async def disposal(
        self, disposal_id: str
    ) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]:
        violations = Violations()
        _check_id(violations, "disposal_id", disposal_id)
        violations.raise_if_any()
        plan = await self._store.plan(disposal_id)
        if plan is None:
            raise NotFoundError("Disposal", "disposal_id", disposal_id)
        return plan, await self._store.approval(disposal_id), await self._store.certificate(disposal_id)

    async def approve_disposal(
        self, disposal_id: str, actor_id: str
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        plan, approval, certificate = await self.disposal(disposal_id)
        if actor_id == plan["requested_by"]:
            raise PermissionDeniedError(
                "a disposal is approved by another person than the one who requested it"
            )
        if approval is None:
            approval = await self._store.approve(
                {"_id": disposal_id, "approved_by": actor_id, "approved_at": utc_now()}
            )
        if certificate is None:
            certificate = await self._dispose(plan, approval)
        return plan, approval, certificate

    async def _dispose(self, plan: dict[str, Any], approval: dict[str, Any]) -> dict[str, Any]:
        as_of = date.fromisoformat(plan["as_of"])
        disposed: list[dict[str, Any]] = []
        kept: list[dict[str, Any]] = []
        # The longest class of each patient's disposed records.
        disposed_classes: dict[str, RetentionClass] = {}
        episodes = 0
        for listed in plan["episodes"]:
            decision = await self._decide(plan["_id"], listed, as_of)
            if not decision["dispose"]:
                kept.extend(listed["records"])
                continue
            episodes += 1
            for item in decision["records"]:
                await self._store.tombstone(
                    {
                        "_id": item["resource_id"],
                        "resource_type": item["resource_type"],
                        "patient_id": item["patient_id"],
                        "encounter_id": item["encounter_id"],
                        "facility_code": item["facility_code"],
                        "retention_class": decision["retention_class"],
                        "clock_start": decision["clock_start"],
                        "disposal_id": plan["_id"],
                        "disposed_at": utc_now(),
                    }
                )
                await self._resources.erase(item["resource_id"])
                disposed_classes[item["patient_id"]] = longest(
                    [
                        disposed_classes.get(item["patient_id"], RetentionClass.STANDARD_10_YEARS),
                        RetentionClass(decision["retention_class"]),
                    ]
                )
                disposed.append({"resource_type": item["resource_type"], "resource_id": item["resource_id"]})
        await self._tell_audit_of_emptied_patients(plan["_id"], approval["approved_by"], disposed_classes)
        log.info("disposal complete", extra={"disposal_id": plan["_id"], "disposed": len(disposed)})
        return await self._store.certify(
            {
                "_id": plan["_id"],
                "as_of": plan["as_of"],
                "requested_by": plan["requested_by"],
                "approved_by": approval["approved_by"],
                "completed_at": utc_now(),
                "disposed": disposed,
                "kept": kept,
                "disposed_count": len(disposed),
                "episode_count": episodes,
                "disposed_sha256": list_digest((r["resource_type"], r["resource_id"]) for r in disposed),
            }
        )

    async def _tell_audit_of_emptied_patients(
        self, disposal_id: str, approver: str, disposed_classes: dict[str, RetentionClass]
    ) -> None:
        """Audit keeps a patient's events as long as records keeps any record of the patient (audit
        never calls records): when a disposal removed a patient's last record, records says so with
        one event, labelled with the longest class the patient's records had. Sent before the
        certificate: a disposal resumed after a crash may send it twice, never not at all."""
        if self._audit is None:
            return
        events = [
            patient_records_disposed_event(disposal_id, approver, patient_id, retention_class)
            for patient_id, retention_class in disposed_classes.items()
            if not await self._resources.holds_any(patient_id)
        ]
        for start in range(0, len(events), MAX_EVENTS_PER_CALL):
            await self._audit.record(*events[start : start + MAX_EVENTS_PER_CALL])

    async def _decide(self, disposal_id: str, listed: dict[str, Any], as_of: date) -> dict[str, Any]:
        """Whether one listed episode is disposed of, decided once: still due and not held now."""
        key = listed["key"]
        members = await self._members(key)
        if not members:
            # Gone since the listing (or an earlier run decided and erased it): keep the decision.
            members = [
                r
                for r in [await self._resources.get(item["resource_id"]) for item in listed["records"]]
                if r is not None
            ]
        decision: dict[str, Any] = {"_id": f"{disposal_id}:{key}", "dispose": False, "records": []}
        if members:
            episode = await self._episode(key, members)
            if is_due(episode, as_of) and not await self._holds(episode):
                decision = {
                    "_id": f"{disposal_id}:{key}",
                    "dispose": True,
                    "retention_class": episode.retention_class.value,
                    "clock_start": episode.clock_start,
                    "records": [
                        {
                            "resource_type": r.resource_type.value,
                            "resource_id": r.resource_id,
                            "patient_id": r.patient_id,
                            "encounter_id": r.encounter_id,
                            "facility_code": r.facility_code,
                        }
                        for r in episode.records
                    ],
                }
        return await self._store.decide(decision)
