import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IdentifierSystem(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IDENTIFIER_SYSTEM_UNSPECIFIED: _ClassVar[IdentifierSystem]
    IDENTIFIER_SYSTEM_CCCD: _ClassVar[IdentifierSystem]
    IDENTIFIER_SYSTEM_BHYT: _ClassVar[IdentifierSystem]
    IDENTIFIER_SYSTEM_PASSPORT: _ClassVar[IdentifierSystem]
    IDENTIFIER_SYSTEM_MRN: _ClassVar[IdentifierSystem]

class Sex(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEX_UNSPECIFIED: _ClassVar[Sex]
    SEX_MALE: _ClassVar[Sex]
    SEX_FEMALE: _ClassVar[Sex]
    SEX_OTHER: _ClassVar[Sex]
    SEX_UNKNOWN: _ClassVar[Sex]

class RegistrationOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REGISTRATION_OUTCOME_UNSPECIFIED: _ClassVar[RegistrationOutcome]
    REGISTRATION_OUTCOME_CREATED: _ClassVar[RegistrationOutcome]
    REGISTRATION_OUTCOME_EXISTING: _ClassVar[RegistrationOutcome]
IDENTIFIER_SYSTEM_UNSPECIFIED: IdentifierSystem
IDENTIFIER_SYSTEM_CCCD: IdentifierSystem
IDENTIFIER_SYSTEM_BHYT: IdentifierSystem
IDENTIFIER_SYSTEM_PASSPORT: IdentifierSystem
IDENTIFIER_SYSTEM_MRN: IdentifierSystem
SEX_UNSPECIFIED: Sex
SEX_MALE: Sex
SEX_FEMALE: Sex
SEX_OTHER: Sex
SEX_UNKNOWN: Sex
REGISTRATION_OUTCOME_UNSPECIFIED: RegistrationOutcome
REGISTRATION_OUTCOME_CREATED: RegistrationOutcome
REGISTRATION_OUTCOME_EXISTING: RegistrationOutcome

class Identifier(_message.Message):
    __slots__ = ("system", "value", "facility_code")
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    system: IdentifierSystem
    value: str
    facility_code: str
    def __init__(self, system: _Optional[_Union[IdentifierSystem, str]] = ..., value: _Optional[str] = ..., facility_code: _Optional[str] = ...) -> None: ...

class Patient(_message.Message):
    __slots__ = ("patient_id", "identifiers", "full_name", "birth_date", "sex", "registering_facility_code", "create_time")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    FULL_NAME_FIELD_NUMBER: _ClassVar[int]
    BIRTH_DATE_FIELD_NUMBER: _ClassVar[int]
    SEX_FIELD_NUMBER: _ClassVar[int]
    REGISTERING_FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    identifiers: _containers.RepeatedCompositeFieldContainer[Identifier]
    full_name: str
    birth_date: str
    sex: Sex
    registering_facility_code: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, patient_id: _Optional[str] = ..., identifiers: _Optional[_Iterable[_Union[Identifier, _Mapping]]] = ..., full_name: _Optional[str] = ..., birth_date: _Optional[str] = ..., sex: _Optional[_Union[Sex, str]] = ..., registering_facility_code: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RegisterPatientRequest(_message.Message):
    __slots__ = ("request_id", "identifiers", "full_name", "birth_date", "sex", "facility_code")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    FULL_NAME_FIELD_NUMBER: _ClassVar[int]
    BIRTH_DATE_FIELD_NUMBER: _ClassVar[int]
    SEX_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    identifiers: _containers.RepeatedCompositeFieldContainer[Identifier]
    full_name: str
    birth_date: str
    sex: Sex
    facility_code: str
    def __init__(self, request_id: _Optional[str] = ..., identifiers: _Optional[_Iterable[_Union[Identifier, _Mapping]]] = ..., full_name: _Optional[str] = ..., birth_date: _Optional[str] = ..., sex: _Optional[_Union[Sex, str]] = ..., facility_code: _Optional[str] = ...) -> None: ...

class RegisterPatientResponse(_message.Message):
    __slots__ = ("patient", "outcome")
    PATIENT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    patient: Patient
    outcome: RegistrationOutcome
    def __init__(self, patient: _Optional[_Union[Patient, _Mapping]] = ..., outcome: _Optional[_Union[RegistrationOutcome, str]] = ...) -> None: ...

class GetPatientRequest(_message.Message):
    __slots__ = ("patient_id",)
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    def __init__(self, patient_id: _Optional[str] = ...) -> None: ...

class GetPatientResponse(_message.Message):
    __slots__ = ("patient",)
    PATIENT_FIELD_NUMBER: _ClassVar[int]
    patient: Patient
    def __init__(self, patient: _Optional[_Union[Patient, _Mapping]] = ...) -> None: ...
