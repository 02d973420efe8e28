"""Conversions between emr.audit.v1 messages and audit domain types."""

from __future__ import annotations

from datetime import UTC, datetime

from emr.audit.v1 import audit_pb2, breach_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from emr_audit import breach
from emr_audit.domain import (
    AccessSummary,
    Action,
    Agent,
    AgentType,
    AuditEvent,
    Checkpoint,
    Entity,
    EntityRole,
    EventFilter,
    EventType,
    FindingKind,
    Outcome,
    RetentionClass,
    Subtype,
    accessor_role,
    canonical_bytes,
    checkpoint_record,
)
from emr_audit.service import InclusionProof, IntegrityReport
from emr_audit.signing import ALGORITHM, CheckpointSigner
from emr_runtime.clock import to_storage_precision
from emr_runtime.errors import FieldViolation, InvalidArgumentError

_ACTIONS = {
    audit_pb2.AUDIT_ACTION_CREATE: Action.CREATE,
    audit_pb2.AUDIT_ACTION_READ: Action.READ,
    audit_pb2.AUDIT_ACTION_UPDATE: Action.UPDATE,
    audit_pb2.AUDIT_ACTION_SEARCH: Action.SEARCH,
    audit_pb2.AUDIT_ACTION_EXPORT: Action.EXPORT,
    audit_pb2.AUDIT_ACTION_DELETE: Action.DELETE,
    audit_pb2.AUDIT_ACTION_EXECUTE: Action.EXECUTE,
}
_ACTIONS_TO_PROTO = {value: key for key, value in _ACTIONS.items()}
_OUTCOMES = {
    audit_pb2.AUDIT_OUTCOME_SUCCESS: Outcome.SUCCESS,
    audit_pb2.AUDIT_OUTCOME_CLIENT_FAILURE: Outcome.CLIENT_FAILURE,
    audit_pb2.AUDIT_OUTCOME_SERVER_FAILURE: Outcome.SERVER_FAILURE,
}
_OUTCOMES_TO_PROTO = {value: key for key, value in _OUTCOMES.items()}
_TYPES = {
    audit_pb2.AUDIT_EVENT_TYPE_REST: EventType.REST,
    audit_pb2.AUDIT_EVENT_TYPE_EXPORT: EventType.EXPORT,
    audit_pb2.AUDIT_EVENT_TYPE_USER_AUTHENTICATION: EventType.USER_AUTHENTICATION,
    audit_pb2.AUDIT_EVENT_TYPE_EMERGENCY_OVERRIDE: EventType.EMERGENCY_OVERRIDE,
}
_TYPES_TO_PROTO = {value: key for key, value in _TYPES.items()}
_SUBTYPES = {
    audit_pb2.AUDIT_EVENT_SUBTYPE_READ: Subtype.READ,
    audit_pb2.AUDIT_EVENT_SUBTYPE_SEARCH: Subtype.SEARCH,
    audit_pb2.AUDIT_EVENT_SUBTYPE_CREATE: Subtype.CREATE,
    audit_pb2.AUDIT_EVENT_SUBTYPE_UPDATE: Subtype.UPDATE,
    audit_pb2.AUDIT_EVENT_SUBTYPE_MERGE: Subtype.MERGE,
    audit_pb2.AUDIT_EVENT_SUBTYPE_EXPORT: Subtype.EXPORT,
    audit_pb2.AUDIT_EVENT_SUBTYPE_LOGIN: Subtype.LOGIN,
    audit_pb2.AUDIT_EVENT_SUBTYPE_BREAK_GLASS: Subtype.BREAK_GLASS,
    audit_pb2.AUDIT_EVENT_SUBTYPE_SHARING_GRANT: Subtype.SHARING_GRANT,
    audit_pb2.AUDIT_EVENT_SUBTYPE_SHARING_REVOCATION: Subtype.SHARING_REVOCATION,
    audit_pb2.AUDIT_EVENT_SUBTYPE_REFERRAL: Subtype.REFERRAL,
}
_SUBTYPES_TO_PROTO = {value: key for key, value in _SUBTYPES.items()}
_AGENT_TYPES = {
    audit_pb2.AUDIT_AGENT_TYPE_USER: AgentType.USER,
    audit_pb2.AUDIT_AGENT_TYPE_APPLICATION: AgentType.APPLICATION,
}
_AGENT_TYPES_TO_PROTO = {value: key for key, value in _AGENT_TYPES.items()}
_ENTITY_ROLES = {
    audit_pb2.AUDIT_ENTITY_ROLE_PATIENT: EntityRole.PATIENT,
    audit_pb2.AUDIT_ENTITY_ROLE_RESOURCE: EntityRole.RESOURCE,
}
_ENTITY_ROLES_TO_PROTO = {value: key for key, value in _ENTITY_ROLES.items()}
# TT 33/2025/TT-BYT has no 15-year class: an event sent with it is stored as 20 years (the next
# class up, never a shorter one).
_RETENTION = {
    audit_pb2.AUDIT_RETENTION_CLASS_STANDARD: RetentionClass.STANDARD,
    audit_pb2.AUDIT_RETENTION_CLASS_EXTENDED_15_YEARS: RetentionClass.EXTENDED_20_YEARS,
    audit_pb2.AUDIT_RETENTION_CLASS_EXTENDED_20_YEARS: RetentionClass.EXTENDED_20_YEARS,
    audit_pb2.AUDIT_RETENTION_CLASS_EXTENDED_30_YEARS: RetentionClass.EXTENDED_30_YEARS,
    audit_pb2.AUDIT_RETENTION_CLASS_PERMANENT: RetentionClass.PERMANENT,
}
_RETENTION_TO_PROTO = {
    RetentionClass.STANDARD: audit_pb2.AUDIT_RETENTION_CLASS_STANDARD,
    RetentionClass.EXTENDED_15_YEARS: audit_pb2.AUDIT_RETENTION_CLASS_EXTENDED_15_YEARS,
    RetentionClass.EXTENDED_20_YEARS: audit_pb2.AUDIT_RETENTION_CLASS_EXTENDED_20_YEARS,
    RetentionClass.EXTENDED_30_YEARS: audit_pb2.AUDIT_RETENTION_CLASS_EXTENDED_30_YEARS,
    RetentionClass.PERMANENT: audit_pb2.AUDIT_RETENTION_CLASS_PERMANENT,
}


