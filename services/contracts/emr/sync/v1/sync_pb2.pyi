import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetSyncStatusRequest(_message.Message):
    __slots__ = ("facility_code",)
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    facility_code: str
    def __init__(self, facility_code: _Optional[str] = ...) -> None: ...

class GetSyncStatusResponse(_message.Message):
    __slots__ = ("pending", "delivered", "failed", "last_error", "last_delivered_time", "records_cursor")
    PENDING_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_DELIVERED_TIME_FIELD_NUMBER: _ClassVar[int]
    RECORDS_CURSOR_FIELD_NUMBER: _ClassVar[int]
    pending: int
    delivered: int
    failed: int
    last_error: str
    last_delivered_time: _timestamp_pb2.Timestamp
    records_cursor: int
    def __init__(self, pending: _Optional[int] = ..., delivered: _Optional[int] = ..., failed: _Optional[int] = ..., last_error: _Optional[str] = ..., last_delivered_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., records_cursor: _Optional[int] = ...) -> None: ...
