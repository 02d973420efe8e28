"""Breach use cases: record an incident, change its status, compute what it touched from the audit
log, produce the notification, and keep the gauge of incidents near or past their deadline."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from datetime import datetime

from prometheus_client import Gauge

from emr_audit.breach import (
    ALERTED_DEADLINE_STATES,
    DeadlineState,
    ImpactTally,
    Incident,
    IncidentState,
    Status,
    StatusRequest,
    next_change,
    notification_document,
    notification_text,
    validate_incident,
)
from emr_audit.breach_repository import BreachRepository
from emr_runtime.clock import utc_now
from emr_runtime.errors import ConflictError, FieldViolation, InvalidArgumentError, NotFoundError, Violations
from emr_runtime.idempotency import check_request_id, derive_id
from emr_runtime.paging import PageTokens, page_size, position_str, position_time

log = logging.getLogger("emr.audit.breach")

UNNOTIFIED_INCIDENTS = Gauge(
    "emr_audit_breach_incidents_unnotified",
    "Breach incidents not notified to the authority whose 72-hour deadline is near (due_soon: 24 h or "
    "less left) or past (overdue).",
    ["deadline_state"],
)
for _state in ALERTED_DEADLINE_STATES:
    UNNOTIFIED_INCIDENTS.labels(deadline_state=_state.value)

INCIDENT_KIND = "breach-incident"
# Concurrent status changes of one incident: each retry re-reads the history after losing a position.
CHANGE_ATTEMPTS = 3


class BreachWorkflow:
    def __init__(self, repository: BreachRepository, page_tokens: PageTokens) -> None:
        self._repository = repository
        self._page_tokens = page_tokens
        # One count at a time: a count that read the incidents before a change must not set the gauge
        # after the count that followed the change.
        self._gauge_lock = asyncio.Lock()

    async def record(self, request_id: str, draft: Incident, recorded_by: str) -> IncidentState:
        violations = Violations()
        check_request_id(violations, request_id)
        violations.raise_if_any()
        now = utc_now()
        validate_incident(draft, now)
        incident = replace(
            draft, incident_id=derive_id(INCIDENT_KIND, request_id), recorded_by=recorded_by, recorded_at=now
        )
        if not await self._repository.insert_incident(incident):
            stored = await self._repository.incident(incident.incident_id)
            if stored is None or not stored.same_request(incident):
                raise ConflictError("request_id was already used for a different incident", "request_id")
            return await self.get(stored.incident_id)
        log.info("breach incident recorded", extra={"incident_id": incident.incident_id})
        await self._refresh_gauge()
        return IncidentState(incident)

    async def get(self, incident_id: str) -> IncidentState:
        if not incident_id.strip():
            raise InvalidArgumentError([FieldViolation("incident_id", "required")])
        incident = await self._repository.incident(incident_id)
        if incident is None:
            raise NotFoundError("BreachIncident", "incident_id", incident_id)
        return IncidentState(incident, tuple(await self._repository.history(incident_id)))

    async def list_incidents(
        self, status: Status | None, requested_page_size: int, page_token: str
    ) -> tuple[list[IncidentState], str]:
        """Incidents, most recently discovered first (ties by id), optionally of one status only."""
        limit = page_size(requested_page_size, default=20, maximum=100)
        position = self._page_tokens.decode(page_token)
        after = (position_time(position, "discovered"), position_str(position, "id")) if position else None
        incidents = sorted(
            await self._repository.incidents(), key=lambda i: (i.discovered_at or utc_now(), i.incident_id)
        )
        listed: list[IncidentState] = []
        for incident in reversed(incidents):
            key = (incident.discovered_at or utc_now(), incident.incident_id)
            if after is not None and key >= after:
                continue
            state = IncidentState(incident, tuple(await self._repository.history(incident.incident_id)))
            if status is None or state.status is status:
                listed.append(state)
                if len(listed) > limit:
                    break
        next_token = ""
        if len(listed) > limit:
            last = listed[limit - 1].incident
            assert last.discovered_at is not None
            next_token = self._page_tokens.encode(
                {"discovered": last.discovered_at.isoformat(), "id": last.incident_id}
            )
        return listed[:limit], next_token

    async def change_status(self, incident_id: str, request: StatusRequest, actor: str) -> IncidentState:
        for _ in range(CHANGE_ATTEMPTS):
            state = await self.get(incident_id)
            change = next_change(state, request, actor, utc_now())
            if await self._repository.insert_change(incident_id, change):
                log.info(
                    "breach incident status changed",
                    extra={"incident_id": incident_id, "status": change.status.value},
                )
                await self._refresh_gauge()
                return replace(state, history=(*state.history, change))
        raise ConflictError("the incident was changed concurrently; read it and try again", "incident_id")

    async def tally(self, state: IncidentState) -> ImpactTally:
        tally = ImpactTally()
        async for event in self._repository.events_in(state.incident.scope.event_filter()):
            tally.feed(event)
        return tally

    async def affected_patients(
        self, incident_id: str, requested_page_size: int, page_token: str
    ) -> tuple[ImpactTally, str, str, int]:
        """The tally of the incident, the patient id the page starts after, the next token and the
        page size."""
        limit = page_size(requested_page_size, default=100, maximum=1000)
        position = self._page_tokens.decode(page_token)
        after = position_str(position, "after") if position else ""
        if position and position_str(position, "incident") != incident_id:
            raise InvalidArgumentError([FieldViolation("page_token", "belongs to another incident")])
        tally = await self.tally(await self.get(incident_id))
        page = tally.patients(after, limit + 1)
        next_token = (
            self._page_tokens.encode({"incident": incident_id, "after": page[limit - 1].patient_id})
            if len(page) > limit
            else ""
        )
        return tally, after, next_token, limit

    async def notification(
        self, incident_id: str, delay_reason: str
    ) -> tuple[IncidentState, ImpactTally, str, str]:
        state = await self.get(incident_id)
        tally = await self.tally(state)
        document = notification_document(state, tally, utc_now(), delay_reason)
        return state, tally, _json(document), notification_text(document)

    async def observe_deadlines(self, now: datetime | None = None) -> dict[DeadlineState, int]:
        """Sets the gauge of unnotified incidents near or past their deadline; returns the counts."""
        async with self._gauge_lock:
            moment = now or utc_now()
            counts = dict.fromkeys(ALERTED_DEADLINE_STATES, 0)
            for incident_id in await self._repository.incident_ids():
                state = await self.get(incident_id)
                deadline_state = state.deadline_state(moment)
                if deadline_state in counts:
                    counts[deadline_state] += 1
            for deadline_state, count in counts.items():
                UNNOTIFIED_INCIDENTS.labels(deadline_state=deadline_state.value).set(count)
            return counts

    async def _refresh_gauge(self) -> None:
        """After a change this replica made, so that an alert follows at once rather than within the
        minute of the watch; the change is stored whatever happens here."""
        try:
            await self.observe_deadlines()
        except Exception:
            log.exception("breach deadline gauge not refreshed; the periodic check will")

    async def run_deadline_watch(self, interval_seconds: float) -> None:
        while True:
            try:
                await self.observe_deadlines()
            except Exception:
                log.exception("breach deadline check failed; retrying")
            await asyncio.sleep(interval_seconds)


def _json(document: dict[str, object]) -> str:
    return json.dumps(document, sort_keys=True, ensure_ascii=False, indent=2)