def _optional_instant(message: object, name: str, path: str = "") -> datetime | None:
    """The time in field ``name``, None when unset; a time no calendar holds is the caller's error."""
    if not message.HasField(name):  # type: ignore[attr-defined]
        return None
    try:
        return to_storage_precision(getattr(message, name).ToDatetime(tzinfo=UTC))
    except (ValueError, OverflowError) as error:
        raise InvalidArgumentError([FieldViolation(path + name, "not a valid time")]) from error


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def event_from_message(message: audit_pb2.AuditEvent, index: int = 0) -> AuditEvent:
    return AuditEvent(
        event_id=message.event_id,
        action=_ACTIONS.get(message.action),
        outcome=_OUTCOMES.get(message.outcome),
        occurred_at=_optional_instant(message, "occurred_time", f"events[{index}]."),
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
        event_type=_TYPES.get(message.type),
        subtype=_SUBTYPES.get(message.subtype),
        agents=tuple(
            Agent(
                type=_AGENT_TYPES.get(agent.type),
                who=agent.who,
                role=agent.role,
                facility_code=agent.facility_code,
                client_application=agent.client_application,
                network_address=agent.network_address,
                requestor=agent.requestor,
            )
            for agent in message.agents
        ),
        entities=tuple(
            Entity(
                role=_ENTITY_ROLES.get(entity.role),
                patient_id=entity.patient_id,
                resource_type=entity.resource_type,
                resource_id=entity.resource_id,
            )
            for entity in message.entities
        ),
        retention_class=_RETENTION.get(message.retention_class, RetentionClass.STANDARD),
        break_glass_reason=message.break_glass_reason,
        emergency_access_id=message.emergency_access_id,
        previous_hash=message.previous_hash,
        hash=message.hash,
    )


