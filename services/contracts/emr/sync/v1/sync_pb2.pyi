import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeliveryKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELIVERY_KIND_UNSPECIFIED: _ClassVar[DeliveryKind]
    DELIVERY_KIND_FHIR_TRANSACTION: _ClassVar[DeliveryKind]
    DELIVERY_KIND_CLAIM_XML: _ClassVar[DeliveryKind]
    DELIVERY_KIND_CLAIM_CHECKIN: _ClassVar[DeliveryKind]
    DELIVERY_KIND_CLAIM_WITHDRAWAL: _ClassVar[DeliveryKind]
DELIVERY_KIND_UNSPECIFIED: DeliveryKind
DELIVERY_KIND_FHIR_TRANSACTION: DeliveryKind
DELIVERY_KIND_CLAIM_XML: DeliveryKind
DELIVERY_KIND_CLAIM_CHECKIN: DeliveryKind
DELIVERY_KIND_CLAIM_WITHDRAWAL: DeliveryKind

class GetSyncStatusRequest(_message.Message):
    __slots__ = ("facility_code", "delivery_ids")
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_IDS_FIELD_NUMBER: _ClassVar[int]
    facility_code: str
    delivery_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, facility_code: _Optional[str] = ..., delivery_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetSyncStatusResponse(_message.Message):
    __slots__ = ("pending", "delivered", "failed", "last_error", "last_delivered_time", "records_cursor", "in_flight", "dead_lettered", "oldest_pending_time", "oldest_pending_age_seconds", "national_reachable", "national_checked_time", "identity_cursor", "last_receipt", "receipts")
    PENDING_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_DELIVERED_TIME_FIELD_NUMBER: _ClassVar[int]
    RECORDS_CURSOR_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    OLDEST_PENDING_TIME_FIELD_NUMBER: _ClassVar[int]
    OLDEST_PENDING_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NATIONAL_REACHABLE_FIELD_NUMBER: _ClassVar[int]
    NATIONAL_CHECKED_TIME_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_CURSOR_FIELD_NUMBER: _ClassVar[int]
    LAST_RECEIPT_FIELD_NUMBER: _ClassVar[int]
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    pending: int
    delivered: int
    failed: int
    last_error: str
    last_delivered_time: _timestamp_pb2.Timestamp
    records_cursor: int
    in_flight: int
    dead_lettered: int
    oldest_pending_time: _timestamp_pb2.Timestamp
    oldest_pending_age_seconds: float
    national_reachable: bool
    national_checked_time: _timestamp_pb2.Timestamp
    identity_cursor: int
    last_receipt: DeliveryReceipt
    receipts: _containers.RepeatedCompositeFieldContainer[DeliveryReceipt]
    def __init__(self, pending: _Optional[int] = ..., delivered: _Optional[int] = ..., failed: _Optional[int] = ..., last_error: _Optional[str] = ..., last_delivered_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., records_cursor: _Optional[int] = ..., in_flight: _Optional[int] = ..., dead_lettered: _Optional[int] = ..., oldest_pending_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., oldest_pending_age_seconds: _Optional[float] = ..., national_reachable: _Optional[bool] = ..., national_checked_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., identity_cursor: _Optional[int] = ..., last_receipt: _Optional[_Union[DeliveryReceipt, _Mapping]] = ..., receipts: _Optional[_Iterable[_Union[DeliveryReceipt, _Mapping]]] = ...) -> None: ...

class DeliveryReceipt(_message.Message):
    __slots__ = ("delivery_id", "kind", "facility_code", "transaction_id", "delivered_time")
    DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_TIME_FIELD_NUMBER: _ClassVar[int]
    delivery_id: str
    kind: DeliveryKind
    facility_code: str
    transaction_id: str
    delivered_time: _timestamp_pb2.Timestamp
    def __init__(self, delivery_id: _Optional[str] = ..., kind: _Optional[_Union[DeliveryKind, str]] = ..., facility_code: _Optional[str] = ..., transaction_id: _Optional[str] = ..., delivered_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("delivery_id", "kind", "resource_type", "resource_id", "resource_version", "patient_id", "facility_code", "reason", "attempts", "dead_time")
    DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DEAD_TIME_FIELD_NUMBER: _ClassVar[int]
    delivery_id: str
    kind: DeliveryKind
    resource_type: str
    resource_id: str
    resource_version: int
    patient_id: str
    facility_code: str
    reason: str
    attempts: int
    dead_time: _timestamp_pb2.Timestamp
    def __init__(self, delivery_id: _Optional[str] = ..., kind: _Optional[_Union[DeliveryKind, str]] = ..., resource_type: _Optional[str] = ..., resource_id: _Optional[str] = ..., resource_version: _Optional[int] = ..., patient_id: _Optional[str] = ..., facility_code: _Optional[str] = ..., reason: _Optional[str] = ..., attempts: _Optional[int] = ..., dead_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListDeadLettersRequest(_message.Message):
    __slots__ = ("facility_code", "page_size", "page_token")
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    facility_code: str
    page_size: int
    page_token: str
    def __init__(self, facility_code: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDeadLettersResponse(_message.Message):
    __slots__ = ("dead_letters", "next_page_token")
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    dead_letters: _containers.RepeatedCompositeFieldContainer[DeadLetter]
    next_page_token: str
    def __init__(self, dead_letters: _Optional[_Iterable[_Union[DeadLetter, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RetryDeadLetterRequest(_message.Message):
    __slots__ = ("request_id", "delivery_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    delivery_id: str
    def __init__(self, request_id: _Optional[str] = ..., delivery_id: _Optional[str] = ...) -> None: ...

class RetryDeadLetterResponse(_message.Message):
    __slots__ = ("delivery_id",)
    DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    delivery_id: str
    def __init__(self, delivery_id: _Optional[str] = ...) -> None: ...

class ReplayRequest(_message.Message):
    __slots__ = ("request_id", "from_time", "facility_code")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_TIME_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    from_time: _timestamp_pb2.Timestamp
    facility_code: str
    def __init__(self, request_id: _Optional[str] = ..., from_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., facility_code: _Optional[str] = ...) -> None: ...

class ReplayResponse(_message.Message):
    __slots__ = ("requeued",)
    REQUEUED_FIELD_NUMBER: _ClassVar[int]
    requeued: int
    def __init__(self, requeued: _Optional[int] = ...) -> None: ...

class ReconcileRequest(_message.Message):
    __slots__ = ("request_id", "start_time", "end_time")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, request_id: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReconcileResponse(_message.Message):
    __slots__ = ("checked", "requeued", "requeued_delivery_ids")
    CHECKED_FIELD_NUMBER: _ClassVar[int]
    REQUEUED_FIELD_NUMBER: _ClassVar[int]
    REQUEUED_DELIVERY_IDS_FIELD_NUMBER: _ClassVar[int]
    checked: int
    requeued: int
    requeued_delivery_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, checked: _Optional[int] = ..., requeued: _Optional[int] = ..., requeued_delivery_ids: _Optional[_Iterable[str]] = ...) -> None: ...
