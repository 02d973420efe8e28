import datetime

from emr.records.v1 import records_pb2 as _records_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RetentionClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RETENTION_CLASS_UNSPECIFIED: _ClassVar[RetentionClass]
    RETENTION_CLASS_STANDARD_10_YEARS: _ClassVar[RetentionClass]
    RETENTION_CLASS_SPECIAL_20_YEARS: _ClassVar[RetentionClass]
    RETENTION_CLASS_DEATH_30_YEARS: _ClassVar[RetentionClass]
    RETENTION_CLASS_PERMANENT: _ClassVar[RetentionClass]

class LegalHoldTarget(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LEGAL_HOLD_TARGET_UNSPECIFIED: _ClassVar[LegalHoldTarget]
    LEGAL_HOLD_TARGET_PATIENT: _ClassVar[LegalHoldTarget]
    LEGAL_HOLD_TARGET_ENCOUNTER: _ClassVar[LegalHoldTarget]

class DisposalStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISPOSAL_STATUS_UNSPECIFIED: _ClassVar[DisposalStatus]
    DISPOSAL_STATUS_AWAITING_APPROVAL: _ClassVar[DisposalStatus]
    DISPOSAL_STATUS_IN_PROGRESS: _ClassVar[DisposalStatus]
    DISPOSAL_STATUS_COMPLETED: _ClassVar[DisposalStatus]
RETENTION_CLASS_UNSPECIFIED: RetentionClass
RETENTION_CLASS_STANDARD_10_YEARS: RetentionClass
RETENTION_CLASS_SPECIAL_20_YEARS: RetentionClass
RETENTION_CLASS_DEATH_30_YEARS: RetentionClass
RETENTION_CLASS_PERMANENT: RetentionClass
LEGAL_HOLD_TARGET_UNSPECIFIED: LegalHoldTarget
LEGAL_HOLD_TARGET_PATIENT: LegalHoldTarget
LEGAL_HOLD_TARGET_ENCOUNTER: LegalHoldTarget
DISPOSAL_STATUS_UNSPECIFIED: DisposalStatus
DISPOSAL_STATUS_AWAITING_APPROVAL: DisposalStatus
DISPOSAL_STATUS_IN_PROGRESS: DisposalStatus
DISPOSAL_STATUS_COMPLETED: DisposalStatus

class GetRecordRetentionRequest(_message.Message):
    __slots__ = ("resource_type", "resource_id")
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    resource_type: _records_pb2.ResourceType
    resource_id: str
    def __init__(self, resource_type: _Optional[_Union[_records_pb2.ResourceType, str]] = ..., resource_id: _Optional[str] = ...) -> None: ...

class GetRecordRetentionResponse(_message.Message):
    __slots__ = ("own_class", "effective_class", "episode_key", "clock_start_time", "disposal_date", "hold_ids", "patient_id")
    OWN_CLASS_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_CLASS_FIELD_NUMBER: _ClassVar[int]
    EPISODE_KEY_FIELD_NUMBER: _ClassVar[int]
    CLOCK_START_TIME_FIELD_NUMBER: _ClassVar[int]
    DISPOSAL_DATE_FIELD_NUMBER: _ClassVar[int]
    HOLD_IDS_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    own_class: RetentionClass
    effective_class: RetentionClass
    episode_key: str
    clock_start_time: _timestamp_pb2.Timestamp
    disposal_date: str
    hold_ids: _containers.RepeatedScalarFieldContainer[str]
    patient_id: str
    def __init__(self, own_class: _Optional[_Union[RetentionClass, str]] = ..., effective_class: _Optional[_Union[RetentionClass, str]] = ..., episode_key: _Optional[str] = ..., clock_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., disposal_date: _Optional[str] = ..., hold_ids: _Optional[_Iterable[str]] = ..., patient_id: _Optional[str] = ...) -> None: ...

class ClassifyRecordRequest(_message.Message):
    __slots__ = ("request_id", "resource_type", "resource_id", "retention_class", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    RETENTION_CLASS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    resource_type: _records_pb2.ResourceType
    resource_id: str
    retention_class: RetentionClass
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., resource_type: _Optional[_Union[_records_pb2.ResourceType, str]] = ..., resource_id: _Optional[str] = ..., retention_class: _Optional[_Union[RetentionClass, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class ClassifyRecordResponse(_message.Message):
    __slots__ = ("retention",)
    RETENTION_FIELD_NUMBER: _ClassVar[int]
    retention: GetRecordRetentionResponse
    def __init__(self, retention: _Optional[_Union[GetRecordRetentionResponse, _Mapping]] = ...) -> None: ...

class LegalHold(_message.Message):
    __slots__ = ("hold_id", "target", "target_id", "patient_id", "reason", "placed_by", "place_time", "released_by", "release_time", "release_reason")
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PLACED_BY_FIELD_NUMBER: _ClassVar[int]
    PLACE_TIME_FIELD_NUMBER: _ClassVar[int]
    RELEASED_BY_FIELD_NUMBER: _ClassVar[int]
    RELEASE_TIME_FIELD_NUMBER: _ClassVar[int]
    RELEASE_REASON_FIELD_NUMBER: _ClassVar[int]
    hold_id: str
    target: LegalHoldTarget
    target_id: str
    patient_id: str
    reason: str
    placed_by: str
    place_time: _timestamp_pb2.Timestamp
    released_by: str
    release_time: _timestamp_pb2.Timestamp
    release_reason: str
    def __init__(self, hold_id: _Optional[str] = ..., target: _Optional[_Union[LegalHoldTarget, str]] = ..., target_id: _Optional[str] = ..., patient_id: _Optional[str] = ..., reason: _Optional[str] = ..., placed_by: _Optional[str] = ..., place_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., released_by: _Optional[str] = ..., release_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., release_reason: _Optional[str] = ...) -> None: ...

class PlaceLegalHoldRequest(_message.Message):
    __slots__ = ("request_id", "target", "target_id", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    target: LegalHoldTarget
    target_id: str
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., target: _Optional[_Union[LegalHoldTarget, str]] = ..., target_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class PlaceLegalHoldResponse(_message.Message):
    __slots__ = ("hold",)
    HOLD_FIELD_NUMBER: _ClassVar[int]
    hold: LegalHold
    def __init__(self, hold: _Optional[_Union[LegalHold, _Mapping]] = ...) -> None: ...

class ReleaseLegalHoldRequest(_message.Message):
    __slots__ = ("hold_id", "reason")
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    hold_id: str
    reason: str
    def __init__(self, hold_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReleaseLegalHoldResponse(_message.Message):
    __slots__ = ("hold",)
    HOLD_FIELD_NUMBER: _ClassVar[int]
    hold: LegalHold
    def __init__(self, hold: _Optional[_Union[LegalHold, _Mapping]] = ...) -> None: ...

class DueEpisode(_message.Message):
    __slots__ = ("episode_key", "patient_id", "retention_class", "clock_start_time", "disposal_date", "records")
    EPISODE_KEY_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    RETENTION_CLASS_FIELD_NUMBER: _ClassVar[int]
    CLOCK_START_TIME_FIELD_NUMBER: _ClassVar[int]
    DISPOSAL_DATE_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    episode_key: str
    patient_id: str
    retention_class: RetentionClass
    clock_start_time: _timestamp_pb2.Timestamp
    disposal_date: str
    records: _containers.RepeatedCompositeFieldContainer[DisposedRecord]
    def __init__(self, episode_key: _Optional[str] = ..., patient_id: _Optional[str] = ..., retention_class: _Optional[_Union[RetentionClass, str]] = ..., clock_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., disposal_date: _Optional[str] = ..., records: _Optional[_Iterable[_Union[DisposedRecord, _Mapping]]] = ...) -> None: ...

class DisposedRecord(_message.Message):
    __slots__ = ("resource_type", "resource_id")
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    resource_type: _records_pb2.ResourceType
    resource_id: str
    def __init__(self, resource_type: _Optional[_Union[_records_pb2.ResourceType, str]] = ..., resource_id: _Optional[str] = ...) -> None: ...

class ListDueRecordsRequest(_message.Message):
    __slots__ = ("as_of", "page_size")
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    as_of: str
    page_size: int
    def __init__(self, as_of: _Optional[str] = ..., page_size: _Optional[int] = ...) -> None: ...

class ListDueRecordsResponse(_message.Message):
    __slots__ = ("episodes", "more")
    EPISODES_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    episodes: _containers.RepeatedCompositeFieldContainer[DueEpisode]
    more: bool
    def __init__(self, episodes: _Optional[_Iterable[_Union[DueEpisode, _Mapping]]] = ..., more: _Optional[bool] = ...) -> None: ...

class RequestDisposalRequest(_message.Message):
    __slots__ = ("request_id", "as_of", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    as_of: str
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., as_of: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RequestDisposalResponse(_message.Message):
    __slots__ = ("disposal",)
    DISPOSAL_FIELD_NUMBER: _ClassVar[int]
    disposal: Disposal
    def __init__(self, disposal: _Optional[_Union[Disposal, _Mapping]] = ...) -> None: ...

class ApproveDisposalRequest(_message.Message):
    __slots__ = ("disposal_id",)
    DISPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    disposal_id: str
    def __init__(self, disposal_id: _Optional[str] = ...) -> None: ...

class ApproveDisposalResponse(_message.Message):
    __slots__ = ("disposal",)
    DISPOSAL_FIELD_NUMBER: _ClassVar[int]
    disposal: Disposal
    def __init__(self, disposal: _Optional[_Union[Disposal, _Mapping]] = ...) -> None: ...

class GetDisposalRequest(_message.Message):
    __slots__ = ("disposal_id",)
    DISPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    disposal_id: str
    def __init__(self, disposal_id: _Optional[str] = ...) -> None: ...

class GetDisposalResponse(_message.Message):
    __slots__ = ("disposal",)
    DISPOSAL_FIELD_NUMBER: _ClassVar[int]
    disposal: Disposal
    def __init__(self, disposal: _Optional[_Union[Disposal, _Mapping]] = ...) -> None: ...

class Disposal(_message.Message):
    __slots__ = ("disposal_id", "status", "as_of", "reason", "requested_by", "request_time", "approved_by", "approve_time", "episodes", "list_sha256", "certificate")
    DISPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIME_FIELD_NUMBER: _ClassVar[int]
    APPROVED_BY_FIELD_NUMBER: _ClassVar[int]
    APPROVE_TIME_FIELD_NUMBER: _ClassVar[int]
    EPISODES_FIELD_NUMBER: _ClassVar[int]
    LIST_SHA256_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    disposal_id: str
    status: DisposalStatus
    as_of: str
    reason: str
    requested_by: str
    request_time: _timestamp_pb2.Timestamp
    approved_by: str
    approve_time: _timestamp_pb2.Timestamp
    episodes: _containers.RepeatedCompositeFieldContainer[DueEpisode]
    list_sha256: str
    certificate: DisposalCertificate
    def __init__(self, disposal_id: _Optional[str] = ..., status: _Optional[_Union[DisposalStatus, str]] = ..., as_of: _Optional[str] = ..., reason: _Optional[str] = ..., requested_by: _Optional[str] = ..., request_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., approved_by: _Optional[str] = ..., approve_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., episodes: _Optional[_Iterable[_Union[DueEpisode, _Mapping]]] = ..., list_sha256: _Optional[str] = ..., certificate: _Optional[_Union[DisposalCertificate, _Mapping]] = ...) -> None: ...

class DisposalCertificate(_message.Message):
    __slots__ = ("disposal_id", "complete_time", "requested_by", "approved_by", "disposed", "kept", "disposed_count", "episode_count", "disposed_sha256", "as_of")
    DISPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_TIME_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    APPROVED_BY_FIELD_NUMBER: _ClassVar[int]
    DISPOSED_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    DISPOSED_COUNT_FIELD_NUMBER: _ClassVar[int]
    EPISODE_COUNT_FIELD_NUMBER: _ClassVar[int]
    DISPOSED_SHA256_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    disposal_id: str
    complete_time: _timestamp_pb2.Timestamp
    requested_by: str
    approved_by: str
    disposed: _containers.RepeatedCompositeFieldContainer[DisposedRecord]
    kept: _containers.RepeatedCompositeFieldContainer[DisposedRecord]
    disposed_count: int
    episode_count: int
    disposed_sha256: str
    as_of: str
    def __init__(self, disposal_id: _Optional[str] = ..., complete_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., requested_by: _Optional[str] = ..., approved_by: _Optional[str] = ..., disposed: _Optional[_Iterable[_Union[DisposedRecord, _Mapping]]] = ..., kept: _Optional[_Iterable[_Union[DisposedRecord, _Mapping]]] = ..., disposed_count: _Optional[int] = ..., episode_count: _Optional[int] = ..., disposed_sha256: _Optional[str] = ..., as_of: _Optional[str] = ...) -> None: ...