def event_message(event: AuditEvent) -> audit_pb2.AuditEvent:
    message = audit_pb2.AuditEvent(
        event_id=event.event_id,
        action=_ACTIONS_TO_PROTO[event.action] if event.action else audit_pb2.AUDIT_ACTION_UNSPECIFIED,
        outcome=_OUTCOMES_TO_PROTO[event.outcome] if event.outcome else audit_pb2.AUDIT_OUTCOME_UNSPECIFIED,
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
        type=_TYPES_TO_PROTO[event.event_type]
        if event.event_type
        else audit_pb2.AUDIT_EVENT_TYPE_UNSPECIFIED,
        subtype=_SUBTYPES_TO_PROTO[event.subtype]
        if event.subtype
        else audit_pb2.AUDIT_EVENT_SUBTYPE_UNSPECIFIED,
        agents=[
            audit_pb2.AuditAgent(
                type=_AGENT_TYPES_TO_PROTO[agent.type]
                if agent.type
                else audit_pb2.AUDIT_AGENT_TYPE_UNSPECIFIED,
                who=agent.who,
                role=agent.role,
                facility_code=agent.facility_code,
                client_application=agent.client_application,
                network_address=agent.network_address,
                requestor=agent.requestor,
            )
            for agent in event.agents
        ],
        entities=[
            audit_pb2.AuditEntity(
                role=_ENTITY_ROLES_TO_PROTO[entity.role]
                if entity.role
                else audit_pb2.AUDIT_ENTITY_ROLE_UNSPECIFIED,
                patient_id=entity.patient_id,
                resource_type=entity.resource_type,
                resource_id=entity.resource_id,
            )
            for entity in event.entities
        ],
        retention_class=_RETENTION_TO_PROTO[event.retention_class],
        break_glass_reason=event.break_glass_reason,
        emergency_access_id=event.emergency_access_id,
        previous_hash=event.previous_hash,
        hash=event.hash,
    )
    if event.occurred_at is not None:
        message.occurred_time.FromDatetime(event.occurred_at)
    if event.recorded_at is not None:
        message.record_time.FromDatetime(event.recorded_at)
    return message


def event_filter(request: audit_pb2.QueryEventsRequest) -> EventFilter:
    if request.subtype and request.subtype not in _SUBTYPES:
        raise InvalidArgumentError([FieldViolation("subtype", "not a known subtype")])
    return EventFilter(
        patient_id=request.patient_id,
        actor_id=request.actor_id,
        facility_code=request.facility_code,
        subtype=_SUBTYPES.get(request.subtype),
        start=_optional_instant(request, "start_time"),
        end=_optional_instant(request, "end_time"),
    )


def report_period(
    request: audit_pb2.GetPatientAccessReportRequest,
) -> tuple[datetime | None, datetime | None]:
    return _optional_instant(request, "start_time"), _optional_instant(request, "end_time")


def patient_access(event: AuditEvent) -> audit_pb2.PatientAccess:
    access = audit_pb2.PatientAccess(
        accessor_role=accessor_role(event),
        facility_code=event.actor_facility_code,
        subtype=_SUBTYPES_TO_PROTO[event.subtype]
        if event.subtype
        else audit_pb2.AUDIT_EVENT_SUBTYPE_UNSPECIFIED,
        resource_type=event.resource_type,
        purpose_of_use=event.purpose_of_use,
        outcome=_OUTCOMES_TO_PROTO[event.outcome] if event.outcome else audit_pb2.AUDIT_OUTCOME_UNSPECIFIED,
        break_glass_reason=event.break_glass_reason,
        resource_id=event.resource_id,
        emergency_access_id=event.emergency_access_id,
    )
    if event.occurred_at is not None:
        access.occurred_time.FromDatetime(event.occurred_at)
    return access


def access_summary(summary: AccessSummary) -> audit_pb2.PatientAccessSummary:
    return audit_pb2.PatientAccessSummary(
        accessor_role=summary.accessor_role,
        facility_code=summary.facility_code,
        resource_type=summary.resource_type,
        access_count=summary.access_count,
        first_time=_stamp(summary.first_at),
        last_time=_stamp(summary.last_at),
    )


