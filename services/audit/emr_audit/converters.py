"""Conversions between emr.audit.v1 messages and audit domain types."""

from __future__ import annotations

from datetime import UTC

from emr.audit.v1 import audit_pb2

from emr_audit.domain import Action, AuditEvent, Outcome
from emr_runtime.clock import to_storage_precision

_ACTIONS = {
    audit_pb2.AUDIT_ACTION_CREATE: Action.CREATE,
    audit_pb2.AUDIT_ACTION_READ: Action.READ,
    audit_pb2.AUDIT_ACTION_UPDATE: Action.UPDATE,
    audit_pb2.AUDIT_ACTION_SEARCH: Action.SEARCH,
    audit_pb2.AUDIT_ACTION_EXPORT: Action.EXPORT,
}
_ACTIONS_TO_PROTO = {value: key for key, value in _ACTIONS.items()}
_OUTCOMES = {
    audit_pb2.AUDIT_OUTCOME_SUCCESS: Outcome.SUCCESS,
    audit_pb2.AUDIT_OUTCOME_CLIENT_FAILURE: Outcome.CLIENT_FAILURE,
    audit_pb2.AUDIT_OUTCOME_SERVER_FAILURE: Outcome.SERVER_FAILURE,
}
_OUTCOMES_TO_PROTO = {value: key for key, value in _OUTCOMES.items()}


def event_from_message(message: audit_pb2.AuditEvent) -> AuditEvent:
    return AuditEvent(
        event_id=message.event_id,
        action=_ACTIONS.get(message.action),
        outcome=_OUTCOMES.get(message.outcome),
        occurred_at=to_storage_precision(message.occurred_time.ToDatetime(tzinfo=UTC))
        if message.HasField("occurred_time")
        else None,
        actor_id=message.actor_id,
        actor_facility_code=message.actor_facility_code,
        source_service=message.source_service,
        operation=message.operation,
        patient_id=message.patient_id,
        resource_type=message.resource_type,
        resource_id=message.resource_id,
        purpose_of_use=message.purpose_of_use,
        request_id=message.request_id,
        trace_id=message.trace_id,
        sequence=message.sequence,
    )


def event_message(event: AuditEvent) -> audit_pb2.AuditEvent:
    assert event.action is not None and event.outcome is not None  # stored events are valid
    message = audit_pb2.AuditEvent(
        event_id=event.event_id,
        action=_ACTIONS_TO_PROTO[event.action],
        outcome=_OUTCOMES_TO_PROTO[event.outcome],
        actor_id=event.actor_id,
        actor_facility_code=event.actor_facility_code,
        source_service=event.source_service,
        operation=event.operation,
        patient_id=event.patient_id,
        resource_type=event.resource_type,
        resource_id=event.resource_id,
        purpose_of_use=event.purpose_of_use,
        request_id=event.request_id,
        trace_id=event.trace_id,
        sequence=event.sequence,
    )
    if event.occurred_at is not None:
        message.occurred_time.FromDatetime(event.occurred_at)
    if event.recorded_at is not None:
        message.record_time.FromDatetime(event.recorded_at)
    return message
