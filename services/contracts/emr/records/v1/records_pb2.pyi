import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EncounterClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCOUNTER_CLASS_UNSPECIFIED: _ClassVar[EncounterClass]
    ENCOUNTER_CLASS_OUTPATIENT: _ClassVar[EncounterClass]
    ENCOUNTER_CLASS_INPATIENT: _ClassVar[EncounterClass]
    ENCOUNTER_CLASS_EMERGENCY: _ClassVar[EncounterClass]
    ENCOUNTER_CLASS_DAY_CARE: _ClassVar[EncounterClass]

class EncounterStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCOUNTER_STATUS_UNSPECIFIED: _ClassVar[EncounterStatus]
    ENCOUNTER_STATUS_PLANNED: _ClassVar[EncounterStatus]
    ENCOUNTER_STATUS_IN_PROGRESS: _ClassVar[EncounterStatus]
    ENCOUNTER_STATUS_FINISHED: _ClassVar[EncounterStatus]
    ENCOUNTER_STATUS_CANCELLED: _ClassVar[EncounterStatus]

class ChangeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_KIND_UNSPECIFIED: _ClassVar[ChangeKind]
    CHANGE_KIND_CREATED: _ClassVar[ChangeKind]
    CHANGE_KIND_UPDATED: _ClassVar[ChangeKind]
ENCOUNTER_CLASS_UNSPECIFIED: EncounterClass
ENCOUNTER_CLASS_OUTPATIENT: EncounterClass
ENCOUNTER_CLASS_INPATIENT: EncounterClass
ENCOUNTER_CLASS_EMERGENCY: EncounterClass
ENCOUNTER_CLASS_DAY_CARE: EncounterClass
ENCOUNTER_STATUS_UNSPECIFIED: EncounterStatus
ENCOUNTER_STATUS_PLANNED: EncounterStatus
ENCOUNTER_STATUS_IN_PROGRESS: EncounterStatus
ENCOUNTER_STATUS_FINISHED: EncounterStatus
ENCOUNTER_STATUS_CANCELLED: EncounterStatus
CHANGE_KIND_UNSPECIFIED: ChangeKind
CHANGE_KIND_CREATED: ChangeKind
CHANGE_KIND_UPDATED: ChangeKind

class Encounter(_message.Message):
    __slots__ = ("encounter_id", "patient_id", "facility_code", "encounter_class", "status", "start_time", "end_time", "reason", "version", "create_time")
    ENCOUNTER_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    ENCOUNTER_CLASS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    encounter_id: str
    patient_id: str
    facility_code: str
    encounter_class: EncounterClass
    status: EncounterStatus
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    reason: str
    version: int
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, encounter_id: _Optional[str] = ..., patient_id: _Optional[str] = ..., facility_code: _Optional[str] = ..., encounter_class: _Optional[_Union[EncounterClass, str]] = ..., status: _Optional[_Union[EncounterStatus, str]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., version: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateEncounterRequest(_message.Message):
    __slots__ = ("request_id", "patient_id", "facility_code", "encounter_class", "status", "start_time", "end_time", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    ENCOUNTER_CLASS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    patient_id: str
    facility_code: str
    encounter_class: EncounterClass
    status: EncounterStatus
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., patient_id: _Optional[str] = ..., facility_code: _Optional[str] = ..., encounter_class: _Optional[_Union[EncounterClass, str]] = ..., status: _Optional[_Union[EncounterStatus, str]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class CreateEncounterResponse(_message.Message):
    __slots__ = ("encounter",)
    ENCOUNTER_FIELD_NUMBER: _ClassVar[int]
    encounter: Encounter
    def __init__(self, encounter: _Optional[_Union[Encounter, _Mapping]] = ...) -> None: ...

class GetEncounterRequest(_message.Message):
    __slots__ = ("encounter_id",)
    ENCOUNTER_ID_FIELD_NUMBER: _ClassVar[int]
    encounter_id: str
    def __init__(self, encounter_id: _Optional[str] = ...) -> None: ...

class GetEncounterResponse(_message.Message):
    __slots__ = ("encounter",)
    ENCOUNTER_FIELD_NUMBER: _ClassVar[int]
    encounter: Encounter
    def __init__(self, encounter: _Optional[_Union[Encounter, _Mapping]] = ...) -> None: ...

class ListEncountersRequest(_message.Message):
    __slots__ = ("patient_id", "page_size", "page_token")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    page_size: int
    page_token: str
    def __init__(self, patient_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEncountersResponse(_message.Message):
    __slots__ = ("encounters", "next_page_token")
    ENCOUNTERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    encounters: _containers.RepeatedCompositeFieldContainer[Encounter]
    next_page_token: str
    def __init__(self, encounters: _Optional[_Iterable[_Union[Encounter, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Change(_message.Message):
    __slots__ = ("sequence", "kind", "resource_type", "resource_id", "resource_version", "patient_id", "facility_code", "commit_time", "encounter")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_TIME_FIELD_NUMBER: _ClassVar[int]
    ENCOUNTER_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    kind: ChangeKind
    resource_type: str
    resource_id: str
    resource_version: int
    patient_id: str
    facility_code: str
    commit_time: _timestamp_pb2.Timestamp
    encounter: Encounter
    def __init__(self, sequence: _Optional[int] = ..., kind: _Optional[_Union[ChangeKind, str]] = ..., resource_type: _Optional[str] = ..., resource_id: _Optional[str] = ..., resource_version: _Optional[int] = ..., patient_id: _Optional[str] = ..., facility_code: _Optional[str] = ..., commit_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., encounter: _Optional[_Union[Encounter, _Mapping]] = ...) -> None: ...

class ListChangesRequest(_message.Message):
    __slots__ = ("after_sequence", "limit")
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    after_sequence: int
    limit: int
    def __init__(self, after_sequence: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class ListChangesResponse(_message.Message):
    __slots__ = ("changes", "next_after_sequence")
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[Change]
    next_after_sequence: int
    def __init__(self, changes: _Optional[_Iterable[_Union[Change, _Mapping]]] = ..., next_after_sequence: _Optional[int] = ...) -> None: ...