def checkpoint_message(checkpoint: Checkpoint) -> audit_pb2.Checkpoint:
    return audit_pb2.Checkpoint(
        index=checkpoint.index,
        first_sequence=checkpoint.first_sequence,
        last_sequence=checkpoint.last_sequence,
        merkle_root=checkpoint.merkle_root,
        chain_head_hash=checkpoint.chain_head_hash,
        created_time=_stamp(checkpoint.created_at),
        key_id=checkpoint.key_id,
        signature=checkpoint.signature,
        signed_payload=canonical_bytes(checkpoint_record(checkpoint)),
    )


def proof_message(proof: InclusionProof) -> audit_pb2.GetInclusionProofResponse:
    return audit_pb2.GetInclusionProofResponse(
        event=event_message(proof.event),
        checkpoint=checkpoint_message(proof.checkpoint),
        leaf_index=proof.leaf_index,
        tree_size=proof.tree_size,
        audit_path=proof.audit_path,
    )


def public_key_message(signer: CheckpointSigner) -> audit_pb2.GetPublicKeyResponse:
    return audit_pb2.GetPublicKeyResponse(
        key_id=signer.key_id,
        algorithm=ALGORITHM,
        public_key=signer.public_key_raw,
        public_key_pem=signer.public_key_pem,
    )


_FINDING_KINDS = {
    FindingKind.MISSING_EVENTS: audit_pb2.INTEGRITY_FINDING_KIND_MISSING_EVENTS,
    FindingKind.ALTERED_EVENT: audit_pb2.INTEGRITY_FINDING_KIND_ALTERED_EVENT,
    FindingKind.CHECKPOINT_MISMATCH: audit_pb2.INTEGRITY_FINDING_KIND_CHECKPOINT_MISMATCH,
    FindingKind.BAD_SIGNATURE: audit_pb2.INTEGRITY_FINDING_KIND_BAD_SIGNATURE,
}


def integrity_message(report: IntegrityReport) -> audit_pb2.VerifyIntegrityResponse:
    finding = report.finding
    response = audit_pb2.VerifyIntegrityResponse(
        intact=finding is None,
        checked_events=report.checked_events,
        checked_checkpoints=report.checked_checkpoints,
    )
    if finding is not None:
        response.first_bad_sequence = finding.sequence
        response.problem = finding.problem
        response.finding_kind = _FINDING_KINDS[finding.kind]
        if finding.missing_stretch is not None:
            response.missing_from_sequence, response.missing_through_sequence = finding.missing_stretch
    return response


# --- breach workflow -----------------------------------------------------------------------------
_CATEGORIES = {
    breach_pb2.BREACH_CATEGORY_CONFIDENTIALITY: breach.Category.CONFIDENTIALITY,
    breach_pb2.BREACH_CATEGORY_INTEGRITY: breach.Category.INTEGRITY,
    breach_pb2.BREACH_CATEGORY_AVAILABILITY: breach.Category.AVAILABILITY,
}
_CATEGORIES_TO_PROTO = {value: key for key, value in _CATEGORIES.items()}
_BREACH_STATUSES = {
    breach_pb2.BREACH_STATUS_OPEN: breach.Status.OPEN,
    breach_pb2.BREACH_STATUS_NOTIFIED: breach.Status.NOTIFIED,
    breach_pb2.BREACH_STATUS_CLOSED: breach.Status.CLOSED,
}
_BREACH_STATUSES_TO_PROTO = {value: key for key, value in _BREACH_STATUSES.items()}
_DEADLINE_STATES_TO_PROTO = {
    breach.DeadlineState.PENDING: breach_pb2.BREACH_DEADLINE_STATE_PENDING,
    breach.DeadlineState.DUE_SOON: breach_pb2.BREACH_DEADLINE_STATE_DUE_SOON,
    breach.DeadlineState.OVERDUE: breach_pb2.BREACH_DEADLINE_STATE_OVERDUE,
    breach.DeadlineState.MET: breach_pb2.BREACH_DEADLINE_STATE_MET,
    breach.DeadlineState.MISSED: breach_pb2.BREACH_DEADLINE_STATE_MISSED,
    breach.DeadlineState.NOT_NOTIFIED: breach_pb2.BREACH_DEADLINE_STATE_NOT_NOTIFIED,
}


