"""The audit client every service uses: an audited call's event is stored durably before the call
answers: in the audit service, or, while audit is unreachable, in a spool in the calling service's
own database, replayed in order when audit answers again."""

from __future__ import annotations

import asyncio
import logging
import re
import urllib.parse
import uuid

import grpc
from emr.audit.v1 import audit_pb2, audit_pb2_grpc
from prometheus_client import Counter, Gauge
from pymongo.errors import PyMongoError

from emr_runtime.caller import caller_from_metadata
from emr_runtime.clock import utc_now
from emr_runtime.db import Database, IndexSpec, next_sequence
from emr_runtime.errors import DependencyUnavailableError
from emr_runtime.interceptors import AuditRule, AuditSink, Call
from emr_runtime.telemetry import current_trace_id
from emr_runtime.visibility import current_access

log = logging.getLogger("emr.audit_client")

AUDIT_SERVICE = "emr.audit.v1.AuditService"
SPOOL_COLLECTION = "audit_spool"
# Spooled events keep the order they were recorded in: a counter in the service's own database
# numbers them (several replicas of a service share one spool and one order).
SPOOL_INDEXES = (IndexSpec(SPOOL_COLLECTION, (("position", 1),), "spool_position"),)
_NOT_A_CODE = re.compile(r"[^0-9A-Za-z._:/ \[\]-]")
# What the audit log accepts as an id of a patient or resource (emr_audit.domain checks it).
AUDITED_ID = re.compile(r"[0-9A-Za-z._:/-]{1,128}")
_OUTCOMES = {
    "success": audit_pb2.AUDIT_OUTCOME_SUCCESS,
    "client_failure": audit_pb2.AUDIT_OUTCOME_CLIENT_FAILURE,
    "server_failure": audit_pb2.AUDIT_OUTCOME_SERVER_FAILURE,
}
REJECTED_COLLECTION = "audit_spool_rejected"
SPOOL_REJECTED = Counter(
    "emr_audit_spool_rejected_total", "Spooled audit events the audit service refused, kept aside."
)
# What one call records at most (the audit service takes 500 events an append; searches cap below).
MAX_EVENTS_PER_CALL = 500
SPOOL_DEPTH = Gauge("emr_audit_spool_depth", "Audit events waiting in the local spool for the audit service.")
SPOOL_REPLAY_FAILURES = Counter(
    "emr_audit_spool_replay_failures_total",
    "Spool replays that failed, by reason (a gRPC status in lower case, or database).",
    ["reason"],
)
SPOOL_REPLAY_CONSECUTIVE_FAILURES = Gauge(
    "emr_audit_spool_replay_consecutive_failures",
    "Spool replays failed in a row since the last that went through; a stuck replay keeps rising.",
)
# A replayed batch may take this much longer than one live append per event it carries (audit links
# events one at a time), and after each failure twice as long, up to the cap, so that a slow but
# working audit is waited for rather than sent the same batch again and again.
REPLAY_SECONDS_PER_EVENT = 0.02
MAX_REPLAY_DEADLINE_SECONDS = 60.0
MAX_REPLAY_WAIT_SECONDS = 30.0
# When audit could not be reached at all, trying again costs it nothing: try often, so that the spool
# drains within seconds of audit's return instead of after a long back-off grown during the outage.
MAX_UNREACHABLE_REPLAY_WAIT_SECONDS = 2.0
_MAX_DOUBLINGS = 6


def replay_deadline(append_timeout: float, events: int, failures: int) -> float:
    """Seconds a replay of ``events`` events may take after ``failures`` failures in a row."""
    grown = (append_timeout + REPLAY_SECONDS_PER_EVENT * events) * 2.0 ** min(failures, _MAX_DOUBLINGS)
    return min(MAX_REPLAY_DEADLINE_SECONDS, grown)


def replay_wait(interval: float, failures: int, unreachable: bool = False) -> float:
    """Seconds to wait before the next replay after ``failures`` failures in a row; shorter when the
    last one found audit ``unreachable`` (nothing reached it, so retrying loads nothing)."""
    cap = MAX_UNREACHABLE_REPLAY_WAIT_SECONDS if unreachable else MAX_REPLAY_WAIT_SECONDS
    return min(cap, interval * 2.0 ** min(max(failures - 1, 0), _MAX_DOUBLINGS))


def replay_failure_reason(error: BaseException) -> str:
    """The metric label of a failed replay: never anything of the events."""
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code().name.lower()
    return "database" if isinstance(error, PyMongoError) else "other"


