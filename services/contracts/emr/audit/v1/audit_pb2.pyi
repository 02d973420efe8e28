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

class AuditOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIT_OUTCOME_UNSPECIFIED: _ClassVar[AuditOutcome]
    AUDIT_OUTCOME_SUCCESS: _ClassVar[AuditOutcome]
    AUDIT_OUTCOME_CLIENT_FAILURE: _ClassVar[AuditOutcome]
    AUDIT_OUTCOME_SERVER_FAILURE: _ClassVar[AuditOutcome]
AUDIT_ACTION_UNSPECIFIED: AuditAction
AUDIT_ACTION_CREATE: AuditAction
AUDIT_ACTION_READ: AuditAction
AUDIT_ACTION_UPDATE: AuditAction
AUDIT_ACTION_SEARCH: AuditAction
AUDIT_ACTION_EXPORT: AuditAction
AUDIT_OUTCOME_UNSPECIFIED: AuditOutcome
AUDIT_OUTCOME_SUCCESS: AuditOutcome
AUDIT_OUTCOME_CLIENT_FAILURE: AuditOutcome
AUDIT_OUTCOME_SERVER_FAILURE: AuditOutcome

class AuditEvent(_message.Message):
    __slots__ = ("event_id", "action", "outcome", "occurred_time", "actor_id", "actor_facility_code", "source_service", "operation", "patient_id", "resource_type", "resource_id", "purpose_of_use", "request_id", "trace_id", "sequence", "record_time")
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
    def __init__(self, event_id: _Optional[str] = ..., action: _Optional[_Union[AuditAction, str]] = ..., outcome: _Optional[_Union[AuditOutcome, str]] = ..., occurred_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor_id: _Optional[str] = ..., actor_facility_code: _Optional[str] = ..., source_service: _Optional[str] = ..., operation: _Optional[str] = ..., patient_id: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_id: _Optional[str] = ..., purpose_of_use: _Optional[str] = ..., request_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., sequence: _Optional[int] = ..., record_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("patient_id", "page_size", "page_token")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    page_size: int
    page_token: str
    def __init__(self, patient_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class QueryEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
