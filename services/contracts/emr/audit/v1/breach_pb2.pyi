import datetime

from emr.audit.v1 import audit_pb2 as _audit_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BreachCategory(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BREACH_CATEGORY_UNSPECIFIED: _ClassVar[BreachCategory]
    BREACH_CATEGORY_CONFIDENTIALITY: _ClassVar[BreachCategory]
    BREACH_CATEGORY_INTEGRITY: _ClassVar[BreachCategory]
    BREACH_CATEGORY_AVAILABILITY: _ClassVar[BreachCategory]

class BreachStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BREACH_STATUS_UNSPECIFIED: _ClassVar[BreachStatus]
    BREACH_STATUS_OPEN: _ClassVar[BreachStatus]
    BREACH_STATUS_NOTIFIED: _ClassVar[BreachStatus]
    BREACH_STATUS_CLOSED: _ClassVar[BreachStatus]

class BreachDeadlineState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BREACH_DEADLINE_STATE_UNSPECIFIED: _ClassVar[BreachDeadlineState]
    BREACH_DEADLINE_STATE_PENDING: _ClassVar[BreachDeadlineState]
    BREACH_DEADLINE_STATE_DUE_SOON: _ClassVar[BreachDeadlineState]
    BREACH_DEADLINE_STATE_OVERDUE: _ClassVar[BreachDeadlineState]
    BREACH_DEADLINE_STATE_MET: _ClassVar[BreachDeadlineState]
    BREACH_DEADLINE_STATE_MISSED: _ClassVar[BreachDeadlineState]
    BREACH_DEADLINE_STATE_NOT_NOTIFIED: _ClassVar[BreachDeadlineState]
BREACH_CATEGORY_UNSPECIFIED: BreachCategory
BREACH_CATEGORY_CONFIDENTIALITY: BreachCategory
BREACH_CATEGORY_INTEGRITY: BreachCategory
BREACH_CATEGORY_AVAILABILITY: BreachCategory
BREACH_STATUS_UNSPECIFIED: BreachStatus
BREACH_STATUS_OPEN: BreachStatus
BREACH_STATUS_NOTIFIED: BreachStatus
BREACH_STATUS_CLOSED: BreachStatus
BREACH_DEADLINE_STATE_UNSPECIFIED: BreachDeadlineState
BREACH_DEADLINE_STATE_PENDING: BreachDeadlineState
BREACH_DEADLINE_STATE_DUE_SOON: BreachDeadlineState
BREACH_DEADLINE_STATE_OVERDUE: BreachDeadlineState
BREACH_DEADLINE_STATE_MET: BreachDeadlineState
BREACH_DEADLINE_STATE_MISSED: BreachDeadlineState
BREACH_DEADLINE_STATE_NOT_NOTIFIED: BreachDeadlineState

class BreachScope(_message.Message):
    __slots__ = ("actor_id", "facility_code", "start_time", "end_time")
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    actor_id: str
    facility_code: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, actor_id: _Optional[str] = ..., facility_code: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class BreachStatusChange(_message.Message):
    __slots__ = ("status", "changed_time", "changed_by", "notified_time", "authority_reference", "delay_reason", "note")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_TIME_FIELD_NUMBER: _ClassVar[int]
    CHANGED_BY_FIELD_NUMBER: _ClassVar[int]
    NOTIFIED_TIME_FIELD_NUMBER: _ClassVar[int]
    AUTHORITY_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    DELAY_REASON_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    status: BreachStatus
    changed_time: _timestamp_pb2.Timestamp
    changed_by: str
    notified_time: _timestamp_pb2.Timestamp
    authority_reference: str
    delay_reason: str
    note: str
    def __init__(self, status: _Optional[_Union[BreachStatus, str]] = ..., changed_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., changed_by: _Optional[str] = ..., notified_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., authority_reference: _Optional[str] = ..., delay_reason: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class BreachIncident(_message.Message):
    __slots__ = ("incident_id", "category", "description", "occurred_time", "discovered_time", "reported_by", "recorded_by", "recorded_time", "scope", "contact_point", "likely_consequences", "measures_taken", "status", "notification_deadline", "deadline_state", "notified_time", "history")
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_TIME_FIELD_NUMBER: _ClassVar[int]
    DISCOVERED_TIME_FIELD_NUMBER: _ClassVar[int]
    REPORTED_BY_FIELD_NUMBER: _ClassVar[int]
    RECORDED_BY_FIELD_NUMBER: _ClassVar[int]
    RECORDED_TIME_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    CONTACT_POINT_FIELD_NUMBER: _ClassVar[int]
    LIKELY_CONSEQUENCES_FIELD_NUMBER: _ClassVar[int]
    MEASURES_TAKEN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NOTIFICATION_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_STATE_FIELD_NUMBER: _ClassVar[int]
    NOTIFIED_TIME_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    incident_id: str
    category: BreachCategory
    description: str
    occurred_time: _timestamp_pb2.Timestamp
    discovered_time: _timestamp_pb2.Timestamp
    reported_by: str
    recorded_by: str
    recorded_time: _timestamp_pb2.Timestamp
    scope: BreachScope
    contact_point: str
    likely_consequences: str
    measures_taken: str
    status: BreachStatus
    notification_deadline: _timestamp_pb2.Timestamp
    deadline_state: BreachDeadlineState
    notified_time: _timestamp_pb2.Timestamp
    history: _containers.RepeatedCompositeFieldContainer[BreachStatusChange]
    def __init__(self, incident_id: _Optional[str] = ..., category: _Optional[_Union[BreachCategory, str]] = ..., description: _Optional[str] = ..., occurred_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., discovered_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reported_by: _Optional[str] = ..., recorded_by: _Optional[str] = ..., recorded_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., scope: _Optional[_Union[BreachScope, _Mapping]] = ..., contact_point: _Optional[str] = ..., likely_consequences: _Optional[str] = ..., measures_taken: _Optional[str] = ..., status: _Optional[_Union[BreachStatus, str]] = ..., notification_deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deadline_state: _Optional[_Union[BreachDeadlineState, str]] = ..., notified_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., history: _Optional[_Iterable[_Union[BreachStatusChange, _Mapping]]] = ...) -> None: ...

class RecordIncidentRequest(_message.Message):
    __slots__ = ("request_id", "category", "description", "occurred_time", "discovered_time", "reported_by", "scope", "contact_point", "likely_consequences", "measures_taken")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_TIME_FIELD_NUMBER: _ClassVar[int]
    DISCOVERED_TIME_FIELD_NUMBER: _ClassVar[int]
    REPORTED_BY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    CONTACT_POINT_FIELD_NUMBER: _ClassVar[int]
    LIKELY_CONSEQUENCES_FIELD_NUMBER: _ClassVar[int]
    MEASURES_TAKEN_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    category: BreachCategory
    description: str
    occurred_time: _timestamp_pb2.Timestamp
    discovered_time: _timestamp_pb2.Timestamp
    reported_by: str
    scope: BreachScope
    contact_point: str
    likely_consequences: str
    measures_taken: str
    def __init__(self, request_id: _Optional[str] = ..., category: _Optional[_Union[BreachCategory, str]] = ..., description: _Optional[str] = ..., occurred_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., discovered_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reported_by: _Optional[str] = ..., scope: _Optional[_Union[BreachScope, _Mapping]] = ..., contact_point: _Optional[str] = ..., likely_consequences: _Optional[str] = ..., measures_taken: _Optional[str] = ...) -> None: ...

class RecordIncidentResponse(_message.Message):
    __slots__ = ("incident",)
    INCIDENT_FIELD_NUMBER: _ClassVar[int]
    incident: BreachIncident
    def __init__(self, incident: _Optional[_Union[BreachIncident, _Mapping]] = ...) -> None: ...

class GetIncidentRequest(_message.Message):
    __slots__ = ("incident_id",)
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    incident_id: str
    def __init__(self, incident_id: _Optional[str] = ...) -> None: ...

class GetIncidentResponse(_message.Message):
    __slots__ = ("incident",)
    INCIDENT_FIELD_NUMBER: _ClassVar[int]
    incident: BreachIncident
    def __init__(self, incident: _Optional[_Union[BreachIncident, _Mapping]] = ...) -> None: ...

class ListIncidentsRequest(_message.Message):
    __slots__ = ("status", "page_size", "page_token")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    status: BreachStatus
    page_size: int
    page_token: str
    def __init__(self, status: _Optional[_Union[BreachStatus, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListIncidentsResponse(_message.Message):
    __slots__ = ("incidents", "next_page_token")
    INCIDENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    incidents: _containers.RepeatedCompositeFieldContainer[BreachIncident]
    next_page_token: str
    def __init__(self, incidents: _Optional[_Iterable[_Union[BreachIncident, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ChangeIncidentStatusRequest(_message.Message):
    __slots__ = ("incident_id", "status", "notified_time", "authority_reference", "delay_reason", "note")
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NOTIFIED_TIME_FIELD_NUMBER: _ClassVar[int]
    AUTHORITY_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    DELAY_REASON_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    incident_id: str
    status: BreachStatus
    notified_time: _timestamp_pb2.Timestamp
    authority_reference: str
    delay_reason: str
    note: str
    def __init__(self, incident_id: _Optional[str] = ..., status: _Optional[_Union[BreachStatus, str]] = ..., notified_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., authority_reference: _Optional[str] = ..., delay_reason: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class ChangeIncidentStatusResponse(_message.Message):
    __slots__ = ("incident",)
    INCIDENT_FIELD_NUMBER: _ClassVar[int]
    incident: BreachIncident
    def __init__(self, incident: _Optional[_Union[BreachIncident, _Mapping]] = ...) -> None: ...

class ListAffectedPatientsRequest(_message.Message):
    __slots__ = ("incident_id", "page_size", "page_token")
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    incident_id: str
    page_size: int
    page_token: str
    def __init__(self, incident_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class AffectedPatient(_message.Message):
    __slots__ = ("patient_id", "first_access_time", "last_access_time", "access_kinds", "access_count", "data_categories")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_ACCESS_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_ACCESS_TIME_FIELD_NUMBER: _ClassVar[int]
    ACCESS_KINDS_FIELD_NUMBER: _ClassVar[int]
    ACCESS_COUNT_FIELD_NUMBER: _ClassVar[int]
    DATA_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    first_access_time: _timestamp_pb2.Timestamp
    last_access_time: _timestamp_pb2.Timestamp
    access_kinds: _containers.RepeatedScalarFieldContainer[_audit_pb2.AuditEventSubtype]
    access_count: int
    data_categories: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, patient_id: _Optional[str] = ..., first_access_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_access_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., access_kinds: _Optional[_Iterable[_Union[_audit_pb2.AuditEventSubtype, str]]] = ..., access_count: _Optional[int] = ..., data_categories: _Optional[_Iterable[str]] = ...) -> None: ...

class ListAffectedPatientsResponse(_message.Message):
    __slots__ = ("patients", "total_patients", "next_page_token")
    PATIENTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PATIENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    patients: _containers.RepeatedCompositeFieldContainer[AffectedPatient]
    total_patients: int
    next_page_token: str
    def __init__(self, patients: _Optional[_Iterable[_Union[AffectedPatient, _Mapping]]] = ..., total_patients: _Optional[int] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetBreachNotificationRequest(_message.Message):
    __slots__ = ("incident_id", "delay_reason")
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    DELAY_REASON_FIELD_NUMBER: _ClassVar[int]
    incident_id: str
    delay_reason: str
    def __init__(self, incident_id: _Optional[str] = ..., delay_reason: _Optional[str] = ...) -> None: ...

class GetBreachNotificationResponse(_message.Message):
    __slots__ = ("notification_json", "notification_text", "affected_patients", "affected_records", "access_events", "incident")
    NOTIFICATION_JSON_FIELD_NUMBER: _ClassVar[int]
    NOTIFICATION_TEXT_FIELD_NUMBER: _ClassVar[int]
    AFFECTED_PATIENTS_FIELD_NUMBER: _ClassVar[int]
    AFFECTED_RECORDS_FIELD_NUMBER: _ClassVar[int]
    ACCESS_EVENTS_FIELD_NUMBER: _ClassVar[int]
    INCIDENT_FIELD_NUMBER: _ClassVar[int]
    notification_json: str
    notification_text: str
    affected_patients: int
    affected_records: int
    access_events: int
    incident: BreachIncident
    def __init__(self, notification_json: _Optional[str] = ..., notification_text: _Optional[str] = ..., affected_patients: _Optional[int] = ..., affected_records: _Optional[int] = ..., access_events: _Optional[int] = ..., incident: _Optional[_Union[BreachIncident, _Mapping]] = ...) -> None: ...
