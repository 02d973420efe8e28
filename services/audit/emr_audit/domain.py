"""Audit domain: what an event is (IHE BALP shaped), which events are acceptable, and how events
are chained. Pure; no I/O."""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from emr_runtime.audit import AUDITED_ID
from emr_runtime.errors import DomainError, Violations

MAX_EVENTS_PER_APPEND = 500
MAX_AGENTS = 8
MAX_ENTITIES = 16
GENESIS_HASH = bytes(32)
# Codes and roles: short tokens, never free text (free text could carry names or clinical values).
_CODE = re.compile(r"[0-9A-Za-z._:/ \[\]-]{0,64}")


class Action(enum.Enum):
    CREATE = "create"
    READ = "read"
    UPDATE = "update"
    SEARCH = "search"
    EXPORT = "export"
    DELETE = "delete"
    EXECUTE = "execute"


class Outcome(enum.Enum):
    SUCCESS = "success"
    CLIENT_FAILURE = "client_failure"
    SERVER_FAILURE = "server_failure"


class EventType(enum.Enum):
    REST = "rest"
    EXPORT = "export"
    USER_AUTHENTICATION = "user-authentication"
    EMERGENCY_OVERRIDE = "emergency-override"


class Subtype(enum.Enum):
    READ = "read"
    SEARCH = "search"
    CREATE = "create"
    UPDATE = "update"
    MERGE = "merge"
    EXPORT = "export"
    LOGIN = "login"
    BREAK_GLASS = "break-glass"
    SHARING_GRANT = "sharing-grant"
    SHARING_REVOCATION = "sharing-revocation"
    REFERRAL = "referral"


class AgentType(enum.Enum):
    USER = "user"
    APPLICATION = "application"


class EntityRole(enum.Enum):
    PATIENT = "patient"
    RESOURCE = "resource"


class RetentionClass(enum.Enum):
    """The least time an event is kept, in the classes of Circular 33/2025/TT-BYT (see
    emr.audit.v1.AuditRetentionClass). The stored values are part of each event's hash: never
    rename one."""

    STANDARD = "standard-10y"
    # TT 33/2025 has no 15-year class: new events never get it (converters store EXTENDED_20_YEARS);
    # events stored with it earlier keep it, and are kept 20 years.
    EXTENDED_15_YEARS = "extended-15y"
    EXTENDED_20_YEARS = "extended-20y"
    EXTENDED_30_YEARS = "extended-30y"
    PERMANENT = "permanent"

    @property
    def years(self) -> int | None:
        """The least years an event of this class is kept; None: permanently."""
        return _RETENTION_YEARS[self]


_RETENTION_YEARS: dict[RetentionClass, int | None] = {
    RetentionClass.STANDARD: 10,
    RetentionClass.EXTENDED_15_YEARS: 20,
    RetentionClass.EXTENDED_20_YEARS: 20,
    RetentionClass.EXTENDED_30_YEARS: 30,
    RetentionClass.PERMANENT: None,
}


_SUBTYPE_OF_ACTION = {
    Action.CREATE: Subtype.CREATE,
    Action.READ: Subtype.READ,
    Action.UPDATE: Subtype.UPDATE,
    Action.SEARCH: Subtype.SEARCH,
    Action.EXPORT: Subtype.EXPORT,
}
_TYPE_OF_SUBTYPE = {
    Subtype.EXPORT: EventType.EXPORT,
    Subtype.LOGIN: EventType.USER_AUTHENTICATION,
    Subtype.BREAK_GLASS: EventType.EMERGENCY_OVERRIDE,
}


@dataclass(frozen=True)
class Agent:
    """A participant (FHIR AuditEvent.agent). ``type`` is None for a value this service does not know."""

    type: AgentType | None
    who: str
    role: str = ""
    facility_code: str = ""
    client_application: str = ""
    network_address: str = ""
    requestor: bool = False


