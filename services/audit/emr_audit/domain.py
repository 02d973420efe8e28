"""Audit domain: what an event is and which events are acceptable. Pure; no I/O."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, replace
from datetime import datetime

from emr_runtime.errors import Violations

MAX_EVENTS_PER_APPEND = 500
_ID = re.compile(r"[0-9A-Za-z._:/-]{1,128}")


class Action(enum.Enum):
    CREATE = "create"
    READ = "read"
    UPDATE = "update"
    SEARCH = "search"
    EXPORT = "export"


class Outcome(enum.Enum):
    SUCCESS = "success"
    CLIENT_FAILURE = "client_failure"
    SERVER_FAILURE = "server_failure"


@dataclass(frozen=True)
class AuditEvent:
    """One access to patient data: ids and codes only, never names or clinical values.

    ``action`` / ``outcome`` are None when the sender used a value this service does not know.
    """

    event_id: str
    action: Action | None
    outcome: Outcome | None
    occurred_at: datetime | None
    actor_id: str
    actor_facility_code: str
    source_service: str
    operation: str
    patient_id: str
    resource_type: str
    resource_id: str
    purpose_of_use: str
    request_id: str
    trace_id: str
    sequence: int = 0
    recorded_at: datetime | None = None

    def received(self, recorded_at: datetime) -> AuditEvent:
        return replace(self, recorded_at=recorded_at)


def validate_events(events: list[AuditEvent]) -> None:
    """Rejects the whole batch if any event is malformed, naming each bad field."""
    violations = Violations()
    if not events:
        violations.add("events", "at least one event")
    if len(events) > MAX_EVENTS_PER_APPEND:
        violations.add("events", f"at most {MAX_EVENTS_PER_APPEND} events per call")
    for index, event in enumerate(events):
        path = f"events[{index}]"
        if not _ID.fullmatch(event.event_id):
            violations.add(f"{path}.event_id", "required: 1 to 128 letters, digits or . _ : / -")
        if event.action is None:
            violations.add(f"{path}.action", "required: a known action")
        if event.outcome is None:
            violations.add(f"{path}.outcome", "required: a known outcome")
        if event.occurred_at is None:
            violations.add(f"{path}.occurred_time", "required")
        if not event.source_service:
            violations.add(f"{path}.source_service", "required")
        for name in ("actor_id", "patient_id", "resource_id", "request_id", "operation"):
            if len(getattr(event, name)) > 256:
                violations.add(f"{path}.{name}", "at most 256 characters")
        if event.sequence:
            violations.add(f"{path}.sequence", "assigned by the audit service; leave it 0")
    violations.raise_if_any()
