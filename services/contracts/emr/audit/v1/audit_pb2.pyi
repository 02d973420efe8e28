import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AuditAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIT_ACTION_UNSPECIFIED: _ClassVar[AuditAction]
    AUDIT_ACTION_CREATE: _ClassVar[AuditAction]
    AUDIT_ACTION_READ: _ClassVar[AuditAction]
    AUDIT_ACTION_UPDATE: _ClassVar[AuditAction]
    AUDIT_ACTION_SEARCH: _ClassVar[AuditAction]
    AUDIT_ACTION_EXPORT: _ClassVar[AuditAction]
    AUDIT_ACTION_DELETE: _ClassVar[AuditAction]
    AUDIT_ACTION_EXECUTE: _ClassVar[AuditAction]

class AuditEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIT_EVENT_TYPE_UNSPECIFIED: _ClassVar[AuditEventType]
    AUDIT_EVENT_TYPE_REST: _ClassVar[AuditEventType]
    AUDIT_EVENT_TYPE_EXPORT: _ClassVar[AuditEventType]
    AUDIT_EVENT_TYPE_USER_AUTHENTICATION: _ClassVar[AuditEventType]
    AUDIT_EVENT_TYPE_EMERGENCY_OVERRIDE: _ClassVar[AuditEventType]

class AuditEventSubtype(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIT_EVENT_SUBTYPE_UNSPECIFIED: _ClassVar[AuditEventSubtype]
    AUDIT_EVENT_SUBTYPE_READ: _ClassVar[AuditEventSubtype]
    AUDIT_EVENT_SUBTYPE_SEARCH: _ClassVar[AuditEventSubtype]
    AUDIT_EVENT_SUBTYPE_CREATE: _ClassVar[AuditEventSubtype]
    AUDIT_EVENT_SUBTYPE_UPDATE: _ClassVar[AuditEventSubtype]
    AUDIT_EVENT_SUBTYPE_MERGE: _ClassVar[AuditEventSubtype]
    AUDIT_EVENT_SUBTYPE_EXPORT: _ClassVar[AuditEventSubtype]
    AUDIT_EVENT_SUBTYPE_LOGIN: _ClassVar[AuditEventSubtype]
    AUDIT_EVENT_SUBTYPE_BREAK_GLASS: _ClassVar[AuditEventSubtype]
    AUDIT_EVENT_SUBTYPE_SHARING_GRANT: _ClassVar[AuditEventSubtype]
    AUDIT_EVENT_SUBTYPE_SHARING_REVOCATION: _ClassVar[AuditEventSubtype]
    AUDIT_EVENT_SUBTYPE_REFERRAL: _ClassVar[AuditEventSubtype]

class AuditAgentType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIT_AGENT_TYPE_UNSPECIFIED: _ClassVar[AuditAgentType]
    AUDIT_AGENT_TYPE_USER: _ClassVar[AuditAgentType]
    AUDIT_AGENT_TYPE_APPLICATION: _ClassVar[AuditAgentType]

class AuditEntityRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIT_ENTITY_ROLE_UNSPECIFIED: _ClassVar[AuditEntityRole]
    AUDIT_ENTITY_ROLE_PATIENT: _ClassVar[AuditEntityRole]
    AUDIT_ENTITY_ROLE_RESOURCE: _ClassVar[AuditEntityRole]

class AuditRetentionClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIT_RETENTION_CLASS_UNSPECIFIED: _ClassVar[AuditRetentionClass]
    AUDIT_RETENTION_CLASS_STANDARD: _ClassVar[AuditRetentionClass]
    AUDIT_RETENTION_CLASS_EXTENDED_15_YEARS: _ClassVar[AuditRetentionClass]
    AUDIT_RETENTION_CLASS_EXTENDED_20_YEARS: _ClassVar[AuditRetentionClass]
    AUDIT_RETENTION_CLASS_EXTENDED_30_YEARS: _ClassVar[AuditRetentionClass]
    AUDIT_RETENTION_CLASS_PERMANENT: _ClassVar[AuditRetentionClass]

class AuditOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIT_OUTCOME_UNSPECIFIED: _ClassVar[AuditOutcome]
    AUDIT_OUTCOME_SUCCESS: _ClassVar[AuditOutcome]
    AUDIT_OUTCOME_CLIENT_FAILURE: _ClassVar[AuditOutcome]
    AUDIT_OUTCOME_SERVER_FAILURE: _ClassVar[AuditOutcome]

class IntegrityFindingKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTEGRITY_FINDING_KIND_UNSPECIFIED: _ClassVar[IntegrityFindingKind]
    INTEGRITY_FINDING_KIND_MISSING_EVENTS: _ClassVar[IntegrityFindingKind]
    INTEGRITY_FINDING_KIND_ALTERED_EVENT: _ClassVar[IntegrityFindingKind]
    INTEGRITY_FINDING_KIND_CHECKPOINT_MISMATCH: _ClassVar[IntegrityFindingKind]
    INTEGRITY_FINDING_KIND_BAD_SIGNATURE: _ClassVar[IntegrityFindingKind]
AUDIT_ACTION_UNSPECIFIED: AuditAction
AUDIT_ACTION_CREATE: AuditAction
AUDIT_ACTION_READ: AuditAction
AUDIT_ACTION_UPDATE: AuditAction
AUDIT_ACTION_SEARCH: AuditAction
AUDIT_ACTION_EXPORT: AuditAction
AUDIT_ACTION_DELETE: AuditAction
AUDIT_ACTION_EXECUTE: AuditAction
AUDIT_EVENT_TYPE_UNSPECIFIED: AuditEventType
AUDIT_EVENT_TYPE_REST: AuditEventType
AUDIT_EVENT_TYPE_EXPORT: AuditEventType
AUDIT_EVENT_TYPE_USER_AUTHENTICATION: AuditEventType
AUDIT_EVENT_TYPE_EMERGENCY_OVERRIDE: AuditEventType
AUDIT_EVENT_SUBTYPE_UNSPECIFIED: AuditEventSubtype
AUDIT_EVENT_SUBTYPE_READ: AuditEventSubtype
AUDIT_EVENT_SUBTYPE_SEARCH: AuditEventSubtype
AUDIT_EVENT_SUBTYPE_CREATE: AuditEventSubtype
AUDIT_EVENT_SUBTYPE_UPDATE: AuditEventSubtype
AUDIT_EVENT_SUBTYPE_MERGE: AuditEventSubtype
AUDIT_EVENT_SUBTYPE_EXPORT: AuditEventSubtype
AUDIT_EVENT_SUBTYPE_LOGIN: AuditEventSubtype
AUDIT_EVENT_SUBTYPE_BREAK_GLASS: AuditEventSubtype
AUDIT_EVENT_SUBTYPE_SHARING_GRANT: AuditEventSubtype
AUDIT_EVENT_SUBTYPE_SHARING_REVOCATION: AuditEventSubtype
AUDIT_EVENT_SUBTYPE_REFERRAL: AuditEventSubtype
AUDIT_AGENT_TYPE_UNSPECIFIED: AuditAgentType
AUDIT_AGENT_TYPE_USER: AuditAgentType
AUDIT_AGENT_TYPE_APPLICATION: AuditAgentType
AUDIT_ENTITY_ROLE_UNSPECIFIED: AuditEntityRole
AUDIT_ENTITY_ROLE_PATIENT: AuditEntityRole
AUDIT_ENTITY_ROLE_RESOURCE: AuditEntityRole
AUDIT_RETENTION_CLASS_UNSPECIFIED: AuditRetentionClass
AUDIT_RETENTION_CLASS_STANDARD: AuditRetentionClass
AUDIT_RETENTION_CLASS_EXTENDED_15_YEARS: AuditRetentionClass
AUDIT_RETENTION_CLASS_EXTENDED_20_YEARS: AuditRetentionClass
AUDIT_RETENTION_CLASS_EXTENDED_30_YEARS: AuditRetentionClass
AUDIT_RETENTION_CLASS_PERMANENT: AuditRetentionClass
AUDIT_OUTCOME_UNSPECIFIED: AuditOutcome
AUDIT_OUTCOME_SUCCESS: AuditOutcome
AUDIT_OUTCOME_CLIENT_FAILURE: AuditOutcome
AUDIT_OUTCOME_SERVER_FAILURE: AuditOutcome
INTEGRITY_FINDING_KIND_UNSPECIFIED: IntegrityFindingKind
INTEGRITY_FINDING_KIND_MISSING_EVENTS: IntegrityFindingKind
INTEGRITY_FINDING_KIND_ALTERED_EVENT: IntegrityFindingKind
INTEGRITY_FINDING_KIND_CHECKPOINT_MISMATCH: IntegrityFindingKind
INTEGRITY_FINDING_KIND_BAD_SIGNATURE: IntegrityFindingKind

class AuditAgent(_message.Message):
    __slots__ = ("type", "who", "role", "facility_code", "client_application", "network_address", "requestor")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    WHO_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_APPLICATION_FIELD_NUMBER: _ClassVar[int]
    NETWORK_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REQUESTOR_FIELD_NUMBER: _ClassVar[int]
    type: AuditAgentType
    who: str
    role: str
    facility_code: str
    client_application: str
    network_address: str
    requestor: bool
    def __init__(self, type: _Optional[_Union[AuditAgentType, str]] = ..., who: _Optional[str] = ..., role: _Optional[str] = ..., facility_code: _Optional[str] = ..., client_application: _Optional[str] = ..., network_address: _Optional[str] = ..., requestor: _Optional[bool] = ...) -> None: ...

class AuditEntity(_message.Message):
    __slots__ = ("role", "patient_id", "resource_type", "resource_id")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    role: AuditEntityRole
    patient_id: str
    resource_type: str
    resource_id: str
    def __init__(self, role: _Optional[_Union[AuditEntityRole, str]] = ..., patient_id: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_id: _Optional[str] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("event_id", "action", "outcome", "occurred_time", "actor_id", "actor_facility_code", "source_service", "operation", "patient_id", "resource_type", "resource_id", "purpose_of_use", "request_id", "trace_id", "sequence", "record_time", "type", "subtype", "agents", "entities", "retention_class", "previous_hash", "hash", "break_glass_reason", "emergency_access_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_TIME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_OF_USE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    RECORD_TIME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SUBTYPE_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    RETENTION_CLASS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    BREAK_GLASS_REASON_FIELD_NUMBER: _ClassVar[int]
    EMERGENCY_ACCESS_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    action: AuditAction
    outcome: AuditOutcome
    occurred_time: _timestamp_pb2.Timestamp
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
    sequence: int
    record_time: _timestamp_pb2.Timestamp
    type: AuditEventType
    subtype: AuditEventSubtype
    agents: _containers.RepeatedCompositeFieldContainer[AuditAgent]
    entities: _containers.RepeatedCompositeFieldContainer[AuditEntity]
    retention_class: AuditRetentionClass
    previous_hash: bytes
    hash: bytes
    break_glass_reason: str
    emergency_access_id: str
    def __init__(self, event_id: _Optional[str] = ..., action: _Optional[_Union[AuditAction, str]] = ..., outcome: _Optional[_Union[AuditOutcome, str]] = ..., occurred_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor_id: _Optional[str] = ..., actor_facility_code: _Optional[str] = ..., source_service: _Optional[str] = ..., operation: _Optional[str] = ..., patient_id: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_id: _Optional[str] = ..., purpose_of_use: _Optional[str] = ..., request_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., sequence: _Optional[int] = ..., record_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., type: _Optional[_Union[AuditEventType, str]] = ..., subtype: _Optional[_Union[AuditEventSubtype, str]] = ..., agents: _Optional[_Iterable[_Union[AuditAgent, _Mapping]]] = ..., entities: _Optional[_Iterable[_Union[AuditEntity, _Mapping]]] = ..., retention_class: _Optional[_Union[AuditRetentionClass, str]] = ..., previous_hash: _Optional[bytes] = ..., hash: _Optional[bytes] = ..., break_glass_reason: _Optional[str] = ..., emergency_access_id: _Optional[str] = ...) -> None: ...

class AppendEventsRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ...) -> None: ...

class AppendEventsResponse(_message.Message):
    __slots__ = ("sequences",)
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, sequences: _Optional[_Iterable[int]] = ...) -> None: ...

class QueryEventsRequest(_message.Message):
    __slots__ = ("patient_id", "page_size", "page_token", "actor_id", "facility_code", "subtype", "start_time", "end_time")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    SUBTYPE_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    page_size: int
    page_token: str
    actor_id: str
    facility_code: str
    subtype: AuditEventSubtype
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, patient_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., actor_id: _Optional[str] = ..., facility_code: _Optional[str] = ..., subtype: _Optional[_Union[AuditEventSubtype, str]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class QueryEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetPatientAccessReportRequest(_message.Message):
    __slots__ = ("patient_id", "start_time", "end_time", "page_size", "page_token")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, patient_id: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class PatientAccess(_message.Message):
    __slots__ = ("occurred_time", "accessor_role", "facility_code", "subtype", "resource_type", "purpose_of_use", "outcome", "break_glass_reason", "resource_id", "emergency_access_id")
    OCCURRED_TIME_FIELD_NUMBER: _ClassVar[int]
    ACCESSOR_ROLE_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    SUBTYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_OF_USE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    BREAK_GLASS_REASON_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    EMERGENCY_ACCESS_ID_FIELD_NUMBER: _ClassVar[int]
    occurred_time: _timestamp_pb2.Timestamp
    accessor_role: str
    facility_code: str
    subtype: AuditEventSubtype
    resource_type: str
    purpose_of_use: str
    outcome: AuditOutcome
    break_glass_reason: str
    resource_id: str
    emergency_access_id: str
    def __init__(self, occurred_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., accessor_role: _Optional[str] = ..., facility_code: _Optional[str] = ..., subtype: _Optional[_Union[AuditEventSubtype, str]] = ..., resource_type: _Optional[str] = ..., purpose_of_use: _Optional[str] = ..., outcome: _Optional[_Union[AuditOutcome, str]] = ..., break_glass_reason: _Optional[str] = ..., resource_id: _Optional[str] = ..., emergency_access_id: _Optional[str] = ...) -> None: ...

class PatientAccessSummary(_message.Message):
    __slots__ = ("accessor_role", "facility_code", "resource_type", "access_count", "first_time", "last_time")
    ACCESSOR_ROLE_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    ACCESS_COUNT_FIELD_NUMBER: _ClassVar[int]
    FIRST_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_TIME_FIELD_NUMBER: _ClassVar[int]
    accessor_role: str
    facility_code: str
    resource_type: str
    access_count: int
    first_time: _timestamp_pb2.Timestamp
    last_time: _timestamp_pb2.Timestamp
    def __init__(self, accessor_role: _Optional[str] = ..., facility_code: _Optional[str] = ..., resource_type: _Optional[str] = ..., access_count: _Optional[int] = ..., first_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetPatientAccessReportResponse(_message.Message):
    __slots__ = ("accesses", "summaries", "next_page_token")
    ACCESSES_FIELD_NUMBER: _ClassVar[int]
    SUMMARIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    accesses: _containers.RepeatedCompositeFieldContainer[PatientAccess]
    summaries: _containers.RepeatedCompositeFieldContainer[PatientAccessSummary]
    next_page_token: str
    def __init__(self, accesses: _Optional[_Iterable[_Union[PatientAccess, _Mapping]]] = ..., summaries: _Optional[_Iterable[_Union[PatientAccessSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("index", "first_sequence", "last_sequence", "merkle_root", "chain_head_hash", "created_time", "key_id", "signature", "signed_payload")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MERKLE_ROOT_FIELD_NUMBER: _ClassVar[int]
    CHAIN_HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    CREATED_TIME_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNED_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    index: int
    first_sequence: int
    last_sequence: int
    merkle_root: bytes
    chain_head_hash: bytes
    created_time: _timestamp_pb2.Timestamp
    key_id: str
    signature: bytes
    signed_payload: bytes
    def __init__(self, index: _Optional[int] = ..., first_sequence: _Optional[int] = ..., last_sequence: _Optional[int] = ..., merkle_root: _Optional[bytes] = ..., chain_head_hash: _Optional[bytes] = ..., created_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., key_id: _Optional[str] = ..., signature: _Optional[bytes] = ..., signed_payload: _Optional[bytes] = ...) -> None: ...

class GetCheckpointRequest(_message.Message):
    __slots__ = ("index",)
    INDEX_FIELD_NUMBER: _ClassVar[int]
    index: int
    def __init__(self, index: _Optional[int] = ...) -> None: ...

class GetCheckpointResponse(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: Checkpoint
    def __init__(self, checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ...) -> None: ...

class GetPublicKeyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetPublicKeyResponse(_message.Message):
    __slots__ = ("key_id", "algorithm", "public_key", "public_key_pem")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    algorithm: str
    public_key: bytes
    public_key_pem: str
    def __init__(self, key_id: _Optional[str] = ..., algorithm: _Optional[str] = ..., public_key: _Optional[bytes] = ..., public_key_pem: _Optional[str] = ...) -> None: ...

class GetInclusionProofRequest(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class GetInclusionProofResponse(_message.Message):
    __slots__ = ("event", "checkpoint", "leaf_index", "tree_size", "audit_path")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    LEAF_INDEX_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    AUDIT_PATH_FIELD_NUMBER: _ClassVar[int]
    event: AuditEvent
    checkpoint: Checkpoint
    leaf_index: int
    tree_size: int
    audit_path: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, event: _Optional[_Union[AuditEvent, _Mapping]] = ..., checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ..., leaf_index: _Optional[int] = ..., tree_size: _Optional[int] = ..., audit_path: _Optional[_Iterable[bytes]] = ...) -> None: ...

class VerifyIntegrityRequest(_message.Message):
    __slots__ = ("from_sequence", "to_sequence")
    FROM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TO_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    from_sequence: int
    to_sequence: int
    def __init__(self, from_sequence: _Optional[int] = ..., to_sequence: _Optional[int] = ...) -> None: ...

class VerifyIntegrityResponse(_message.Message):
    __slots__ = ("intact", "first_bad_sequence", "problem", "checked_events", "checked_checkpoints", "finding_kind", "missing_from_sequence", "missing_through_sequence")
    INTACT_FIELD_NUMBER: _ClassVar[int]
    FIRST_BAD_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    CHECKED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    CHECKED_CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    FINDING_KIND_FIELD_NUMBER: _ClassVar[int]
    MISSING_FROM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MISSING_THROUGH_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    intact: bool
    first_bad_sequence: int
    problem: str
    checked_events: int
    checked_checkpoints: int
    finding_kind: IntegrityFindingKind
    missing_from_sequence: int
    missing_through_sequence: int
    def __init__(self, intact: _Optional[bool] = ..., first_bad_sequence: _Optional[int] = ..., problem: _Optional[str] = ..., checked_events: _Optional[int] = ..., checked_checkpoints: _Optional[int] = ..., finding_kind: _Optional[_Union[IntegrityFindingKind, str]] = ..., missing_from_sequence: _Optional[int] = ..., missing_through_sequence: _Optional[int] = ...) -> None: ...

class ExportEventsRequest(_message.Message):
    __slots__ = ("from_sequence", "to_sequence")
    FROM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TO_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    from_sequence: int
    to_sequence: int
    def __init__(self, from_sequence: _Optional[int] = ..., to_sequence: _Optional[int] = ...) -> None: ...

class ExportEventsResponse(_message.Message):
    __slots__ = ("lines",)
    LINES_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, lines: _Optional[_Iterable[str]] = ...) -> None: ...