@dataclass(frozen=True)
class Entity:
    """Something touched (FHIR AuditEvent.entity), by id only."""

    role: EntityRole | None
    patient_id: str = ""
    resource_type: str = ""
    resource_id: str = ""


@dataclass(frozen=True)
class AuditEvent:
    """One access to patient data: ids and codes only, never names or clinical values.

    ``action`` / ``outcome`` are None when the sender used a value this service does not know;
    ``subtype`` / ``event_type`` are None when the sender left them to be derived.
    ``sequence``, ``recorded_at``, ``previous_hash`` and ``hash`` are assigned by the log.
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
    event_type: EventType | None = None
    subtype: Subtype | None = None
    agents: tuple[Agent, ...] = ()
    entities: tuple[Entity, ...] = ()
    retention_class: RetentionClass = RetentionClass.STANDARD
    # The reason code of the break-the-glass declaration that covered the access (never free text).
    break_glass_reason: str = ""
    # That declaration (emr.identity.v1.EmergencyAccess).
    emergency_access_id: str = ""
    previous_hash: bytes = b""
    hash: bytes = b""

    def received(self, recorded_at: datetime) -> AuditEvent:
        """The event as the log stores it: receive time set, type and subtype derived when unset."""
        subtype = self.subtype or (_SUBTYPE_OF_ACTION.get(self.action) if self.action else None)
        event_type = self.event_type or (_TYPE_OF_SUBTYPE.get(subtype, EventType.REST) if subtype else None)
        return replace(self, recorded_at=recorded_at, subtype=subtype, event_type=event_type)

    @property
    def requestor(self) -> Agent | None:
        return next((agent for agent in self.agents if agent.requestor), None)


def validate_events(events: Sequence[AuditEvent]) -> None:
    """Rejects the whole batch if any event is malformed, naming each bad field."""
    violations = Violations()
    if not events:
        violations.add("events", "at least one event")
    if len(events) > MAX_EVENTS_PER_APPEND:
        violations.add("events", f"at most {MAX_EVENTS_PER_APPEND} events per call")
    for index, event in enumerate(events):
        path = f"events[{index}]"
        if not AUDITED_ID.fullmatch(event.event_id):
            violations.add(f"{path}.event_id", "required: 1 to 128 letters, digits or . _ : / -")
        if event.action is None:
            violations.add(f"{path}.action", "required: a known action")
        if event.outcome is None:
            violations.add(f"{path}.outcome", "required: a known outcome")
        if event.occurred_at is None:
            violations.add(f"{path}.occurred_time", "required")
        if not event.source_service:
            violations.add(f"{path}.source_service", "required")
        for name in (
            "actor_id",
            "patient_id",
            "resource_id",
            "request_id",
            "operation",
            "break_glass_reason",
            "emergency_access_id",
        ):
            if len(getattr(event, name)) > 256:
                violations.add(f"{path}.{name}", "at most 256 characters")
        if event.sequence:
            violations.add(f"{path}.sequence", "assigned by the audit service; leave it 0")
        if event.previous_hash or event.hash:
            violations.add(f"{path}.hash", "assigned by the audit service; leave it empty")
        _validate_agents(event.agents, path, violations)
        _validate_entities(event.entities, path, violations)
    violations.raise_if_any()


def _validate_agents(agents: Sequence[Agent], path: str, violations: Violations) -> None:
    if len(agents) > MAX_AGENTS:
        violations.add(f"{path}.agents", f"at most {MAX_AGENTS} agents")
    for index, agent in enumerate(agents):
        at = f"{path}.agents[{index}]"
        if agent.type is None:
            violations.add(f"{at}.type", "required: a known agent type")
        if len(agent.who) > 256 or not agent.who:
            violations.add(f"{at}.who", "required: at most 256 characters")
        for name in ("role", "facility_code", "client_application", "network_address"):
            if not _CODE.fullmatch(getattr(agent, name)):
                violations.add(f"{at}.{name}", "at most 64 letters, digits, spaces or . _ : / [ ] -")


def _validate_entities(entities: Sequence[Entity], path: str, violations: Violations) -> None:
    if len(entities) > MAX_ENTITIES:
        violations.add(f"{path}.entities", f"at most {MAX_ENTITIES} entities")
    for index, entity in enumerate(entities):
        at = f"{path}.entities[{index}]"
        if entity.role is None:
            violations.add(f"{at}.role", "required: a known entity role")
        for name in ("patient_id", "resource_id"):
            value = getattr(entity, name)
            if value and not AUDITED_ID.fullmatch(value):
                violations.add(f"{at}.{name}", "an id: 1 to 128 letters, digits or . _ : / -")
        if not _CODE.fullmatch(entity.resource_type):
            violations.add(f"{at}.resource_type", "a resource type name")


# --- chaining ------------------------------------------------------------------------------------


def _instant(moment: datetime | None) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds") if moment is not None else ""


def event_fields(event: AuditEvent) -> dict[str, Any]:
    """Every stored field of an event except its hashes, times as datetimes: what storage keeps."""
    assert event.action is not None and event.outcome is not None  # only valid events are chained
    return {
        "sequence": event.sequence,
        "event_id": event.event_id,
        "type": event.event_type.value if event.event_type else "",
        "subtype": event.subtype.value if event.subtype else "",
        "action": event.action.value,
        "outcome": event.outcome.value,
        "occurred_at": event.occurred_at,
        "recorded_at": event.recorded_at,
        "actor_id": event.actor_id,
        "actor_facility_code": event.actor_facility_code,
        "source_service": event.source_service,
        "operation": event.operation,
        "patient_id": event.patient_id,
        "resource_type": event.resource_type,
        "resource_id": event.resource_id,
        "purpose_of_use": event.purpose_of_use,
        "request_id": event.request_id,
        "trace_id": event.trace_id,
        "retention_class": event.retention_class.value,
        "agents": [
            {
                "type": agent.type.value if agent.type else "",
                "who": agent.who,
                "role": agent.role,
                "facility_code": agent.facility_code,
                "client_application": agent.client_application,
                "network_address": agent.network_address,
                "requestor": agent.requestor,
            }
            for agent in event.agents
        ],
        "entities": [
            {
                "role": entity.role.value if entity.role else "",
                "patient_id": entity.patient_id,
                "resource_type": entity.resource_type,
                "resource_id": entity.resource_id,
            }
            for entity in event.entities
        ],
        # Only when set: events stored before the field existed keep the hash they were chained with.
        **({"break_glass_reason": event.break_glass_reason} if event.break_glass_reason else {}),
        **({"emergency_access_id": event.emergency_access_id} if event.emergency_access_id else {}),
    }


def canonical_record(event: AuditEvent) -> dict[str, Any]:
    """The fields of ``event_fields`` as JSON values (times as ISO 8601, milliseconds, UTC).
    Exports carry it as is, so an offline verifier recomputes the hash from the export alone."""
    fields = event_fields(event)
    return {**fields, "occurred_at": _instant(event.occurred_at), "recorded_at": _instant(event.recorded_at)}


def canonical_bytes(record: dict[str, Any]) -> bytes:
    """The bytes that are hashed (and signed, for checkpoints): compact JSON, sorted keys, UTF-8."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(canonical: bytes, previous_hash: bytes) -> bytes:
    """hash = SHA-256(canonical event bytes || previous hash)."""
    return hashlib.sha256(canonical + previous_hash).digest()