def incident_draft(request: breach_pb2.RecordIncidentRequest) -> breach.Incident:
    scope = request.scope
    return breach.Incident(
        incident_id="",
        category=_CATEGORIES.get(request.category),
        description=request.description,
        occurred_at=_optional_instant(request, "occurred_time"),
        discovered_at=_optional_instant(request, "discovered_time"),
        reported_by=request.reported_by,
        scope=breach.Scope(
            actor_id=scope.actor_id,
            facility_code=scope.facility_code,
            start=_optional_instant(scope, "start_time", "scope."),
            end=_optional_instant(scope, "end_time", "scope."),
        ),
        contact_point=request.contact_point,
        likely_consequences=request.likely_consequences,
        measures_taken=request.measures_taken,
    )


def status_request(request: breach_pb2.ChangeIncidentStatusRequest) -> breach.StatusRequest:
    return breach.StatusRequest(
        status=_BREACH_STATUSES.get(request.status),
        notified_at=_optional_instant(request, "notified_time"),
        authority_reference=request.authority_reference,
        delay_reason=request.delay_reason,
        note=request.note,
    )


def breach_status_filter(request: breach_pb2.ListIncidentsRequest) -> breach.Status | None:
    if request.status and request.status not in _BREACH_STATUSES:
        raise InvalidArgumentError([FieldViolation("status", "not a known status")])
    return _BREACH_STATUSES.get(request.status)


def _set_time(message: object, name: str, moment: datetime | None) -> None:
    if moment is not None:
        getattr(message, name).FromDatetime(moment)


def incident_message(state: breach.IncidentState, now: datetime) -> breach_pb2.BreachIncident:
    incident = state.incident
    assert incident.category is not None
    message = breach_pb2.BreachIncident(
        incident_id=incident.incident_id,
        category=_CATEGORIES_TO_PROTO[incident.category],
        description=incident.description,
        reported_by=incident.reported_by,
        recorded_by=incident.recorded_by,
        scope=breach_pb2.BreachScope(
            actor_id=incident.scope.actor_id, facility_code=incident.scope.facility_code
        ),
        contact_point=incident.contact_point,
        likely_consequences=incident.likely_consequences,
        measures_taken=incident.measures_taken,
        status=_BREACH_STATUSES_TO_PROTO[state.status],
        deadline_state=_DEADLINE_STATES_TO_PROTO[state.deadline_state(now)],
    )
    _set_time(message, "occurred_time", incident.occurred_at)
    _set_time(message, "discovered_time", incident.discovered_at)
    _set_time(message, "recorded_time", incident.recorded_at)
    _set_time(message.scope, "start_time", incident.scope.start)
    _set_time(message.scope, "end_time", incident.scope.end)
    _set_time(message, "notification_deadline", incident.deadline)
    notification = state.notification
    _set_time(message, "notified_time", notification.notified_at if notification else None)
    for change in state.history:
        entry = message.history.add(
            status=_BREACH_STATUSES_TO_PROTO[change.status],
            changed_by=change.changed_by,
            authority_reference=change.authority_reference,
            delay_reason=change.delay_reason,
            note=change.note,
        )
        _set_time(entry, "changed_time", change.changed_at)
        _set_time(entry, "notified_time", change.notified_at)
    return message


def affected_patient_message(patient: breach.AffectedPatient) -> breach_pb2.AffectedPatient:
    return breach_pb2.AffectedPatient(
        patient_id=patient.patient_id,
        first_access_time=_stamp(patient.first_at),
        last_access_time=_stamp(patient.last_at),
        access_kinds=[_SUBTYPES_TO_PROTO[kind] for kind in patient.access_kinds],
        access_count=patient.access_count,
        data_categories=list(patient.data_categories),
    )