class AuditRecorder(AuditSink):
    """Sends audit events to the audit service, spooling them locally while it is unreachable."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        db: Database,
        source_service: str,
        append_timeout: float = 2.0,
        replay_interval: float = 1.0,
    ) -> None:
        self._stub = audit_pb2_grpc.AuditServiceStub(channel)
        self._db = db
        self._spool = db[SPOOL_COLLECTION]
        self._source_service = source_service
        self._append_timeout = append_timeout
        self._replay_interval = replay_interval
        # While anything is spooled, new events join the spool so that order is kept.
        self._spooling = False
        self._lock = asyncio.Lock()
        # One replay at a time; held across the (possibly long) append, which _lock must not be, or
        # every audited call that spools would wait for it.
        self._replay_lock = asyncio.Lock()
        self._replay_failures = 0
        self._audit_unreachable = False

    async def open(self) -> None:
        """Resumes spooling if a previous run left events in the spool."""
        depth = await self._spool.count_documents({})
        self._spooling = depth > 0
        SPOOL_DEPTH.set(depth)

    def event_for(self, rule: AuditRule, call: Call, outcome: str) -> audit_pb2.AuditEvent:
        return audit_event(rule, call, outcome, self._source_service)

    async def record_call(self, rule: AuditRule, call: Call, outcome: str) -> None:
        hits = rule.patient_ids(call.request, call.response) if rule.patient_ids and call.response else ()
        if hits:
            events = [audit_event(rule, call, outcome, self._source_service, hit) for hit in hits]
            await self.record(*events[:MAX_EVENTS_PER_CALL])
        else:
            await self.record(self.event_for(rule, call, outcome))

    async def record(self, *events: audit_pb2.AuditEvent) -> None:
        if not self._spooling:
            try:
                await self._stub.AppendEvents(
                    audit_pb2.AppendEventsRequest(events=events), timeout=self._append_timeout
                )
                return
            except grpc.aio.AioRpcError as error:
                log.warning("audit append failed; spooling", extra={"grpc_code": error.code().name})
                self._spooling = True
        for event in events:
            await self._spool_event(event)

    async def _spool_event(self, event: audit_pb2.AuditEvent) -> None:
        try:
            async with self._lock:
                # Whatever made the caller spool, later events must queue behind this one.
                self._spooling = True
                await self._spool.insert_one(
                    {
                        "_id": event.event_id,
                        "position": await next_sequence(self._db, SPOOL_COLLECTION),
                        "spooled_at": utc_now(),
                        "event": event.SerializeToString(),
                    }
                )
        except PyMongoError as error:
            # Neither audit nor our database took the event: the call must not report success.
            raise DependencyUnavailableError("audit") from error
        SPOOL_DEPTH.inc()

    async def replay_once(self, batch_size: int = 200) -> int:
        """Sends the oldest spooled events to audit; returns how many were delivered. A failure is
        counted, logged with its reason and raised; the next attempt waits longer for audit."""
        async with self._replay_lock:
            try:
                delivered = await self._replay_batch(batch_size)
            except (grpc.aio.AioRpcError, PyMongoError) as error:
                self._replay_failures += 1
                reason = replay_failure_reason(error)
                self._audit_unreachable = reason == grpc.StatusCode.UNAVAILABLE.name.lower()
                SPOOL_REPLAY_FAILURES.labels(reason=reason).inc()
                SPOOL_REPLAY_CONSECUTIVE_FAILURES.set(self._replay_failures)
                log.warning(
                    "audit spool replay failed",
                    extra={"reason": reason, "consecutive_failures": self._replay_failures},
                )
                raise
            self._replay_failures = 0
            SPOOL_REPLAY_CONSECUTIVE_FAILURES.set(0)
            return delivered

    async def _replay_batch(self, batch_size: int) -> int:
        documents = await self._spool.find().sort("position", 1).to_list(batch_size)
        if not documents:
            async with self._lock:
                # Checked again under the lock: an event spooled meanwhile keeps the spool on.
                if await self._spool.count_documents({}) == 0:
                    self._spooling = False
                    SPOOL_DEPTH.set(0)
            return 0
        events = [audit_pb2.AuditEvent.FromString(document["event"]) for document in documents]
        deadline = replay_deadline(self._append_timeout, len(events), self._replay_failures)
        try:
            await self._stub.AppendEvents(audit_pb2.AppendEventsRequest(events=events), timeout=deadline)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            await self._set_aside_rejected(documents)
        # Appends are idempotent by event_id, so a crash before this delete only resends.
        await self._spool.delete_many({"_id": {"$in": [document["_id"] for document in documents]}})
        SPOOL_DEPTH.set(await self._spool.count_documents({}))
        return len(documents)

    async def _set_aside_rejected(self, documents: list[dict[str, object]]) -> None:
        """One malformed event must not hold the spool back forever: events audit refuses are
        retried one by one, and the refused ones kept in a side collection (never dropped) for an
        operator, counted by a metric."""
        for document in documents:
            event = audit_pb2.AuditEvent.FromString(document["event"])  # type: ignore[arg-type]
            try:
                await self._stub.AppendEvents(
                    audit_pb2.AppendEventsRequest(events=[event]), timeout=self._append_timeout
                )
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                await self._db[REJECTED_COLLECTION].replace_one(
                    {"_id": document["_id"]}, document, upsert=True
                )
                SPOOL_REJECTED.inc()
                log.error(
                    "audit refused a spooled event; kept aside", extra={"collection": REJECTED_COLLECTION}
                )

    async def replay_forever(self) -> None:
        while True:
            try:
                while await self.replay_once():
                    pass
            except (grpc.aio.AioRpcError, PyMongoError):
                pass  # counted and logged by replay_once; waited out below
            await asyncio.sleep(
                replay_wait(self._replay_interval, self._replay_failures, self._audit_unreachable)
            )


def audit_event(
    rule: AuditRule, call: Call, outcome: str, source_service: str, patient_id: str | None = None
) -> audit_pb2.AuditEvent:
    """The audit event of one call (of one of a search's hits, ``patient_id``), with the verified
    caller; ids only, never clinical content."""
    caller = caller_from_metadata(call.context.invocation_metadata())
    access = current_access()
    if patient_id is None:
        patient_id = rule.patient_id(call.request, call.response)
    patient_id = _audited_id(patient_id)
    resource_id = _audited_id(rule.resource_id(call.request, call.response))
    event = audit_pb2.AuditEvent(
        event_id=str(uuid.uuid4()),
        action=rule.action,  # type: ignore[arg-type]
        subtype=rule.subtype,  # type: ignore[arg-type]
        outcome=_OUTCOMES[outcome],
        actor_id=caller.actor_id,
        actor_facility_code=caller.facility_code,
        purpose_of_use=caller.purpose_of_use,
        source_service=source_service,
        operation=call.full_method,
        resource_type=rule.resource_type,
        patient_id=patient_id,
        resource_id=resource_id,
        request_id=str(getattr(call.request, "request_id", "")),
        trace_id=current_trace_id(),
        retention_class=audit_pb2.AUDIT_RETENTION_CLASS_STANDARD,
        break_glass_reason=access.emergency_reason,
        emergency_access_id=access.emergency_access_id,
        agents=[
            audit_pb2.AuditAgent(
                type=audit_pb2.AUDIT_AGENT_TYPE_APPLICATION
                if caller.actor_id.startswith("service:")
                else audit_pb2.AUDIT_AGENT_TYPE_USER,
                who=caller.actor_id,
                role=_code(caller.role),
                facility_code=_code(caller.facility_code),
                client_application=_code(caller.client_application),
                network_address=_code(urllib.parse.unquote(call.context.peer() or "")),
                requestor=True,
            ),
            audit_pb2.AuditAgent(
                type=audit_pb2.AUDIT_AGENT_TYPE_APPLICATION,
                who=source_service,
                role="service",
            ),
        ],
    )
    if patient_id:
        event.entities.add(
            role=audit_pb2.AUDIT_ENTITY_ROLE_PATIENT, patient_id=patient_id, resource_type="Patient"
        )
    if resource_id and rule.resource_type != "Patient":
        event.entities.add(
            role=audit_pb2.AUDIT_ENTITY_ROLE_RESOURCE,
            patient_id=patient_id,
            resource_type=rule.resource_type,
            resource_id=resource_id,
        )
    event.occurred_time.FromDatetime(utc_now())
    return event


def _audited_id(value: str) -> str:
    """An id as the audit log records it. A malformed one (a refused call's) is left out: it is no
    record's id and may be anything the caller typed; the event still records the attempt."""
    return value if AUDITED_ID.fullmatch(value) else ""


def _code(value: str) -> str:
    """A metadata value reduced to what the audit log accepts as a code (no free text)."""
    return _NOT_A_CODE.sub("", value)[:64]