def chain(events: Sequence[AuditEvent], first_sequence: int, previous_hash: bytes) -> list[AuditEvent]:
    """Numbers and links events that follow the event with hash ``previous_hash``."""
    linked: list[AuditEvent] = []
    for offset, event in enumerate(events):
        numbered = replace(event, sequence=first_sequence + offset, previous_hash=previous_hash)
        digest = chain_hash(canonical_bytes(canonical_record(numbered)), previous_hash)
        linked.append(replace(numbered, hash=digest))
        previous_hash = digest
    return linked


class Refusal(enum.Enum):
    """Why the log refused to link an event at a position (its ``_id`` or its event_id was taken)."""

    ALREADY_STORED = "already_stored"  # event_ids holds its sequence
    STORED_THERE = "stored_there"  # the position holds this very event (an answer that got lost)
    POSITION_TAKEN = "position_taken"  # another event holds the position: link after it
    UNINDEXED = "unindexed"  # the position is free, so the event_id was taken: stored past the hint


def refusal_of(event_id: str, indexed_sequence: int | None, holder_event_id: str | None) -> Refusal:
    """What a refusal means, from the event's entry in event_ids (None: none) and the event_id of
    the link holding the refused position (None: the position is free)."""
    if indexed_sequence is not None:
        return Refusal.ALREADY_STORED
    if holder_event_id is None:
        return Refusal.UNINDEXED
    return Refusal.STORED_THERE if holder_event_id == event_id else Refusal.POSITION_TAKEN


