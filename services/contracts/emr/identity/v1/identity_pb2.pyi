import datetime

from emr.records.v1 import sensitivity_pb2 as _sensitivity_pb2
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

class DataQualityWarning(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_QUALITY_WARNING_UNSPECIFIED: _ClassVar[DataQualityWarning]
    DATA_QUALITY_WARNING_CCCD_BIRTH_YEAR_MISMATCH: _ClassVar[DataQualityWarning]

class RegistrationOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REGISTRATION_OUTCOME_UNSPECIFIED: _ClassVar[RegistrationOutcome]
    REGISTRATION_OUTCOME_CREATED: _ClassVar[RegistrationOutcome]
    REGISTRATION_OUTCOME_EXISTING: _ClassVar[RegistrationOutcome]
    REGISTRATION_OUTCOME_LINKED_EXISTING: _ClassVar[RegistrationOutcome]
    REGISTRATION_OUTCOME_REVIEW_REQUIRED: _ClassVar[RegistrationOutcome]
    REGISTRATION_OUTCOME_IDENTIFIER_CONFLICT: _ClassVar[RegistrationOutcome]

class MatchDecision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MATCH_DECISION_UNSPECIFIED: _ClassVar[MatchDecision]
    MATCH_DECISION_NEW: _ClassVar[MatchDecision]
    MATCH_DECISION_REVIEW: _ClassVar[MatchDecision]
    MATCH_DECISION_LINK: _ClassVar[MatchDecision]

class ReviewTaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REVIEW_TASK_KIND_UNSPECIFIED: _ClassVar[ReviewTaskKind]
    REVIEW_TASK_KIND_LIKELY_DUPLICATE: _ClassVar[ReviewTaskKind]
    REVIEW_TASK_KIND_IDENTIFIER_CONFLICT: _ClassVar[ReviewTaskKind]
    REVIEW_TASK_KIND_DEMOGRAPHICS_CHANGE: _ClassVar[ReviewTaskKind]

class ReviewResolution(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REVIEW_RESOLUTION_UNSPECIFIED: _ClassVar[ReviewResolution]
    REVIEW_RESOLUTION_SAME_PERSON: _ClassVar[ReviewResolution]
    REVIEW_RESOLUTION_DIFFERENT_PERSONS: _ClassVar[ReviewResolution]
    REVIEW_RESOLUTION_ACCEPT_CHANGE: _ClassVar[ReviewResolution]
    REVIEW_RESOLUTION_REJECT_CHANGE: _ClassVar[ReviewResolution]

class LinkEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LINK_EVENT_KIND_UNSPECIFIED: _ClassVar[LinkEventKind]
    LINK_EVENT_KIND_CREATED: _ClassVar[LinkEventKind]
    LINK_EVENT_KIND_LINKED: _ClassVar[LinkEventKind]
    LINK_EVENT_KIND_MERGED: _ClassVar[LinkEventKind]
    LINK_EVENT_KIND_UNMERGED: _ClassVar[LinkEventKind]
    LINK_EVENT_KIND_REJECTED: _ClassVar[LinkEventKind]
    LINK_EVENT_KIND_REVIEW_OPENED: _ClassVar[LinkEventKind]
    LINK_EVENT_KIND_UPDATED: _ClassVar[LinkEventKind]
    LINK_EVENT_KIND_FACILITY_RECORD_UPDATED: _ClassVar[LinkEventKind]
    LINK_EVENT_KIND_CHANGE_REJECTED: _ClassVar[LinkEventKind]

class PatientChangeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PATIENT_CHANGE_KIND_UNSPECIFIED: _ClassVar[PatientChangeKind]
    PATIENT_CHANGE_KIND_REGISTERED: _ClassVar[PatientChangeKind]
    PATIENT_CHANGE_KIND_UPDATED: _ClassVar[PatientChangeKind]
    PATIENT_CHANGE_KIND_MERGED: _ClassVar[PatientChangeKind]
    PATIENT_CHANGE_KIND_MERGE_SURVIVOR: _ClassVar[PatientChangeKind]
    PATIENT_CHANGE_KIND_UNMERGED: _ClassVar[PatientChangeKind]
    PATIENT_CHANGE_KIND_UNMERGE_SURVIVOR: _ClassVar[PatientChangeKind]

class SharingGrantKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SHARING_GRANT_KIND_UNSPECIFIED: _ClassVar[SharingGrantKind]
    SHARING_GRANT_KIND_CONSENT: _ClassVar[SharingGrantKind]
    SHARING_GRANT_KIND_REFERRAL: _ClassVar[SharingGrantKind]

class ConsentEvidence(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONSENT_EVIDENCE_UNSPECIFIED: _ClassVar[ConsentEvidence]
    CONSENT_EVIDENCE_SIGNED_FORM: _ClassVar[ConsentEvidence]
    CONSENT_EVIDENCE_VNEID_CONFIRMATION: _ClassVar[ConsentEvidence]
    CONSENT_EVIDENCE_VERBAL_WITH_WITNESS: _ClassVar[ConsentEvidence]

class SharingPurpose(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SHARING_PURPOSE_UNSPECIFIED: _ClassVar[SharingPurpose]
    SHARING_PURPOSE_TREATMENT: _ClassVar[SharingPurpose]
    SHARING_PURPOSE_PAYMENT: _ClassVar[SharingPurpose]

class EmergencyReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EMERGENCY_REASON_UNSPECIFIED: _ClassVar[EmergencyReason]
    EMERGENCY_REASON_LIFE_THREATENING: _ClassVar[EmergencyReason]
    EMERGENCY_REASON_UNABLE_TO_CONSENT: _ClassVar[EmergencyReason]
    EMERGENCY_REASON_URGENT_CARE: _ClassVar[EmergencyReason]
    EMERGENCY_REASON_PUBLIC_HEALTH: _ClassVar[EmergencyReason]

class EmergencyReviewOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EMERGENCY_REVIEW_OUTCOME_UNSPECIFIED: _ClassVar[EmergencyReviewOutcome]
    EMERGENCY_REVIEW_OUTCOME_JUSTIFIED: _ClassVar[EmergencyReviewOutcome]
    EMERGENCY_REVIEW_OUTCOME_UNJUSTIFIED: _ClassVar[EmergencyReviewOutcome]
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
DATA_QUALITY_WARNING_UNSPECIFIED: DataQualityWarning
DATA_QUALITY_WARNING_CCCD_BIRTH_YEAR_MISMATCH: DataQualityWarning
REGISTRATION_OUTCOME_UNSPECIFIED: RegistrationOutcome
REGISTRATION_OUTCOME_CREATED: RegistrationOutcome
REGISTRATION_OUTCOME_EXISTING: RegistrationOutcome
REGISTRATION_OUTCOME_LINKED_EXISTING: RegistrationOutcome
REGISTRATION_OUTCOME_REVIEW_REQUIRED: RegistrationOutcome
REGISTRATION_OUTCOME_IDENTIFIER_CONFLICT: RegistrationOutcome
MATCH_DECISION_UNSPECIFIED: MatchDecision
MATCH_DECISION_NEW: MatchDecision
MATCH_DECISION_REVIEW: MatchDecision
MATCH_DECISION_LINK: MatchDecision
REVIEW_TASK_KIND_UNSPECIFIED: ReviewTaskKind
REVIEW_TASK_KIND_LIKELY_DUPLICATE: ReviewTaskKind
REVIEW_TASK_KIND_IDENTIFIER_CONFLICT: ReviewTaskKind
REVIEW_TASK_KIND_DEMOGRAPHICS_CHANGE: ReviewTaskKind
REVIEW_RESOLUTION_UNSPECIFIED: ReviewResolution
REVIEW_RESOLUTION_SAME_PERSON: ReviewResolution
REVIEW_RESOLUTION_DIFFERENT_PERSONS: ReviewResolution
REVIEW_RESOLUTION_ACCEPT_CHANGE: ReviewResolution
REVIEW_RESOLUTION_REJECT_CHANGE: ReviewResolution
LINK_EVENT_KIND_UNSPECIFIED: LinkEventKind
LINK_EVENT_KIND_CREATED: LinkEventKind
LINK_EVENT_KIND_LINKED: LinkEventKind
LINK_EVENT_KIND_MERGED: LinkEventKind
LINK_EVENT_KIND_UNMERGED: LinkEventKind
LINK_EVENT_KIND_REJECTED: LinkEventKind
LINK_EVENT_KIND_REVIEW_OPENED: LinkEventKind
LINK_EVENT_KIND_UPDATED: LinkEventKind
LINK_EVENT_KIND_FACILITY_RECORD_UPDATED: LinkEventKind
LINK_EVENT_KIND_CHANGE_REJECTED: LinkEventKind
PATIENT_CHANGE_KIND_UNSPECIFIED: PatientChangeKind
PATIENT_CHANGE_KIND_REGISTERED: PatientChangeKind
PATIENT_CHANGE_KIND_UPDATED: PatientChangeKind
PATIENT_CHANGE_KIND_MERGED: PatientChangeKind
PATIENT_CHANGE_KIND_MERGE_SURVIVOR: PatientChangeKind
PATIENT_CHANGE_KIND_UNMERGED: PatientChangeKind
PATIENT_CHANGE_KIND_UNMERGE_SURVIVOR: PatientChangeKind
SHARING_GRANT_KIND_UNSPECIFIED: SharingGrantKind
SHARING_GRANT_KIND_CONSENT: SharingGrantKind
SHARING_GRANT_KIND_REFERRAL: SharingGrantKind
CONSENT_EVIDENCE_UNSPECIFIED: ConsentEvidence
CONSENT_EVIDENCE_SIGNED_FORM: ConsentEvidence
CONSENT_EVIDENCE_VNEID_CONFIRMATION: ConsentEvidence
CONSENT_EVIDENCE_VERBAL_WITH_WITNESS: ConsentEvidence
SHARING_PURPOSE_UNSPECIFIED: SharingPurpose
SHARING_PURPOSE_TREATMENT: SharingPurpose
SHARING_PURPOSE_PAYMENT: SharingPurpose
EMERGENCY_REASON_UNSPECIFIED: EmergencyReason
EMERGENCY_REASON_LIFE_THREATENING: EmergencyReason
EMERGENCY_REASON_UNABLE_TO_CONSENT: EmergencyReason
EMERGENCY_REASON_URGENT_CARE: EmergencyReason
EMERGENCY_REASON_PUBLIC_HEALTH: EmergencyReason
EMERGENCY_REVIEW_OUTCOME_UNSPECIFIED: EmergencyReviewOutcome
EMERGENCY_REVIEW_OUTCOME_JUSTIFIED: EmergencyReviewOutcome
EMERGENCY_REVIEW_OUTCOME_UNJUSTIFIED: EmergencyReviewOutcome

class Identifier(_message.Message):
    __slots__ = ("system", "value", "facility_code", "bhyt_card")
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    BHYT_CARD_FIELD_NUMBER: _ClassVar[int]
    system: IdentifierSystem
    value: str
    facility_code: str
    bhyt_card: BhytCard
    def __init__(self, system: _Optional[_Union[IdentifierSystem, str]] = ..., value: _Optional[str] = ..., facility_code: _Optional[str] = ..., bhyt_card: _Optional[_Union[BhytCard, _Mapping]] = ...) -> None: ...

class BhytCard(_message.Message):
    __slots__ = ("valid_from", "valid_to", "primary_care_facility_code")
    VALID_FROM_FIELD_NUMBER: _ClassVar[int]
    VALID_TO_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_CARE_FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    valid_from: str
    valid_to: str
    primary_care_facility_code: str
    def __init__(self, valid_from: _Optional[str] = ..., valid_to: _Optional[str] = ..., primary_care_facility_code: _Optional[str] = ...) -> None: ...

class Patient(_message.Message):
    __slots__ = ("patient_id", "identifiers", "full_name", "birth_date", "sex", "registering_facility_code", "create_time", "phone", "province_code", "version", "current_province_code", "nationality_code", "ethnicity_code", "occupation_code", "address", "commune_code", "district_code", "data_quality_warnings")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    FULL_NAME_FIELD_NUMBER: _ClassVar[int]
    BIRTH_DATE_FIELD_NUMBER: _ClassVar[int]
    SEX_FIELD_NUMBER: _ClassVar[int]
    REGISTERING_FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    PHONE_FIELD_NUMBER: _ClassVar[int]
    PROVINCE_CODE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CURRENT_PROVINCE_CODE_FIELD_NUMBER: _ClassVar[int]
    NATIONALITY_CODE_FIELD_NUMBER: _ClassVar[int]
    ETHNICITY_CODE_FIELD_NUMBER: _ClassVar[int]
    OCCUPATION_CODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    COMMUNE_CODE_FIELD_NUMBER: _ClassVar[int]
    DISTRICT_CODE_FIELD_NUMBER: _ClassVar[int]
    DATA_QUALITY_WARNINGS_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    identifiers: _containers.RepeatedCompositeFieldContainer[Identifier]
    full_name: str
    birth_date: str
    sex: Sex
    registering_facility_code: str
    create_time: _timestamp_pb2.Timestamp
    phone: str
    province_code: str
    version: int
    current_province_code: str
    nationality_code: str
    ethnicity_code: str
    occupation_code: str
    address: str
    commune_code: str
    district_code: str
    data_quality_warnings: _containers.RepeatedScalarFieldContainer[DataQualityWarning]
    def __init__(self, patient_id: _Optional[str] = ..., identifiers: _Optional[_Iterable[_Union[Identifier, _Mapping]]] = ..., full_name: _Optional[str] = ..., birth_date: _Optional[str] = ..., sex: _Optional[_Union[Sex, str]] = ..., registering_facility_code: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., phone: _Optional[str] = ..., province_code: _Optional[str] = ..., version: _Optional[int] = ..., current_province_code: _Optional[str] = ..., nationality_code: _Optional[str] = ..., ethnicity_code: _Optional[str] = ..., occupation_code: _Optional[str] = ..., address: _Optional[str] = ..., commune_code: _Optional[str] = ..., district_code: _Optional[str] = ..., data_quality_warnings: _Optional[_Iterable[_Union[DataQualityWarning, str]]] = ...) -> None: ...

class UpdatePatientRequest(_message.Message):
    __slots__ = ("request_id", "patient_id", "expected_version", "full_name", "birth_date", "sex", "phone", "province_code", "update_claim_profile", "nationality_code", "ethnicity_code", "occupation_code", "address", "commune_code", "district_code")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    FULL_NAME_FIELD_NUMBER: _ClassVar[int]
    BIRTH_DATE_FIELD_NUMBER: _ClassVar[int]
    SEX_FIELD_NUMBER: _ClassVar[int]
    PHONE_FIELD_NUMBER: _ClassVar[int]
    PROVINCE_CODE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_CLAIM_PROFILE_FIELD_NUMBER: _ClassVar[int]
    NATIONALITY_CODE_FIELD_NUMBER: _ClassVar[int]
    ETHNICITY_CODE_FIELD_NUMBER: _ClassVar[int]
    OCCUPATION_CODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    COMMUNE_CODE_FIELD_NUMBER: _ClassVar[int]
    DISTRICT_CODE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    patient_id: str
    expected_version: int
    full_name: str
    birth_date: str
    sex: Sex
    phone: str
    province_code: str
    update_claim_profile: bool
    nationality_code: str
    ethnicity_code: str
    occupation_code: str
    address: str
    commune_code: str
    district_code: str
    def __init__(self, request_id: _Optional[str] = ..., patient_id: _Optional[str] = ..., expected_version: _Optional[int] = ..., full_name: _Optional[str] = ..., birth_date: _Optional[str] = ..., sex: _Optional[_Union[Sex, str]] = ..., phone: _Optional[str] = ..., province_code: _Optional[str] = ..., update_claim_profile: _Optional[bool] = ..., nationality_code: _Optional[str] = ..., ethnicity_code: _Optional[str] = ..., occupation_code: _Optional[str] = ..., address: _Optional[str] = ..., commune_code: _Optional[str] = ..., district_code: _Optional[str] = ...) -> None: ...

class UpdatePatientResponse(_message.Message):
    __slots__ = ("patient", "candidates", "review_task_id", "change_proposed")
    PATIENT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    REVIEW_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CHANGE_PROPOSED_FIELD_NUMBER: _ClassVar[int]
    patient: Patient
    candidates: _containers.RepeatedCompositeFieldContainer[MatchCandidate]
    review_task_id: str
    change_proposed: bool
    def __init__(self, patient: _Optional[_Union[Patient, _Mapping]] = ..., candidates: _Optional[_Iterable[_Union[MatchCandidate, _Mapping]]] = ..., review_task_id: _Optional[str] = ..., change_proposed: _Optional[bool] = ...) -> None: ...

class RegisterPatientRequest(_message.Message):
    __slots__ = ("request_id", "identifiers", "full_name", "birth_date", "sex", "facility_code", "phone", "province_code", "family_name", "middle_name", "given_name", "accept_inconsistent_cccd", "cccd_registered_abroad", "nationality_code", "ethnicity_code", "occupation_code", "address", "commune_code", "district_code")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    FULL_NAME_FIELD_NUMBER: _ClassVar[int]
    BIRTH_DATE_FIELD_NUMBER: _ClassVar[int]
    SEX_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    PHONE_FIELD_NUMBER: _ClassVar[int]
    PROVINCE_CODE_FIELD_NUMBER: _ClassVar[int]
    FAMILY_NAME_FIELD_NUMBER: _ClassVar[int]
    MIDDLE_NAME_FIELD_NUMBER: _ClassVar[int]
    GIVEN_NAME_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_INCONSISTENT_CCCD_FIELD_NUMBER: _ClassVar[int]
    CCCD_REGISTERED_ABROAD_FIELD_NUMBER: _ClassVar[int]
    NATIONALITY_CODE_FIELD_NUMBER: _ClassVar[int]
    ETHNICITY_CODE_FIELD_NUMBER: _ClassVar[int]
    OCCUPATION_CODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    COMMUNE_CODE_FIELD_NUMBER: _ClassVar[int]
    DISTRICT_CODE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    identifiers: _containers.RepeatedCompositeFieldContainer[Identifier]
    full_name: str
    birth_date: str
    sex: Sex
    facility_code: str
    phone: str
    province_code: str
    family_name: str
    middle_name: str
    given_name: str
    accept_inconsistent_cccd: bool
    cccd_registered_abroad: bool
    nationality_code: str
    ethnicity_code: str
    occupation_code: str
    address: str
    commune_code: str
    district_code: str
    def __init__(self, request_id: _Optional[str] = ..., identifiers: _Optional[_Iterable[_Union[Identifier, _Mapping]]] = ..., full_name: _Optional[str] = ..., birth_date: _Optional[str] = ..., sex: _Optional[_Union[Sex, str]] = ..., facility_code: _Optional[str] = ..., phone: _Optional[str] = ..., province_code: _Optional[str] = ..., family_name: _Optional[str] = ..., middle_name: _Optional[str] = ..., given_name: _Optional[str] = ..., accept_inconsistent_cccd: _Optional[bool] = ..., cccd_registered_abroad: _Optional[bool] = ..., nationality_code: _Optional[str] = ..., ethnicity_code: _Optional[str] = ..., occupation_code: _Optional[str] = ..., address: _Optional[str] = ..., commune_code: _Optional[str] = ..., district_code: _Optional[str] = ...) -> None: ...

class RegisterPatientResponse(_message.Message):
    __slots__ = ("patient", "outcome", "candidates", "review_task_id")
    PATIENT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    REVIEW_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    patient: Patient
    outcome: RegistrationOutcome
    candidates: _containers.RepeatedCompositeFieldContainer[MatchCandidate]
    review_task_id: str
    def __init__(self, patient: _Optional[_Union[Patient, _Mapping]] = ..., outcome: _Optional[_Union[RegistrationOutcome, str]] = ..., candidates: _Optional[_Iterable[_Union[MatchCandidate, _Mapping]]] = ..., review_task_id: _Optional[str] = ...) -> None: ...

class FieldContribution(_message.Message):
    __slots__ = ("field", "level", "weight")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    field: str
    level: str
    weight: float
    def __init__(self, field: _Optional[str] = ..., level: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class MatchCandidate(_message.Message):
    __slots__ = ("patient_id", "score", "contributions", "deterministic")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    DETERMINISTIC_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    score: float
    contributions: _containers.RepeatedCompositeFieldContainer[FieldContribution]
    deterministic: bool
    def __init__(self, patient_id: _Optional[str] = ..., score: _Optional[float] = ..., contributions: _Optional[_Iterable[_Union[FieldContribution, _Mapping]]] = ..., deterministic: _Optional[bool] = ...) -> None: ...

class MatchPatientRequest(_message.Message):
    __slots__ = ("demographics", "patient_id")
    DEMOGRAPHICS_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    demographics: RegisterPatientRequest
    patient_id: str
    def __init__(self, demographics: _Optional[_Union[RegisterPatientRequest, _Mapping]] = ..., patient_id: _Optional[str] = ...) -> None: ...

class MatchPatientResponse(_message.Message):
    __slots__ = ("decision", "candidates")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    decision: MatchDecision
    candidates: _containers.RepeatedCompositeFieldContainer[MatchCandidate]
    def __init__(self, decision: _Optional[_Union[MatchDecision, str]] = ..., candidates: _Optional[_Iterable[_Union[MatchCandidate, _Mapping]]] = ...) -> None: ...

class SearchPatientsRequest(_message.Message):
    __slots__ = ("identifier", "full_name", "birth_year", "exact_name", "phone", "page_size", "page_token")
    IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    FULL_NAME_FIELD_NUMBER: _ClassVar[int]
    BIRTH_YEAR_FIELD_NUMBER: _ClassVar[int]
    EXACT_NAME_FIELD_NUMBER: _ClassVar[int]
    PHONE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    identifier: Identifier
    full_name: str
    birth_year: int
    exact_name: bool
    phone: str
    page_size: int
    page_token: str
    def __init__(self, identifier: _Optional[_Union[Identifier, _Mapping]] = ..., full_name: _Optional[str] = ..., birth_year: _Optional[int] = ..., exact_name: _Optional[bool] = ..., phone: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class SearchPatientsResponse(_message.Message):
    __slots__ = ("patients", "next_page_token")
    PATIENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    patients: _containers.RepeatedCompositeFieldContainer[Patient]
    next_page_token: str
    def __init__(self, patients: _Optional[_Iterable[_Union[Patient, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ProposedDemographics(_message.Message):
    __slots__ = ("full_name", "birth_date", "sex")
    FULL_NAME_FIELD_NUMBER: _ClassVar[int]
    BIRTH_DATE_FIELD_NUMBER: _ClassVar[int]
    SEX_FIELD_NUMBER: _ClassVar[int]
    full_name: str
    birth_date: str
    sex: Sex
    def __init__(self, full_name: _Optional[str] = ..., birth_date: _Optional[str] = ..., sex: _Optional[_Union[Sex, str]] = ...) -> None: ...

class ReviewTask(_message.Message):
    __slots__ = ("review_task_id", "patient_id", "candidates", "open", "create_time", "kind", "proposed_demographics", "facility_code")
    REVIEW_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PROPOSED_DEMOGRAPHICS_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    review_task_id: str
    patient_id: str
    candidates: _containers.RepeatedCompositeFieldContainer[MatchCandidate]
    open: bool
    create_time: _timestamp_pb2.Timestamp
    kind: ReviewTaskKind
    proposed_demographics: ProposedDemographics
    facility_code: str
    def __init__(self, review_task_id: _Optional[str] = ..., patient_id: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[MatchCandidate, _Mapping]]] = ..., open: _Optional[bool] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[_Union[ReviewTaskKind, str]] = ..., proposed_demographics: _Optional[_Union[ProposedDemographics, _Mapping]] = ..., facility_code: _Optional[str] = ...) -> None: ...

class ListReviewTasksRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListReviewTasksResponse(_message.Message):
    __slots__ = ("review_tasks", "next_page_token")
    REVIEW_TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    review_tasks: _containers.RepeatedCompositeFieldContainer[ReviewTask]
    next_page_token: str
    def __init__(self, review_tasks: _Optional[_Iterable[_Union[ReviewTask, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ResolveReviewTaskRequest(_message.Message):
    __slots__ = ("request_id", "review_task_id", "resolution", "candidate_patient_id", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REVIEW_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    review_task_id: str
    resolution: ReviewResolution
    candidate_patient_id: str
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., review_task_id: _Optional[str] = ..., resolution: _Optional[_Union[ReviewResolution, str]] = ..., candidate_patient_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ResolveReviewTaskResponse(_message.Message):
    __slots__ = ("patient",)
    PATIENT_FIELD_NUMBER: _ClassVar[int]
    patient: Patient
    def __init__(self, patient: _Optional[_Union[Patient, _Mapping]] = ...) -> None: ...

class MergePatientsRequest(_message.Message):
    __slots__ = ("request_id", "survivor_patient_id", "merged_patient_id", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SURVIVOR_PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    MERGED_PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    survivor_patient_id: str
    merged_patient_id: str
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., survivor_patient_id: _Optional[str] = ..., merged_patient_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class MergePatientsResponse(_message.Message):
    __slots__ = ("patient",)
    PATIENT_FIELD_NUMBER: _ClassVar[int]
    patient: Patient
    def __init__(self, patient: _Optional[_Union[Patient, _Mapping]] = ...) -> None: ...

class UnmergePatientsRequest(_message.Message):
    __slots__ = ("request_id", "merged_patient_id", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MERGED_PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    merged_patient_id: str
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., merged_patient_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class UnmergePatientsResponse(_message.Message):
    __slots__ = ("restored", "survivor")
    RESTORED_FIELD_NUMBER: _ClassVar[int]
    SURVIVOR_FIELD_NUMBER: _ClassVar[int]
    restored: Patient
    survivor: Patient
    def __init__(self, restored: _Optional[_Union[Patient, _Mapping]] = ..., survivor: _Optional[_Union[Patient, _Mapping]] = ...) -> None: ...

class LinkEvent(_message.Message):
    __slots__ = ("event_id", "kind", "patient_id", "other_patient_id", "record_id", "actor_id", "reason", "time")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    OTHER_PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    kind: LinkEventKind
    patient_id: str
    other_patient_id: str
    record_id: str
    actor_id: str
    reason: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, event_id: _Optional[str] = ..., kind: _Optional[_Union[LinkEventKind, str]] = ..., patient_id: _Optional[str] = ..., other_patient_id: _Optional[str] = ..., record_id: _Optional[str] = ..., actor_id: _Optional[str] = ..., reason: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CheckRegistrationRequest(_message.Message):
    __slots__ = ("patient_id", "facility_code")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    facility_code: str
    def __init__(self, patient_id: _Optional[str] = ..., facility_code: _Optional[str] = ...) -> None: ...

class CheckRegistrationResponse(_message.Message):
    __slots__ = ("registered",)
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    registered: bool
    def __init__(self, registered: _Optional[bool] = ...) -> None: ...

class GetPersonHistoryRequest(_message.Message):
    __slots__ = ("patient_id",)
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    def __init__(self, patient_id: _Optional[str] = ...) -> None: ...

class GetPersonHistoryResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[LinkEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[LinkEvent, _Mapping]]] = ...) -> None: ...

class GetPatientRequest(_message.Message):
    __slots__ = ("patient_id",)
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    def __init__(self, patient_id: _Optional[str] = ...) -> None: ...

class GetPatientResponse(_message.Message):
    __slots__ = ("patient", "merged_from_patient_id", "record_ids", "merged_patient_ids")
    PATIENT_FIELD_NUMBER: _ClassVar[int]
    MERGED_FROM_PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_IDS_FIELD_NUMBER: _ClassVar[int]
    MERGED_PATIENT_IDS_FIELD_NUMBER: _ClassVar[int]
    patient: Patient
    merged_from_patient_id: str
    record_ids: _containers.RepeatedScalarFieldContainer[str]
    merged_patient_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, patient: _Optional[_Union[Patient, _Mapping]] = ..., merged_from_patient_id: _Optional[str] = ..., record_ids: _Optional[_Iterable[str]] = ..., merged_patient_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class PatientChange(_message.Message):
    __slots__ = ("sequence", "kind", "patient_id", "patient_version", "other_patient_id", "commit_time", "patient", "merged_into_patient_id", "merged_patient_ids")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    OTHER_PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    COMMIT_TIME_FIELD_NUMBER: _ClassVar[int]
    PATIENT_FIELD_NUMBER: _ClassVar[int]
    MERGED_INTO_PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    MERGED_PATIENT_IDS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    kind: PatientChangeKind
    patient_id: str
    patient_version: int
    other_patient_id: str
    commit_time: _timestamp_pb2.Timestamp
    patient: Patient
    merged_into_patient_id: str
    merged_patient_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sequence: _Optional[int] = ..., kind: _Optional[_Union[PatientChangeKind, str]] = ..., patient_id: _Optional[str] = ..., patient_version: _Optional[int] = ..., other_patient_id: _Optional[str] = ..., commit_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., patient: _Optional[_Union[Patient, _Mapping]] = ..., merged_into_patient_id: _Optional[str] = ..., merged_patient_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ListPatientChangesRequest(_message.Message):
    __slots__ = ("after_sequence", "limit")
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    after_sequence: int
    limit: int
    def __init__(self, after_sequence: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class ListPatientChangesResponse(_message.Message):
    __slots__ = ("changes", "next_after_sequence")
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[PatientChange]
    next_after_sequence: int
    def __init__(self, changes: _Optional[_Iterable[_Union[PatientChange, _Mapping]]] = ..., next_after_sequence: _Optional[int] = ...) -> None: ...

class SharingGrant(_message.Message):
    __slots__ = ("sharing_grant_id", "patient_id", "kind", "grantee_facility_code", "source_facility_code", "purpose", "evidence", "evidence_reference", "start_time", "end_time", "recorded_by_facility_code", "recorded_by", "revoke_time", "revoked_by", "categories")
    SHARING_GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    GRANTEE_FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    RECORDED_BY_FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    RECORDED_BY_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVOKED_BY_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    sharing_grant_id: str
    patient_id: str
    kind: SharingGrantKind
    grantee_facility_code: str
    source_facility_code: str
    purpose: SharingPurpose
    evidence: ConsentEvidence
    evidence_reference: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    recorded_by_facility_code: str
    recorded_by: str
    revoke_time: _timestamp_pb2.Timestamp
    revoked_by: str
    categories: _containers.RepeatedScalarFieldContainer[_sensitivity_pb2.SensitivityCategory]
    def __init__(self, sharing_grant_id: _Optional[str] = ..., patient_id: _Optional[str] = ..., kind: _Optional[_Union[SharingGrantKind, str]] = ..., grantee_facility_code: _Optional[str] = ..., source_facility_code: _Optional[str] = ..., purpose: _Optional[_Union[SharingPurpose, str]] = ..., evidence: _Optional[_Union[ConsentEvidence, str]] = ..., evidence_reference: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recorded_by_facility_code: _Optional[str] = ..., recorded_by: _Optional[str] = ..., revoke_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked_by: _Optional[str] = ..., categories: _Optional[_Iterable[_Union[_sensitivity_pb2.SensitivityCategory, str]]] = ...) -> None: ...

class RecordSharingGrantRequest(_message.Message):
    __slots__ = ("request_id", "patient_id", "grantee_facility_code", "purpose", "evidence", "evidence_reference", "end_time", "facility_code", "categories")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    GRANTEE_FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    patient_id: str
    grantee_facility_code: str
    purpose: SharingPurpose
    evidence: ConsentEvidence
    evidence_reference: str
    end_time: _timestamp_pb2.Timestamp
    facility_code: str
    categories: _containers.RepeatedScalarFieldContainer[_sensitivity_pb2.SensitivityCategory]
    def __init__(self, request_id: _Optional[str] = ..., patient_id: _Optional[str] = ..., grantee_facility_code: _Optional[str] = ..., purpose: _Optional[_Union[SharingPurpose, str]] = ..., evidence: _Optional[_Union[ConsentEvidence, str]] = ..., evidence_reference: _Optional[str] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., facility_code: _Optional[str] = ..., categories: _Optional[_Iterable[_Union[_sensitivity_pb2.SensitivityCategory, str]]] = ...) -> None: ...

class RecordSharingGrantResponse(_message.Message):
    __slots__ = ("sharing_grant",)
    SHARING_GRANT_FIELD_NUMBER: _ClassVar[int]
    sharing_grant: SharingGrant
    def __init__(self, sharing_grant: _Optional[_Union[SharingGrant, _Mapping]] = ...) -> None: ...

class RevokeSharingGrantRequest(_message.Message):
    __slots__ = ("request_id", "sharing_grant_id", "facility_code")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SHARING_GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    sharing_grant_id: str
    facility_code: str
    def __init__(self, request_id: _Optional[str] = ..., sharing_grant_id: _Optional[str] = ..., facility_code: _Optional[str] = ...) -> None: ...

class RevokeSharingGrantResponse(_message.Message):
    __slots__ = ("sharing_grant",)
    SHARING_GRANT_FIELD_NUMBER: _ClassVar[int]
    sharing_grant: SharingGrant
    def __init__(self, sharing_grant: _Optional[_Union[SharingGrant, _Mapping]] = ...) -> None: ...

class ListSharingGrantsRequest(_message.Message):
    __slots__ = ("patient_id",)
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    def __init__(self, patient_id: _Optional[str] = ...) -> None: ...

class ListSharingGrantsResponse(_message.Message):
    __slots__ = ("sharing_grants",)
    SHARING_GRANTS_FIELD_NUMBER: _ClassVar[int]
    sharing_grants: _containers.RepeatedCompositeFieldContainer[SharingGrant]
    def __init__(self, sharing_grants: _Optional[_Iterable[_Union[SharingGrant, _Mapping]]] = ...) -> None: ...

class RecordReferralRequest(_message.Message):
    __slots__ = ("request_id", "patient_id", "facility_code", "receiving_facility_code", "end_time")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    RECEIVING_FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    patient_id: str
    facility_code: str
    receiving_facility_code: str
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, request_id: _Optional[str] = ..., patient_id: _Optional[str] = ..., facility_code: _Optional[str] = ..., receiving_facility_code: _Optional[str] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RecordReferralResponse(_message.Message):
    __slots__ = ("sharing_grant",)
    SHARING_GRANT_FIELD_NUMBER: _ClassVar[int]
    sharing_grant: SharingGrant
    def __init__(self, sharing_grant: _Optional[_Union[SharingGrant, _Mapping]] = ...) -> None: ...

class EmergencyAccess(_message.Message):
    __slots__ = ("emergency_access_id", "patient_id", "facility_code", "declared_by", "reason", "justification", "start_time", "end_time", "review_outcome", "review_note", "reviewed_by", "review_time")
    EMERGENCY_ACCESS_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    DECLARED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    JUSTIFICATION_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    REVIEW_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REVIEW_NOTE_FIELD_NUMBER: _ClassVar[int]
    REVIEWED_BY_FIELD_NUMBER: _ClassVar[int]
    REVIEW_TIME_FIELD_NUMBER: _ClassVar[int]
    emergency_access_id: str
    patient_id: str
    facility_code: str
    declared_by: str
    reason: EmergencyReason
    justification: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    review_outcome: EmergencyReviewOutcome
    review_note: str
    reviewed_by: str
    review_time: _timestamp_pb2.Timestamp
    def __init__(self, emergency_access_id: _Optional[str] = ..., patient_id: _Optional[str] = ..., facility_code: _Optional[str] = ..., declared_by: _Optional[str] = ..., reason: _Optional[_Union[EmergencyReason, str]] = ..., justification: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., review_outcome: _Optional[_Union[EmergencyReviewOutcome, str]] = ..., review_note: _Optional[str] = ..., reviewed_by: _Optional[str] = ..., review_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DeclareEmergencyAccessRequest(_message.Message):
    __slots__ = ("request_id", "patient_id", "facility_code", "reason", "justification")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    JUSTIFICATION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    patient_id: str
    facility_code: str
    reason: EmergencyReason
    justification: str
    def __init__(self, request_id: _Optional[str] = ..., patient_id: _Optional[str] = ..., facility_code: _Optional[str] = ..., reason: _Optional[_Union[EmergencyReason, str]] = ..., justification: _Optional[str] = ...) -> None: ...

class DeclareEmergencyAccessResponse(_message.Message):
    __slots__ = ("emergency_access",)
    EMERGENCY_ACCESS_FIELD_NUMBER: _ClassVar[int]
    emergency_access: EmergencyAccess
    def __init__(self, emergency_access: _Optional[_Union[EmergencyAccess, _Mapping]] = ...) -> None: ...

class ListEmergencyAccessesRequest(_message.Message):
    __slots__ = ("unreviewed_only", "page_size", "page_token")
    UNREVIEWED_ONLY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    unreviewed_only: bool
    page_size: int
    page_token: str
    def __init__(self, unreviewed_only: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEmergencyAccessesResponse(_message.Message):
    __slots__ = ("emergency_accesses", "next_page_token")
    EMERGENCY_ACCESSES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    emergency_accesses: _containers.RepeatedCompositeFieldContainer[EmergencyAccess]
    next_page_token: str
    def __init__(self, emergency_accesses: _Optional[_Iterable[_Union[EmergencyAccess, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ReviewEmergencyAccessRequest(_message.Message):
    __slots__ = ("request_id", "emergency_access_id", "outcome", "note")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EMERGENCY_ACCESS_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    emergency_access_id: str
    outcome: EmergencyReviewOutcome
    note: str
    def __init__(self, request_id: _Optional[str] = ..., emergency_access_id: _Optional[str] = ..., outcome: _Optional[_Union[EmergencyReviewOutcome, str]] = ..., note: _Optional[str] = ...) -> None: ...

class ReviewEmergencyAccessResponse(_message.Message):
    __slots__ = ("emergency_access",)
    EMERGENCY_ACCESS_FIELD_NUMBER: _ClassVar[int]
    emergency_access: EmergencyAccess
    def __init__(self, emergency_access: _Optional[_Union[EmergencyAccess, _Mapping]] = ...) -> None: ...

class CheckAccessRequest(_message.Message):
    __slots__ = ("patient_id", "facility_code", "purpose_of_use", "export")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_OF_USE_FIELD_NUMBER: _ClassVar[int]
    EXPORT_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    facility_code: str
    purpose_of_use: str
    export: bool
    def __init__(self, patient_id: _Optional[str] = ..., facility_code: _Optional[str] = ..., purpose_of_use: _Optional[str] = ..., export: _Optional[bool] = ...) -> None: ...

class CheckAccessResponse(_message.Message):
    __slots__ = ("exists", "registered", "all_facilities", "visible_facility_codes", "sharing_grant_ids", "emergency_access_id", "emergency_reason", "resolved_patient_id", "sensitive_categories")
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    ALL_FACILITIES_FIELD_NUMBER: _ClassVar[int]
    VISIBLE_FACILITY_CODES_FIELD_NUMBER: _ClassVar[int]
    SHARING_GRANT_IDS_FIELD_NUMBER: _ClassVar[int]
    EMERGENCY_ACCESS_ID_FIELD_NUMBER: _ClassVar[int]
    EMERGENCY_REASON_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SENSITIVE_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    exists: bool
    registered: bool
    all_facilities: bool
    visible_facility_codes: _containers.RepeatedScalarFieldContainer[str]
    sharing_grant_ids: _containers.RepeatedScalarFieldContainer[str]
    emergency_access_id: str
    emergency_reason: str
    resolved_patient_id: str
    sensitive_categories: _containers.RepeatedScalarFieldContainer[_sensitivity_pb2.SensitivityCategory]
    def __init__(self, exists: _Optional[bool] = ..., registered: _Optional[bool] = ..., all_facilities: _Optional[bool] = ..., visible_facility_codes: _Optional[_Iterable[str]] = ..., sharing_grant_ids: _Optional[_Iterable[str]] = ..., emergency_access_id: _Optional[str] = ..., emergency_reason: _Optional[str] = ..., resolved_patient_id: _Optional[str] = ..., sensitive_categories: _Optional[_Iterable[_Union[_sensitivity_pb2.SensitivityCategory, str]]] = ...) -> None: ...
