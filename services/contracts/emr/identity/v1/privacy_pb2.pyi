import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataSubjectRequestKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_SUBJECT_REQUEST_KIND_UNSPECIFIED: _ClassVar[DataSubjectRequestKind]
    DATA_SUBJECT_REQUEST_KIND_ACCESS: _ClassVar[DataSubjectRequestKind]
    DATA_SUBJECT_REQUEST_KIND_CORRECTION: _ClassVar[DataSubjectRequestKind]
    DATA_SUBJECT_REQUEST_KIND_RESTRICTION: _ClassVar[DataSubjectRequestKind]
    DATA_SUBJECT_REQUEST_KIND_OBJECTION: _ClassVar[DataSubjectRequestKind]
    DATA_SUBJECT_REQUEST_KIND_WITHDRAWAL: _ClassVar[DataSubjectRequestKind]

class DataSubjectRequestStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_SUBJECT_REQUEST_STATUS_UNSPECIFIED: _ClassVar[DataSubjectRequestStatus]
    DATA_SUBJECT_REQUEST_STATUS_RECEIVED: _ClassVar[DataSubjectRequestStatus]
    DATA_SUBJECT_REQUEST_STATUS_IN_PROGRESS: _ClassVar[DataSubjectRequestStatus]
    DATA_SUBJECT_REQUEST_STATUS_COMPLETED: _ClassVar[DataSubjectRequestStatus]
    DATA_SUBJECT_REQUEST_STATUS_REFUSED: _ClassVar[DataSubjectRequestStatus]
DATA_SUBJECT_REQUEST_KIND_UNSPECIFIED: DataSubjectRequestKind
DATA_SUBJECT_REQUEST_KIND_ACCESS: DataSubjectRequestKind
DATA_SUBJECT_REQUEST_KIND_CORRECTION: DataSubjectRequestKind
DATA_SUBJECT_REQUEST_KIND_RESTRICTION: DataSubjectRequestKind
DATA_SUBJECT_REQUEST_KIND_OBJECTION: DataSubjectRequestKind
DATA_SUBJECT_REQUEST_KIND_WITHDRAWAL: DataSubjectRequestKind
DATA_SUBJECT_REQUEST_STATUS_UNSPECIFIED: DataSubjectRequestStatus
DATA_SUBJECT_REQUEST_STATUS_RECEIVED: DataSubjectRequestStatus
DATA_SUBJECT_REQUEST_STATUS_IN_PROGRESS: DataSubjectRequestStatus
DATA_SUBJECT_REQUEST_STATUS_COMPLETED: DataSubjectRequestStatus
DATA_SUBJECT_REQUEST_STATUS_REFUSED: DataSubjectRequestStatus