class FindingKind(enum.Enum):
    """What kind of problem a finding is, which decides who acts on it: missing events are first of
    all lost data (an operator restores them), the other kinds mean the log was changed."""

    MISSING_EVENTS = "missing_events"  # positions of the chain hold no event
    ALTERED_EVENT = "altered"  # content, hash, link or order of a stored event is not what was linked
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"  # stored hashes differ from what a checkpoint signed
    BAD_SIGNATURE = "bad_signature"  # a checkpoint is not signed by the log's key


@dataclass(frozen=True)
class Finding:
    """Where the log stops being trustworthy: the first bad sequence, what kind of problem it is and
    why. For missing events ``missing_through`` is the last missing sequence of the stretch that
    starts at ``sequence`` (0 for other kinds)."""

    sequence: int
    problem: str
    kind: FindingKind
    missing_through: int = 0

    @property
    def missing_stretch(self) -> tuple[int, int] | None:
        """(first, last) missing sequence, for missing events."""
        if self.kind is not FindingKind.MISSING_EVENTS:
            return None
        return self.sequence, self.missing_through


def missing_events(first: int, through: int, detail: str = "") -> Finding:
    """Events ``first``..``through`` are missing; ``detail`` says what was found instead."""
    stretch = f"event {first} is missing" if first == through else f"events {first}..{through} are missing"
    return Finding(first, f"{stretch}{detail}", FindingKind.MISSING_EVENTS, through)


def altered(sequence: int, problem: str) -> Finding:
    return Finding(sequence, problem, FindingKind.ALTERED_EVENT)


@dataclass
class ChainVerifier:
    """Checks events fed in sequence order: no gap, each hash matches its content, each event
    links to the one before. Used by the service and by the offline verifier alike."""

    expected_sequence: int = 1
    last_hash: bytes | None = None
    checked: int = 0
    finding: Finding | None = None

    def feed(self, sequence: int, canonical: bytes, previous_hash: bytes, stored_hash: bytes) -> bool:
        """Checks one event; returns False (and keeps the finding) at the first problem."""
        if self.finding is not None:
            return False
        if sequence > self.expected_sequence:
            # Everything between the last event checked and this one is absent: one stretch.
            self.finding = missing_events(
                self.expected_sequence, sequence - 1, f" (next stored is {sequence})"
            )
            return False
        if sequence < self.expected_sequence:
            self.finding = altered(
                self.expected_sequence,
                f"event {sequence} is out of order (expected {self.expected_sequence})",
            )
            return False
        if chain_hash(canonical, previous_hash) != stored_hash:
            self.finding = altered(sequence, "stored hash does not match the event's content")
            return False
        if sequence == 1 and previous_hash != GENESIS_HASH:
            self.finding = altered(sequence, "the first event does not start the chain")
            return False
        if self.last_hash is not None and previous_hash != self.last_hash:
            # This event is intact, so the one before was rewritten after this one was linked.
            self.finding = altered(sequence - 1, "event was rewritten: the next event links to another hash")
            return False
        self.last_hash = stored_hash
        self.expected_sequence = sequence + 1
        self.checked += 1
        return True

    def finish(self, last_expected: int | None, detail: str = "") -> Finding | None:
        """The finding, or a missing tail when events up to ``last_expected`` should exist."""
        if self.finding is None and last_expected is not None and self.expected_sequence <= last_expected:
            self.finding = missing_events(self.expected_sequence, last_expected, detail)
        return self.finding


