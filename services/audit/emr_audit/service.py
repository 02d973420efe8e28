"""Audit use cases."""

from __future__ import annotations

from emr_audit.domain import AuditEvent, validate_events
from emr_audit.repository import AuditRepository
from emr_runtime.clock import utc_now
from emr_runtime.errors import Violations
from emr_runtime.paging import decode_page_token, encode_page_token, page_size


class AuditLog:
    def __init__(self, repository: AuditRepository) -> None:
        self._repository = repository

    async def append(self, events: list[AuditEvent]) -> list[int]:
        validate_events(events)
        now = utc_now()
        return [await self._repository.append(event.received(now)) for event in events]

    async def query_by_patient(
        self, patient_id: str, requested_page_size: int, page_token: str
    ) -> tuple[list[AuditEvent], str]:
        violations = Violations()
        if not patient_id.strip():
            violations.add("patient_id", "required")
        violations.raise_if_any()
        limit = page_size(requested_page_size, default=100, maximum=500)
        position = decode_page_token(page_token) or {"after": 0}
        after = position.get("after")
        if not isinstance(after, int):
            violations.add("page_token", "not a token this service issued")
            violations.raise_if_any()
        events = await self._repository.by_patient(patient_id, int(after), limit + 1)  # type: ignore[arg-type]
        next_token = encode_page_token({"after": events[limit - 1].sequence}) if len(events) > limit else ""
        return events[:limit], next_token