class DataSubjectRequestEvent(_message.Message):
    __slots__ = ("status", "occurred_time", "actor_id", "facility_code", "reason")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_TIME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    status: DataSubjectRequestStatus
    occurred_time: _timestamp_pb2.Timestamp
    actor_id: str
    facility_code: str
    reason: str
    def __init__(self, status: _Optional[_Union[DataSubjectRequestStatus, str]] = ..., occurred_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor_id: _Optional[str] = ..., facility_code: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DataSubjectRequest(_message.Message):
    __slots__ = ("data_subject_request_id", "kind", "patient_id", "filed_by_facility_code", "handling_facility_code", "filed_time", "due_time", "status", "overdue", "resource_reference", "details", "sharing_grant_id", "history", "filed_by")
    DATA_SUBJECT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FILED_BY_FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    HANDLING_FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    FILED_TIME_FIELD_NUMBER: _ClassVar[int]
    DUE_TIME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OVERDUE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    SHARING_GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    FILED_BY_FIELD_NUMBER: _ClassVar[int]
    data_subject_request_id: str
    kind: DataSubjectRequestKind
    patient_id: str
    filed_by_facility_code: str
    handling_facility_code: str
    filed_time: _timestamp_pb2.Timestamp
    due_time: _timestamp_pb2.Timestamp
    status: DataSubjectRequestStatus
    overdue: bool
    resource_reference: str
    details: str
    sharing_grant_id: str
    history: _containers.RepeatedCompositeFieldContainer[DataSubjectRequestEvent]
    filed_by: str
    def __init__(self, data_subject_request_id: _Optional[str] = ..., kind: _Optional[_Union[DataSubjectRequestKind, str]] = ..., patient_id: _Optional[str] = ..., filed_by_facility_code: _Optional[str] = ..., handling_facility_code: _Optional[str] = ..., filed_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., due_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status: _Optional[_Union[DataSubjectRequestStatus, str]] = ..., overdue: _Optional[bool] = ..., resource_reference: _Optional[str] = ..., details: _Optional[str] = ..., sharing_grant_id: _Optional[str] = ..., history: _Optional[_Iterable[_Union[DataSubjectRequestEvent, _Mapping]]] = ..., filed_by: _Optional[str] = ...) -> None: ...

class FileDataSubjectRequestRequest(_message.Message):
    __slots__ = ("request_id", "patient_id", "kind", "facility_code", "data_facility_code", "resource_reference", "details", "sharing_grant_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    DATA_FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    SHARING_GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    patient_id: str
    kind: DataSubjectRequestKind
    facility_code: str
    data_facility_code: str
    resource_reference: str
    details: str
    sharing_grant_id: str
    def __init__(self, request_id: _Optional[str] = ..., patient_id: _Optional[str] = ..., kind: _Optional[_Union[DataSubjectRequestKind, str]] = ..., facility_code: _Optional[str] = ..., data_facility_code: _Optional[str] = ..., resource_reference: _Optional[str] = ..., details: _Optional[str] = ..., sharing_grant_id: _Optional[str] = ...) -> None: ...

class FileDataSubjectRequestResponse(_message.Message):
    __slots__ = ("data_subject_request",)
    DATA_SUBJECT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    data_subject_request: DataSubjectRequest
    def __init__(self, data_subject_request: _Optional[_Union[DataSubjectRequest, _Mapping]] = ...) -> None: ...

class GetDataSubjectRequestRequest(_message.Message):
    __slots__ = ("data_subject_request_id",)
    DATA_SUBJECT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    data_subject_request_id: str
    def __init__(self, data_subject_request_id: _Optional[str] = ...) -> None: ...

class GetDataSubjectRequestResponse(_message.Message):
    __slots__ = ("data_subject_request",)
    DATA_SUBJECT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    data_subject_request: DataSubjectRequest
    def __init__(self, data_subject_request: _Optional[_Union[DataSubjectRequest, _Mapping]] = ...) -> None: ...

class ListDataSubjectRequestsRequest(_message.Message):
    __slots__ = ("facility_code", "patient_id", "status", "overdue_only", "page_size", "page_token")
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OVERDUE_ONLY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    facility_code: str
    patient_id: str
    status: DataSubjectRequestStatus
    overdue_only: bool
    page_size: int
    page_token: str
    def __init__(self, facility_code: _Optional[str] = ..., patient_id: _Optional[str] = ..., status: _Optional[_Union[DataSubjectRequestStatus, str]] = ..., overdue_only: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDataSubjectRequestsResponse(_message.Message):
    __slots__ = ("data_subject_requests", "next_page_token")
    DATA_SUBJECT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    data_subject_requests: _containers.RepeatedCompositeFieldContainer[DataSubjectRequest]
    next_page_token: str
    def __init__(self, data_subject_requests: _Optional[_Iterable[_Union[DataSubjectRequest, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateDataSubjectRequestStatusRequest(_message.Message):
    __slots__ = ("request_id", "data_subject_request_id", "expected_status", "status", "reason", "facility_code")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_SUBJECT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    data_subject_request_id: str
    expected_status: DataSubjectRequestStatus
    status: DataSubjectRequestStatus
    reason: str
    facility_code: str
    def __init__(self, request_id: _Optional[str] = ..., data_subject_request_id: _Optional[str] = ..., expected_status: _Optional[_Union[DataSubjectRequestStatus, str]] = ..., status: _Optional[_Union[DataSubjectRequestStatus, str]] = ..., reason: _Optional[str] = ..., facility_code: _Optional[str] = ...) -> None: ...

class UpdateDataSubjectRequestStatusResponse(_message.Message):
    __slots__ = ("data_subject_request",)
    DATA_SUBJECT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    data_subject_request: DataSubjectRequest
    def __init__(self, data_subject_request: _Optional[_Union[DataSubjectRequest, _Mapping]] = ...) -> None: ...