def first_finding(findings: Iterable[Finding | None]) -> Finding | None:
    present = [finding for finding in findings if finding is not None]
    return min(present, key=lambda finding: finding.sequence) if present else None


# --- queries -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventFilter:
    """What QueryEvents selects; every field set must match."""

    patient_id: str = ""
    actor_id: str = ""
    facility_code: str = ""
    subtype: Subtype | None = None
    start: datetime | None = None
    end: datetime | None = None

    def validate(self) -> None:
        violations = Violations()
        if not (self.patient_id.strip() or self.actor_id or self.facility_code or self.start or self.end):
            violations.add("patient_id", "required unless actor_id, facility_code or a time range is set")
        if self.start and self.end and self.end <= self.start:
            violations.add("end_time", "must be after start_time")
        violations.raise_if_any()


@dataclass(frozen=True)
class AccessSummary:
    """Accesses of one kind of data by one role at one facility."""

    accessor_role: str
    facility_code: str
    resource_type: str
    access_count: int
    first_at: datetime
    last_at: datetime


SERVICE_ROLE = "service"


def accessor_role(event: AuditEvent) -> str:
    """The role a patient is told about: the requestor's declared role; platform services appear
    as "service"; never the person's id."""
    if event.actor_id.startswith("service:"):
        return SERVICE_ROLE
    requestor = event.requestor
    if requestor is not None and requestor.role:
        return requestor.role
    return "unspecified"


def summarize_accesses(events: Iterable[AuditEvent]) -> list[AccessSummary]:
    groups: dict[tuple[str, str, str], list[datetime]] = {}
    for event in events:
        if event.occurred_at is None:
            continue
        key = (accessor_role(event), event.actor_facility_code, event.resource_type)
        groups.setdefault(key, []).append(event.occurred_at)
    return [
        AccessSummary(role, facility, resource_type, len(times), min(times), max(times))
        for (role, facility, resource_type), times in sorted(groups.items())
    ]


# --- checkpoints ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A signed commitment to events first_sequence..last_sequence."""

    index: int
    first_sequence: int
    last_sequence: int
    merkle_root: bytes
    chain_head_hash: bytes
    created_at: datetime
    key_id: str
    signature: bytes = field(default=b"", repr=False)

    def covers(self, sequence: int) -> bool:
        return self.first_sequence <= sequence <= self.last_sequence


def checkpoint_record(checkpoint: Checkpoint) -> dict[str, Any]:
    """What is signed (and exported): every field but the signature."""
    return {
        "index": checkpoint.index,
        "first_sequence": checkpoint.first_sequence,
        "last_sequence": checkpoint.last_sequence,
        "merkle_root": checkpoint.merkle_root.hex(),
        "chain_head_hash": checkpoint.chain_head_hash.hex(),
        "created_at": _instant(checkpoint.created_at),
        "key_id": checkpoint.key_id,
    }


def checkpoint_due(
    last_sequence: int,
    checkpointed_up_to: int,
    seconds_since_last: float,
    every_events: int,
    every_seconds: float,
) -> bool:
    """A checkpoint is due after ``every_events`` new events, or ``every_seconds`` after the last one
    when there is anything new."""
    new = last_sequence - checkpointed_up_to
    return new >= every_events or (new > 0 and seconds_since_last >= every_seconds)


class NotCheckpointedError(DomainError):
    """The event exists but no checkpoint covers it yet (FAILED_PRECONDITION: retry after the next
    checkpoint)."""

    def __init__(self, sequence: int) -> None:
        super().__init__(f"event {sequence} is not covered by a checkpoint yet")
