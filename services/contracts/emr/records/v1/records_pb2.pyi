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
    ENCOUNTER_STATUS_ENTERED_IN_ERROR: _ClassVar[EncounterStatus]

class VisitType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VISIT_TYPE_UNSPECIFIED: _ClassVar[VisitType]
    VISIT_TYPE_EXAMINATION: _ClassVar[VisitType]
    VISIT_TYPE_OUTPATIENT_TREATMENT: _ClassVar[VisitType]
    VISIT_TYPE_INPATIENT: _ClassVar[VisitType]
    VISIT_TYPE_DAY_INPATIENT: _ClassVar[VisitType]
    VISIT_TYPE_CHRONIC_OUTPATIENT: _ClassVar[VisitType]
    VISIT_TYPE_STATION_STAY: _ClassVar[VisitType]
    VISIT_TYPE_SCHEDULED_DRUG_PICKUP: _ClassVar[VisitType]
    VISIT_TYPE_CHRONIC_OUTPATIENT_WITH_SERVICES: _ClassVar[VisitType]
    VISIT_TYPE_INPATIENT_UNDER_4_HOURS: _ClassVar[VisitType]
    VISIT_TYPE_OTHER: _ClassVar[VisitType]

class TreatmentOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TREATMENT_OUTCOME_UNSPECIFIED: _ClassVar[TreatmentOutcome]
    TREATMENT_OUTCOME_CURED: _ClassVar[TreatmentOutcome]
    TREATMENT_OUTCOME_IMPROVED: _ClassVar[TreatmentOutcome]
    TREATMENT_OUTCOME_UNCHANGED: _ClassVar[TreatmentOutcome]
    TREATMENT_OUTCOME_WORSENED: _ClassVar[TreatmentOutcome]
    TREATMENT_OUTCOME_DIED: _ClassVar[TreatmentOutcome]
    TREATMENT_OUTCOME_GRAVE_PROGNOSIS_TAKEN_HOME: _ClassVar[TreatmentOutcome]
    TREATMENT_OUTCOME_UNDETERMINED: _ClassVar[TreatmentOutcome]
    TREATMENT_OUTCOME_DIED_OUTSIDE_FACILITY: _ClassVar[TreatmentOutcome]

class DischargeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISCHARGE_KIND_UNSPECIFIED: _ClassVar[DischargeKind]
    DISCHARGE_KIND_DISCHARGED: _ClassVar[DischargeKind]
    DISCHARGE_KIND_TRANSFERRED: _ClassVar[DischargeKind]
    DISCHARGE_KIND_ABSCONDED: _ClassVar[DischargeKind]
    DISCHARGE_KIND_LEFT_ON_REQUEST: _ClassVar[DischargeKind]
    DISCHARGE_KIND_TRANSFERRED_ON_REQUEST: _ClassVar[DischargeKind]

class ChangeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_KIND_UNSPECIFIED: _ClassVar[ChangeKind]
    CHANGE_KIND_CREATED: _ClassVar[ChangeKind]
    CHANGE_KIND_UPDATED: _ClassVar[ChangeKind]

class ObservationStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OBSERVATION_STATUS_UNSPECIFIED: _ClassVar[ObservationStatus]
    OBSERVATION_STATUS_REGISTERED: _ClassVar[ObservationStatus]
    OBSERVATION_STATUS_PRELIMINARY: _ClassVar[ObservationStatus]
    OBSERVATION_STATUS_FINAL: _ClassVar[ObservationStatus]
    OBSERVATION_STATUS_AMENDED: _ClassVar[ObservationStatus]
    OBSERVATION_STATUS_ENTERED_IN_ERROR: _ClassVar[ObservationStatus]

class ConditionClinicalStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONDITION_CLINICAL_STATUS_UNSPECIFIED: _ClassVar[ConditionClinicalStatus]
    CONDITION_CLINICAL_STATUS_ACTIVE: _ClassVar[ConditionClinicalStatus]
    CONDITION_CLINICAL_STATUS_RECURRENCE: _ClassVar[ConditionClinicalStatus]
    CONDITION_CLINICAL_STATUS_RELAPSE: _ClassVar[ConditionClinicalStatus]
    CONDITION_CLINICAL_STATUS_INACTIVE: _ClassVar[ConditionClinicalStatus]
    CONDITION_CLINICAL_STATUS_REMISSION: _ClassVar[ConditionClinicalStatus]
    CONDITION_CLINICAL_STATUS_RESOLVED: _ClassVar[ConditionClinicalStatus]
    CONDITION_CLINICAL_STATUS_ENTERED_IN_ERROR: _ClassVar[ConditionClinicalStatus]

class DiagnosisRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIAGNOSIS_ROLE_UNSPECIFIED: _ClassVar[DiagnosisRole]
    DIAGNOSIS_ROLE_PRIMARY: _ClassVar[DiagnosisRole]
    DIAGNOSIS_ROLE_SECONDARY: _ClassVar[DiagnosisRole]

class MedicationRequestStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MEDICATION_REQUEST_STATUS_UNSPECIFIED: _ClassVar[MedicationRequestStatus]
    MEDICATION_REQUEST_STATUS_ACTIVE: _ClassVar[MedicationRequestStatus]
    MEDICATION_REQUEST_STATUS_COMPLETED: _ClassVar[MedicationRequestStatus]
    MEDICATION_REQUEST_STATUS_CANCELLED: _ClassVar[MedicationRequestStatus]
    MEDICATION_REQUEST_STATUS_STOPPED: _ClassVar[MedicationRequestStatus]
    MEDICATION_REQUEST_STATUS_ENTERED_IN_ERROR: _ClassVar[MedicationRequestStatus]

class ProcedureStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROCEDURE_STATUS_UNSPECIFIED: _ClassVar[ProcedureStatus]
    PROCEDURE_STATUS_PREPARATION: _ClassVar[ProcedureStatus]
    PROCEDURE_STATUS_IN_PROGRESS: _ClassVar[ProcedureStatus]
    PROCEDURE_STATUS_COMPLETED: _ClassVar[ProcedureStatus]
    PROCEDURE_STATUS_STOPPED: _ClassVar[ProcedureStatus]
    PROCEDURE_STATUS_ENTERED_IN_ERROR: _ClassVar[ProcedureStatus]

class DocumentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DOCUMENT_STATUS_UNSPECIFIED: _ClassVar[DocumentStatus]
    DOCUMENT_STATUS_CURRENT: _ClassVar[DocumentStatus]
    DOCUMENT_STATUS_SUPERSEDED: _ClassVar[DocumentStatus]
    DOCUMENT_STATUS_ENTERED_IN_ERROR: _ClassVar[DocumentStatus]

class ChargeLineKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHARGE_LINE_KIND_UNSPECIFIED: _ClassVar[ChargeLineKind]
    CHARGE_LINE_KIND_DRUG: _ClassVar[ChargeLineKind]
    CHARGE_LINE_KIND_SERVICE: _ClassVar[ChargeLineKind]
    CHARGE_LINE_KIND_SUPPLY: _ClassVar[ChargeLineKind]

class ChargeLineStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHARGE_LINE_STATUS_UNSPECIFIED: _ClassVar[ChargeLineStatus]
    CHARGE_LINE_STATUS_ACTIVE: _ClassVar[ChargeLineStatus]
    CHARGE_LINE_STATUS_CANCELLED: _ClassVar[ChargeLineStatus]
    CHARGE_LINE_STATUS_ENTERED_IN_ERROR: _ClassVar[ChargeLineStatus]

class AnaesthesiaMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ANAESTHESIA_METHOD_UNSPECIFIED: _ClassVar[AnaesthesiaMethod]
    ANAESTHESIA_METHOD_GENERAL: _ClassVar[AnaesthesiaMethod]
    ANAESTHESIA_METHOD_LOCAL: _ClassVar[AnaesthesiaMethod]
    ANAESTHESIA_METHOD_ACUPUNCTURE: _ClassVar[AnaesthesiaMethod]
    ANAESTHESIA_METHOD_OTHER: _ClassVar[AnaesthesiaMethod]

class SurgeryClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SURGERY_CLASS_UNSPECIFIED: _ClassVar[SurgeryClass]
    SURGERY_CLASS_SPECIAL: _ClassVar[SurgeryClass]
    SURGERY_CLASS_1: _ClassVar[SurgeryClass]
    SURGERY_CLASS_2: _ClassVar[SurgeryClass]
    SURGERY_CLASS_3: _ClassVar[SurgeryClass]

class ProgressNoteStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROGRESS_NOTE_STATUS_UNSPECIFIED: _ClassVar[ProgressNoteStatus]
    PROGRESS_NOTE_STATUS_CURRENT: _ClassVar[ProgressNoteStatus]
    PROGRESS_NOTE_STATUS_ENTERED_IN_ERROR: _ClassVar[ProgressNoteStatus]

class ResourceType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESOURCE_TYPE_UNSPECIFIED: _ClassVar[ResourceType]
    RESOURCE_TYPE_ENCOUNTER: _ClassVar[ResourceType]
    RESOURCE_TYPE_OBSERVATION: _ClassVar[ResourceType]
    RESOURCE_TYPE_CONDITION: _ClassVar[ResourceType]
    RESOURCE_TYPE_MEDICATION_REQUEST: _ClassVar[ResourceType]
    RESOURCE_TYPE_PROCEDURE: _ClassVar[ResourceType]
    RESOURCE_TYPE_DOCUMENT_REFERENCE: _ClassVar[ResourceType]
    RESOURCE_TYPE_CHARGE_LINE: _ClassVar[ResourceType]
    RESOURCE_TYPE_PROGRESS_NOTE: _ClassVar[ResourceType]
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
ENCOUNTER_STATUS_ENTERED_IN_ERROR: EncounterStatus
VISIT_TYPE_UNSPECIFIED: VisitType
VISIT_TYPE_EXAMINATION: VisitType
VISIT_TYPE_OUTPATIENT_TREATMENT: VisitType
VISIT_TYPE_INPATIENT: VisitType
VISIT_TYPE_DAY_INPATIENT: VisitType
VISIT_TYPE_CHRONIC_OUTPATIENT: VisitType
VISIT_TYPE_STATION_STAY: VisitType
VISIT_TYPE_SCHEDULED_DRUG_PICKUP: VisitType
VISIT_TYPE_CHRONIC_OUTPATIENT_WITH_SERVICES: VisitType
VISIT_TYPE_INPATIENT_UNDER_4_HOURS: VisitType
VISIT_TYPE_OTHER: VisitType
TREATMENT_OUTCOME_UNSPECIFIED: TreatmentOutcome
TREATMENT_OUTCOME_CURED: TreatmentOutcome
TREATMENT_OUTCOME_IMPROVED: TreatmentOutcome
TREATMENT_OUTCOME_UNCHANGED: TreatmentOutcome
TREATMENT_OUTCOME_WORSENED: TreatmentOutcome
TREATMENT_OUTCOME_DIED: TreatmentOutcome
TREATMENT_OUTCOME_GRAVE_PROGNOSIS_TAKEN_HOME: TreatmentOutcome
TREATMENT_OUTCOME_UNDETERMINED: TreatmentOutcome
TREATMENT_OUTCOME_DIED_OUTSIDE_FACILITY: TreatmentOutcome
DISCHARGE_KIND_UNSPECIFIED: DischargeKind
DISCHARGE_KIND_DISCHARGED: DischargeKind
DISCHARGE_KIND_TRANSFERRED: DischargeKind
DISCHARGE_KIND_ABSCONDED: DischargeKind
DISCHARGE_KIND_LEFT_ON_REQUEST: DischargeKind
DISCHARGE_KIND_TRANSFERRED_ON_REQUEST: DischargeKind
CHANGE_KIND_UNSPECIFIED: ChangeKind
CHANGE_KIND_CREATED: ChangeKind
CHANGE_KIND_UPDATED: ChangeKind
OBSERVATION_STATUS_UNSPECIFIED: ObservationStatus
OBSERVATION_STATUS_REGISTERED: ObservationStatus
OBSERVATION_STATUS_PRELIMINARY: ObservationStatus
OBSERVATION_STATUS_FINAL: ObservationStatus
OBSERVATION_STATUS_AMENDED: ObservationStatus
OBSERVATION_STATUS_ENTERED_IN_ERROR: ObservationStatus
CONDITION_CLINICAL_STATUS_UNSPECIFIED: ConditionClinicalStatus
CONDITION_CLINICAL_STATUS_ACTIVE: ConditionClinicalStatus
CONDITION_CLINICAL_STATUS_RECURRENCE: ConditionClinicalStatus
CONDITION_CLINICAL_STATUS_RELAPSE: ConditionClinicalStatus
CONDITION_CLINICAL_STATUS_INACTIVE: ConditionClinicalStatus
CONDITION_CLINICAL_STATUS_REMISSION: ConditionClinicalStatus
CONDITION_CLINICAL_STATUS_RESOLVED: ConditionClinicalStatus
CONDITION_CLINICAL_STATUS_ENTERED_IN_ERROR: ConditionClinicalStatus
DIAGNOSIS_ROLE_UNSPECIFIED: DiagnosisRole
DIAGNOSIS_ROLE_PRIMARY: DiagnosisRole
DIAGNOSIS_ROLE_SECONDARY: DiagnosisRole
MEDICATION_REQUEST_STATUS_UNSPECIFIED: MedicationRequestStatus
MEDICATION_REQUEST_STATUS_ACTIVE: MedicationRequestStatus
MEDICATION_REQUEST_STATUS_COMPLETED: MedicationRequestStatus
MEDICATION_REQUEST_STATUS_CANCELLED: MedicationRequestStatus
MEDICATION_REQUEST_STATUS_STOPPED: MedicationRequestStatus
MEDICATION_REQUEST_STATUS_ENTERED_IN_ERROR: MedicationRequestStatus
PROCEDURE_STATUS_UNSPECIFIED: ProcedureStatus
PROCEDURE_STATUS_PREPARATION: ProcedureStatus
PROCEDURE_STATUS_IN_PROGRESS: ProcedureStatus
PROCEDURE_STATUS_COMPLETED: ProcedureStatus
PROCEDURE_STATUS_STOPPED: ProcedureStatus
PROCEDURE_STATUS_ENTERED_IN_ERROR: ProcedureStatus
DOCUMENT_STATUS_UNSPECIFIED: DocumentStatus
DOCUMENT_STATUS_CURRENT: DocumentStatus
DOCUMENT_STATUS_SUPERSEDED: DocumentStatus
DOCUMENT_STATUS_ENTERED_IN_ERROR: DocumentStatus
CHARGE_LINE_KIND_UNSPECIFIED: ChargeLineKind
CHARGE_LINE_KIND_DRUG: ChargeLineKind
CHARGE_LINE_KIND_SERVICE: ChargeLineKind
CHARGE_LINE_KIND_SUPPLY: ChargeLineKind
CHARGE_LINE_STATUS_UNSPECIFIED: ChargeLineStatus
CHARGE_LINE_STATUS_ACTIVE: ChargeLineStatus
CHARGE_LINE_STATUS_CANCELLED: ChargeLineStatus
CHARGE_LINE_STATUS_ENTERED_IN_ERROR: ChargeLineStatus
ANAESTHESIA_METHOD_UNSPECIFIED: AnaesthesiaMethod
ANAESTHESIA_METHOD_GENERAL: AnaesthesiaMethod
ANAESTHESIA_METHOD_LOCAL: AnaesthesiaMethod
ANAESTHESIA_METHOD_ACUPUNCTURE: AnaesthesiaMethod
ANAESTHESIA_METHOD_OTHER: AnaesthesiaMethod
SURGERY_CLASS_UNSPECIFIED: SurgeryClass
SURGERY_CLASS_SPECIAL: SurgeryClass
SURGERY_CLASS_1: SurgeryClass
SURGERY_CLASS_2: SurgeryClass
SURGERY_CLASS_3: SurgeryClass
PROGRESS_NOTE_STATUS_UNSPECIFIED: ProgressNoteStatus
PROGRESS_NOTE_STATUS_CURRENT: ProgressNoteStatus
PROGRESS_NOTE_STATUS_ENTERED_IN_ERROR: ProgressNoteStatus
RESOURCE_TYPE_UNSPECIFIED: ResourceType
RESOURCE_TYPE_ENCOUNTER: ResourceType
RESOURCE_TYPE_OBSERVATION: ResourceType
RESOURCE_TYPE_CONDITION: ResourceType
RESOURCE_TYPE_MEDICATION_REQUEST: ResourceType
RESOURCE_TYPE_PROCEDURE: ResourceType
RESOURCE_TYPE_DOCUMENT_REFERENCE: ResourceType
RESOURCE_TYPE_CHARGE_LINE: ResourceType
RESOURCE_TYPE_PROGRESS_NOTE: ResourceType

class Encounter(_message.Message):
    __slots__ = ("encounter_id", "patient_id", "facility_code", "encounter_class", "status", "start_time", "end_time", "reason", "version", "create_time", "department", "practitioner_id", "discharge_disposition", "insurance", "update_time", "insurance_cards", "visit_type", "admission", "discharge", "departments", "weight_kg", "medical_record_number", "treatment_method", "sensitivity")
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
    DEPARTMENT_FIELD_NUMBER: _ClassVar[int]
    PRACTITIONER_ID_FIELD_NUMBER: _ClassVar[int]
    DISCHARGE_DISPOSITION_FIELD_NUMBER: _ClassVar[int]
    INSURANCE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    INSURANCE_CARDS_FIELD_NUMBER: _ClassVar[int]
    VISIT_TYPE_FIELD_NUMBER: _ClassVar[int]
    ADMISSION_FIELD_NUMBER: _ClassVar[int]
    DISCHARGE_FIELD_NUMBER: _ClassVar[int]
    DEPARTMENTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_KG_FIELD_NUMBER: _ClassVar[int]
    MEDICAL_RECORD_NUMBER_FIELD_NUMBER: _ClassVar[int]
    TREATMENT_METHOD_FIELD_NUMBER: _ClassVar[int]
    SENSITIVITY_FIELD_NUMBER: _ClassVar[int]
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
    department: str
    practitioner_id: str
    discharge_disposition: str
    insurance: EncounterInsurance
    update_time: _timestamp_pb2.Timestamp
    insurance_cards: _containers.RepeatedCompositeFieldContainer[InsuranceCard]
    visit_type: VisitType
    admission: EncounterAdmission
    discharge: EncounterDischarge
    departments: _containers.RepeatedCompositeFieldContainer[EncounterDepartment]
    weight_kg: str
    medical_record_number: str
    treatment_method: str
    sensitivity: _containers.RepeatedScalarFieldContainer[_sensitivity_pb2.SensitivityCategory]
    def __init__(self, encounter_id: _Optional[str] = ..., patient_id: _Optional[str] = ..., facility_code: _Optional[str] = ..., encounter_class: _Optional[_Union[EncounterClass, str]] = ..., status: _Optional[_Union[EncounterStatus, str]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., version: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., department: _Optional[str] = ..., practitioner_id: _Optional[str] = ..., discharge_disposition: _Optional[str] = ..., insurance: _Optional[_Union[EncounterInsurance, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., insurance_cards: _Optional[_Iterable[_Union[InsuranceCard, _Mapping]]] = ..., visit_type: _Optional[_Union[VisitType, str]] = ..., admission: _Optional[_Union[EncounterAdmission, _Mapping]] = ..., discharge: _Optional[_Union[EncounterDischarge, _Mapping]] = ..., departments: _Optional[_Iterable[_Union[EncounterDepartment, _Mapping]]] = ..., weight_kg: _Optional[str] = ..., medical_record_number: _Optional[str] = ..., treatment_method: _Optional[str] = ..., sensitivity: _Optional[_Iterable[_Union[_sensitivity_pb2.SensitivityCategory, str]]] = ...) -> None: ...

class InsuranceCard(_message.Message):
    __slots__ = ("card_number", "registered_facility_code", "valid_from", "valid_to")
    CARD_NUMBER_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    VALID_FROM_FIELD_NUMBER: _ClassVar[int]
    VALID_TO_FIELD_NUMBER: _ClassVar[int]
    card_number: str
    registered_facility_code: str
    valid_from: str
    valid_to: str
    def __init__(self, card_number: _Optional[str] = ..., registered_facility_code: _Optional[str] = ..., valid_from: _Optional[str] = ..., valid_to: _Optional[str] = ...) -> None: ...

class EncounterAdmission(_message.Message):
    __slots__ = ("reason", "admission_diagnosis", "inpatient_admission_time", "referred_from_facility_code", "referral_paper_number", "accident_code", "inpatient_reason", "inpatient_reason_code", "visit_subject_code")
    REASON_FIELD_NUMBER: _ClassVar[int]
    ADMISSION_DIAGNOSIS_FIELD_NUMBER: _ClassVar[int]
    INPATIENT_ADMISSION_TIME_FIELD_NUMBER: _ClassVar[int]
    REFERRED_FROM_FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    REFERRAL_PAPER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    ACCIDENT_CODE_FIELD_NUMBER: _ClassVar[int]
    INPATIENT_REASON_FIELD_NUMBER: _ClassVar[int]
    INPATIENT_REASON_CODE_FIELD_NUMBER: _ClassVar[int]
    VISIT_SUBJECT_CODE_FIELD_NUMBER: _ClassVar[int]
    reason: str
    admission_diagnosis: str
    inpatient_admission_time: _timestamp_pb2.Timestamp
    referred_from_facility_code: str
    referral_paper_number: str
    accident_code: str
    inpatient_reason: str
    inpatient_reason_code: str
    visit_subject_code: str
    def __init__(self, reason: _Optional[str] = ..., admission_diagnosis: _Optional[str] = ..., inpatient_admission_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., referred_from_facility_code: _Optional[str] = ..., referral_paper_number: _Optional[str] = ..., accident_code: _Optional[str] = ..., inpatient_reason: _Optional[str] = ..., inpatient_reason_code: _Optional[str] = ..., visit_subject_code: _Optional[str] = ...) -> None: ...

class EncounterDischarge(_message.Message):
    __slots__ = ("discharge_diagnosis", "outcome", "kind", "referred_to_facility_code", "follow_up_date")
    DISCHARGE_DIAGNOSIS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REFERRED_TO_FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_UP_DATE_FIELD_NUMBER: _ClassVar[int]
    discharge_diagnosis: str
    outcome: TreatmentOutcome
    kind: DischargeKind
    referred_to_facility_code: str
    follow_up_date: str
    def __init__(self, discharge_diagnosis: _Optional[str] = ..., outcome: _Optional[_Union[TreatmentOutcome, str]] = ..., kind: _Optional[_Union[DischargeKind, str]] = ..., referred_to_facility_code: _Optional[str] = ..., follow_up_date: _Optional[str] = ...) -> None: ...

class EncounterDepartment(_message.Message):
    __slots__ = ("department_code", "start_time")
    DEPARTMENT_CODE_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    department_code: str
    start_time: _timestamp_pb2.Timestamp
    def __init__(self, department_code: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class EncounterInsurance(_message.Message):
    __slots__ = ("bhyt_number", "benefit_level")
    BHYT_NUMBER_FIELD_NUMBER: _ClassVar[int]
    BENEFIT_LEVEL_FIELD_NUMBER: _ClassVar[int]
    bhyt_number: str
    benefit_level: int
    def __init__(self, bhyt_number: _Optional[str] = ..., benefit_level: _Optional[int] = ...) -> None: ...

class CreateEncounterRequest(_message.Message):
    __slots__ = ("request_id", "patient_id", "facility_code", "encounter_class", "status", "start_time", "end_time", "reason", "department", "practitioner_id", "discharge_disposition", "insurance", "insurance_cards", "visit_type", "admission", "discharge", "departments", "weight_kg", "medical_record_number", "treatment_method", "sensitivity")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    ENCOUNTER_CLASS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DEPARTMENT_FIELD_NUMBER: _ClassVar[int]
    PRACTITIONER_ID_FIELD_NUMBER: _ClassVar[int]
    DISCHARGE_DISPOSITION_FIELD_NUMBER: _ClassVar[int]
    INSURANCE_FIELD_NUMBER: _ClassVar[int]
    INSURANCE_CARDS_FIELD_NUMBER: _ClassVar[int]
    VISIT_TYPE_FIELD_NUMBER: _ClassVar[int]
    ADMISSION_FIELD_NUMBER: _ClassVar[int]
    DISCHARGE_FIELD_NUMBER: _ClassVar[int]
    DEPARTMENTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_KG_FIELD_NUMBER: _ClassVar[int]
    MEDICAL_RECORD_NUMBER_FIELD_NUMBER: _ClassVar[int]
    TREATMENT_METHOD_FIELD_NUMBER: _ClassVar[int]
    SENSITIVITY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    patient_id: str
    facility_code: str
    encounter_class: EncounterClass
    status: EncounterStatus
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    reason: str
    department: str
    practitioner_id: str
    discharge_disposition: str
    insurance: EncounterInsurance
    insurance_cards: _containers.RepeatedCompositeFieldContainer[InsuranceCard]
    visit_type: VisitType
    admission: EncounterAdmission
    discharge: EncounterDischarge
    departments: _containers.RepeatedCompositeFieldContainer[EncounterDepartment]
    weight_kg: str
    medical_record_number: str
    treatment_method: str
    sensitivity: _containers.RepeatedScalarFieldContainer[_sensitivity_pb2.SensitivityCategory]
    def __init__(self, request_id: _Optional[str] = ..., patient_id: _Optional[str] = ..., facility_code: _Optional[str] = ..., encounter_class: _Optional[_Union[EncounterClass, str]] = ..., status: _Optional[_Union[EncounterStatus, str]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., department: _Optional[str] = ..., practitioner_id: _Optional[str] = ..., discharge_disposition: _Optional[str] = ..., insurance: _Optional[_Union[EncounterInsurance, _Mapping]] = ..., insurance_cards: _Optional[_Iterable[_Union[InsuranceCard, _Mapping]]] = ..., visit_type: _Optional[_Union[VisitType, str]] = ..., admission: _Optional[_Union[EncounterAdmission, _Mapping]] = ..., discharge: _Optional[_Union[EncounterDischarge, _Mapping]] = ..., departments: _Optional[_Iterable[_Union[EncounterDepartment, _Mapping]]] = ..., weight_kg: _Optional[str] = ..., medical_record_number: _Optional[str] = ..., treatment_method: _Optional[str] = ..., sensitivity: _Optional[_Iterable[_Union[_sensitivity_pb2.SensitivityCategory, str]]] = ...) -> None: ...

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
    __slots__ = ("sequence", "kind", "resource_type", "resource_id", "resource_version", "patient_id", "facility_code", "commit_time", "encounter", "resource")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_TIME_FIELD_NUMBER: _ClassVar[int]
    ENCOUNTER_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    kind: ChangeKind
    resource_type: str
    resource_id: str
    resource_version: int
    patient_id: str
    facility_code: str
    commit_time: _timestamp_pb2.Timestamp
    encounter: Encounter
    resource: ClinicalResource
    def __init__(self, sequence: _Optional[int] = ..., kind: _Optional[_Union[ChangeKind, str]] = ..., resource_type: _Optional[str] = ..., resource_id: _Optional[str] = ..., resource_version: _Optional[int] = ..., patient_id: _Optional[str] = ..., facility_code: _Optional[str] = ..., commit_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., encounter: _Optional[_Union[Encounter, _Mapping]] = ..., resource: _Optional[_Union[ClinicalResource, _Mapping]] = ...) -> None: ...

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

class StreamChangesRequest(_message.Message):
    __slots__ = ("after_sequence",)
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    after_sequence: int
    def __init__(self, after_sequence: _Optional[int] = ...) -> None: ...

class StreamChangesResponse(_message.Message):
    __slots__ = ("change",)
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    change: Change
    def __init__(self, change: _Optional[_Union[Change, _Mapping]] = ...) -> None: ...

class Quantity(_message.Message):
    __slots__ = ("value", "unit")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    value: float
    unit: str
    def __init__(self, value: _Optional[float] = ..., unit: _Optional[str] = ...) -> None: ...

class Coding(_message.Message):
    __slots__ = ("system", "code", "display")
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_FIELD_NUMBER: _ClassVar[int]
    system: str
    code: str
    display: str
    def __init__(self, system: _Optional[str] = ..., code: _Optional[str] = ..., display: _Optional[str] = ...) -> None: ...

class ReferenceRange(_message.Message):
    __slots__ = ("low", "high")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    low: Quantity
    high: Quantity
    def __init__(self, low: _Optional[_Union[Quantity, _Mapping]] = ..., high: _Optional[_Union[Quantity, _Mapping]] = ...) -> None: ...

class Observation(_message.Message):
    __slots__ = ("observation_id", "patient_id", "facility_code", "encounter_id", "loinc_code", "status", "value_quantity", "value_coding", "value_text", "reference_range", "interpretation", "effective_time", "version", "create_time", "update_time", "index_code", "index_name", "service_code", "reading_practitioner_code", "description", "conclusion")
    OBSERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    ENCOUNTER_ID_FIELD_NUMBER: _ClassVar[int]
    LOINC_CODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VALUE_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    VALUE_CODING_FIELD_NUMBER: _ClassVar[int]
    VALUE_TEXT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_RANGE_FIELD_NUMBER: _ClassVar[int]
    INTERPRETATION_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_TIME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    INDEX_CODE_FIELD_NUMBER: _ClassVar[int]
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_CODE_FIELD_NUMBER: _ClassVar[int]
    READING_PRACTITIONER_CODE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CONCLUSION_FIELD_NUMBER: _ClassVar[int]
    observation_id: str
    patient_id: str
    facility_code: str
    encounter_id: str
    loinc_code: str
    status: ObservationStatus
    value_quantity: Quantity
    value_coding: Coding
    value_text: str
    reference_range: ReferenceRange
    interpretation: str
    effective_time: _timestamp_pb2.Timestamp
    version: int
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    index_code: str
    index_name: str
    service_code: str
    reading_practitioner_code: str
    description: str
    conclusion: str
    def __init__(self, observation_id: _Optional[str] = ..., patient_id: _Optional[str] = ..., facility_code: _Optional[str] = ..., encounter_id: _Optional[str] = ..., loinc_code: _Optional[str] = ..., status: _Optional[_Union[ObservationStatus, str]] = ..., value_quantity: _Optional[_Union[Quantity, _Mapping]] = ..., value_coding: _Optional[_Union[Coding, _Mapping]] = ..., value_text: _Optional[str] = ..., reference_range: _Optional[_Union[ReferenceRange, _Mapping]] = ..., interpretation: _Optional[str] = ..., effective_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., version: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., index_code: _Optional[str] = ..., index_name: _Optional[str] = ..., service_code: _Optional[str] = ..., reading_practitioner_code: _Optional[str] = ..., description: _Optional[str] = ..., conclusion: _Optional[str] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("condition_id", "patient_id", "facility_code", "encounter_id", "icd10_code", "clinical_status", "role", "onset_time", "recorded_time", "version", "create_time", "update_time")
    CONDITION_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    ENCOUNTER_ID_FIELD_NUMBER: _ClassVar[int]
    ICD10_CODE_FIELD_NUMBER: _ClassVar[int]
    CLINICAL_STATUS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ONSET_TIME_FIELD_NUMBER: _ClassVar[int]
    RECORDED_TIME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    condition_id: str
    patient_id: str
    facility_code: str
    encounter_id: str
    icd10_code: str
    clinical_status: ConditionClinicalStatus
    role: DiagnosisRole
    onset_time: _timestamp_pb2.Timestamp
    recorded_time: _timestamp_pb2.Timestamp
    version: int
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, condition_id: _Optional[str] = ..., patient_id: _Optional[str] = ..., facility_code: _Optional[str] = ..., encounter_id: _Optional[str] = ..., icd10_code: _Optional[str] = ..., clinical_status: _Optional[_Union[ConditionClinicalStatus, str]] = ..., role: _Optional[_Union[DiagnosisRole, str]] = ..., onset_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recorded_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., version: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class MedicationRequest(_message.Message):
    __slots__ = ("medication_request_id", "patient_id", "facility_code", "encounter_id", "drug_code", "drug_name", "status", "dose", "route", "doses_per_day", "duration_days", "quantity", "authored_time", "version", "create_time", "update_time")
    MEDICATION_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    ENCOUNTER_ID_FIELD_NUMBER: _ClassVar[int]
    DRUG_CODE_FIELD_NUMBER: _ClassVar[int]
    DRUG_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DOSE_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    DOSES_PER_DAY_FIELD_NUMBER: _ClassVar[int]
    DURATION_DAYS_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    AUTHORED_TIME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    medication_request_id: str
    patient_id: str
    facility_code: str
    encounter_id: str
    drug_code: str
    drug_name: str
    status: MedicationRequestStatus
    dose: Quantity
    route: str
    doses_per_day: int
    duration_days: int
    quantity: Quantity
    authored_time: _timestamp_pb2.Timestamp
    version: int
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, medication_request_id: _Optional[str] = ..., patient_id: _Optional[str] = ..., facility_code: _Optional[str] = ..., encounter_id: _Optional[str] = ..., drug_code: _Optional[str] = ..., drug_name: _Optional[str] = ..., status: _Optional[_Union[MedicationRequestStatus, str]] = ..., dose: _Optional[_Union[Quantity, _Mapping]] = ..., route: _Optional[str] = ..., doses_per_day: _Optional[int] = ..., duration_days: _Optional[int] = ..., quantity: _Optional[_Union[Quantity, _Mapping]] = ..., authored_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., version: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Procedure(_message.Message):
    __slots__ = ("procedure_id", "patient_id", "facility_code", "encounter_id", "code", "status", "performed_start_time", "performed_end_time", "performer_id", "version", "create_time", "update_time")
    PROCEDURE_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    ENCOUNTER_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PERFORMED_START_TIME_FIELD_NUMBER: _ClassVar[int]
    PERFORMED_END_TIME_FIELD_NUMBER: _ClassVar[int]
    PERFORMER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    procedure_id: str
    patient_id: str
    facility_code: str
    encounter_id: str
    code: str
    status: ProcedureStatus
    performed_start_time: _timestamp_pb2.Timestamp
    performed_end_time: _timestamp_pb2.Timestamp
    performer_id: str
    version: int
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, procedure_id: _Optional[str] = ..., patient_id: _Optional[str] = ..., facility_code: _Optional[str] = ..., encounter_id: _Optional[str] = ..., code: _Optional[str] = ..., status: _Optional[_Union[ProcedureStatus, str]] = ..., performed_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., performed_end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., performer_id: _Optional[str] = ..., version: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DocumentSignature(_message.Message):
    __slots__ = ("signer_id", "certificate_thumbprint", "algorithm", "signed_time")
    SIGNER_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_THUMBPRINT_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    SIGNED_TIME_FIELD_NUMBER: _ClassVar[int]
    signer_id: str
    certificate_thumbprint: str
    algorithm: str
    signed_time: _timestamp_pb2.Timestamp
    def __init__(self, signer_id: _Optional[str] = ..., certificate_thumbprint: _Optional[str] = ..., algorithm: _Optional[str] = ..., signed_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DocumentReference(_message.Message):
    __slots__ = ("document_id", "patient_id", "facility_code", "encounter_id", "type_code", "status", "content_type", "content", "content_sha256", "signature", "document_time", "version", "create_time", "update_time")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    ENCOUNTER_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_CODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_TIME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    patient_id: str
    facility_code: str
    encounter_id: str
    type_code: str
    status: DocumentStatus
    content_type: str
    content: bytes
    content_sha256: str
    signature: DocumentSignature
    document_time: _timestamp_pb2.Timestamp
    version: int
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, document_id: _Optional[str] = ..., patient_id: _Optional[str] = ..., facility_code: _Optional[str] = ..., encounter_id: _Optional[str] = ..., type_code: _Optional[str] = ..., status: _Optional[_Union[DocumentStatus, str]] = ..., content_type: _Optional[str] = ..., content: _Optional[bytes] = ..., content_sha256: _Optional[str] = ..., signature: _Optional[_Union[DocumentSignature, _Mapping]] = ..., document_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., version: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ClinicalResource(_message.Message):
    __slots__ = ("encounter", "observation", "condition", "medication_request", "procedure", "document_reference", "charge_line", "progress_note", "sensitivity")
    ENCOUNTER_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    MEDICATION_REQUEST_FIELD_NUMBER: _ClassVar[int]
    PROCEDURE_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    CHARGE_LINE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_NOTE_FIELD_NUMBER: _ClassVar[int]
    SENSITIVITY_FIELD_NUMBER: _ClassVar[int]
    encounter: Encounter
    observation: Observation
    condition: Condition
    medication_request: MedicationRequest
    procedure: Procedure
    document_reference: DocumentReference
    charge_line: ChargeLine
    progress_note: ProgressNote
    sensitivity: _containers.RepeatedScalarFieldContainer[_sensitivity_pb2.SensitivityCategory]
    def __init__(self, encounter: _Optional[_Union[Encounter, _Mapping]] = ..., observation: _Optional[_Union[Observation, _Mapping]] = ..., condition: _Optional[_Union[Condition, _Mapping]] = ..., medication_request: _Optional[_Union[MedicationRequest, _Mapping]] = ..., procedure: _Optional[_Union[Procedure, _Mapping]] = ..., document_reference: _Optional[_Union[DocumentReference, _Mapping]] = ..., charge_line: _Optional[_Union[ChargeLine, _Mapping]] = ..., progress_note: _Optional[_Union[ProgressNote, _Mapping]] = ..., sensitivity: _Optional[_Iterable[_Union[_sensitivity_pb2.SensitivityCategory, str]]] = ...) -> None: ...

class ChargeLineDrug(_message.Message):
    __slots__ = ("strength", "route_code", "dose", "usage", "registration_number", "dosage_form")
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    ROUTE_CODE_FIELD_NUMBER: _ClassVar[int]
    DOSE_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    REGISTRATION_NUMBER_FIELD_NUMBER: _ClassVar[int]
    DOSAGE_FORM_FIELD_NUMBER: _ClassVar[int]
    strength: str
    route_code: str
    dose: str
    usage: str
    registration_number: str
    dosage_form: str
    def __init__(self, strength: _Optional[str] = ..., route_code: _Optional[str] = ..., dose: _Optional[str] = ..., usage: _Optional[str] = ..., registration_number: _Optional[str] = ..., dosage_form: _Optional[str] = ...) -> None: ...

class ChargeLineService(_message.Message):
    __slots__ = ("bed_code", "anaesthesia_method", "surgery_class", "diagnosis_codes")
    BED_CODE_FIELD_NUMBER: _ClassVar[int]
    ANAESTHESIA_METHOD_FIELD_NUMBER: _ClassVar[int]
    SURGERY_CLASS_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSIS_CODES_FIELD_NUMBER: _ClassVar[int]
    bed_code: str
    anaesthesia_method: AnaesthesiaMethod
    surgery_class: SurgeryClass
    diagnosis_codes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, bed_code: _Optional[str] = ..., anaesthesia_method: _Optional[_Union[AnaesthesiaMethod, str]] = ..., surgery_class: _Optional[_Union[SurgeryClass, str]] = ..., diagnosis_codes: _Optional[_Iterable[str]] = ...) -> None: ...

class ChargeLine(_message.Message):
    __slots__ = ("charge_line_id", "patient_id", "facility_code", "encounter_id", "kind", "status", "code", "name", "unit", "payment_group", "scope", "quantity", "hospital_unit_price", "insurance_unit_price", "bid_info", "service_payment_ratio", "insurance_payment_ratio", "department_code", "ordering_practitioner_code", "performer_code", "order_time", "execution_time", "result_time", "drug", "service", "version", "create_time", "update_time")
    CHARGE_LINE_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    ENCOUNTER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_GROUP_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    HOSPITAL_UNIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    INSURANCE_UNIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    BID_INFO_FIELD_NUMBER: _ClassVar[int]
    SERVICE_PAYMENT_RATIO_FIELD_NUMBER: _ClassVar[int]
    INSURANCE_PAYMENT_RATIO_FIELD_NUMBER: _ClassVar[int]
    DEPARTMENT_CODE_FIELD_NUMBER: _ClassVar[int]
    ORDERING_PRACTITIONER_CODE_FIELD_NUMBER: _ClassVar[int]
    PERFORMER_CODE_FIELD_NUMBER: _ClassVar[int]
    ORDER_TIME_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TIME_FIELD_NUMBER: _ClassVar[int]
    RESULT_TIME_FIELD_NUMBER: _ClassVar[int]
    DRUG_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    charge_line_id: str
    patient_id: str
    facility_code: str
    encounter_id: str
    kind: ChargeLineKind
    status: ChargeLineStatus
    code: str
    name: str
    unit: str
    payment_group: str
    scope: str
    quantity: str
    hospital_unit_price: str
    insurance_unit_price: str
    bid_info: str
    service_payment_ratio: int
    insurance_payment_ratio: int
    department_code: str
    ordering_practitioner_code: str
    performer_code: str
    order_time: _timestamp_pb2.Timestamp
    execution_time: _timestamp_pb2.Timestamp
    result_time: _timestamp_pb2.Timestamp
    drug: ChargeLineDrug
    service: ChargeLineService
    version: int
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, charge_line_id: _Optional[str] = ..., patient_id: _Optional[str] = ..., facility_code: _Optional[str] = ..., encounter_id: _Optional[str] = ..., kind: _Optional[_Union[ChargeLineKind, str]] = ..., status: _Optional[_Union[ChargeLineStatus, str]] = ..., code: _Optional[str] = ..., name: _Optional[str] = ..., unit: _Optional[str] = ..., payment_group: _Optional[str] = ..., scope: _Optional[str] = ..., quantity: _Optional[str] = ..., hospital_unit_price: _Optional[str] = ..., insurance_unit_price: _Optional[str] = ..., bid_info: _Optional[str] = ..., service_payment_ratio: _Optional[int] = ..., insurance_payment_ratio: _Optional[int] = ..., department_code: _Optional[str] = ..., ordering_practitioner_code: _Optional[str] = ..., performer_code: _Optional[str] = ..., order_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., execution_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., result_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., drug: _Optional[_Union[ChargeLineDrug, _Mapping]] = ..., service: _Optional[_Union[ChargeLineService, _Mapping]] = ..., version: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ProgressNote(_message.Message):
    __slots__ = ("progress_note_id", "patient_id", "facility_code", "encounter_id", "status", "clinical_course", "disease_stage", "consultation", "surgery", "note_time", "performer_code", "version", "create_time", "update_time")
    PROGRESS_NOTE_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    ENCOUNTER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CLINICAL_COURSE_FIELD_NUMBER: _ClassVar[int]
    DISEASE_STAGE_FIELD_NUMBER: _ClassVar[int]
    CONSULTATION_FIELD_NUMBER: _ClassVar[int]
    SURGERY_FIELD_NUMBER: _ClassVar[int]
    NOTE_TIME_FIELD_NUMBER: _ClassVar[int]
    PERFORMER_CODE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    progress_note_id: str
    patient_id: str
    facility_code: str
    encounter_id: str
    status: ProgressNoteStatus
    clinical_course: str
    disease_stage: str
    consultation: str
    surgery: str
    note_time: _timestamp_pb2.Timestamp
    performer_code: str
    version: int
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, progress_note_id: _Optional[str] = ..., patient_id: _Optional[str] = ..., facility_code: _Optional[str] = ..., encounter_id: _Optional[str] = ..., status: _Optional[_Union[ProgressNoteStatus, str]] = ..., clinical_course: _Optional[str] = ..., disease_stage: _Optional[str] = ..., consultation: _Optional[str] = ..., surgery: _Optional[str] = ..., note_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., performer_code: _Optional[str] = ..., version: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateResourceRequest(_message.Message):
    __slots__ = ("request_id", "resource")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    resource: ClinicalResource
    def __init__(self, request_id: _Optional[str] = ..., resource: _Optional[_Union[ClinicalResource, _Mapping]] = ...) -> None: ...

class CreateResourceResponse(_message.Message):
    __slots__ = ("resource",)
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    resource: ClinicalResource
    def __init__(self, resource: _Optional[_Union[ClinicalResource, _Mapping]] = ...) -> None: ...

class UpdateResourceRequest(_message.Message):
    __slots__ = ("request_id", "resource", "expected_version")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    resource: ClinicalResource
    expected_version: int
    def __init__(self, request_id: _Optional[str] = ..., resource: _Optional[_Union[ClinicalResource, _Mapping]] = ..., expected_version: _Optional[int] = ...) -> None: ...

class UpdateResourceResponse(_message.Message):
    __slots__ = ("resource",)
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    resource: ClinicalResource
    def __init__(self, resource: _Optional[_Union[ClinicalResource, _Mapping]] = ...) -> None: ...

class GetResourceRequest(_message.Message):
    __slots__ = ("resource_type", "resource_id")
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    resource_type: ResourceType
    resource_id: str
    def __init__(self, resource_type: _Optional[_Union[ResourceType, str]] = ..., resource_id: _Optional[str] = ...) -> None: ...

class GetResourceResponse(_message.Message):
    __slots__ = ("resource",)
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    resource: ClinicalResource
    def __init__(self, resource: _Optional[_Union[ClinicalResource, _Mapping]] = ...) -> None: ...

class GetResourceHistoryRequest(_message.Message):
    __slots__ = ("resource_type", "resource_id")
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    resource_type: ResourceType
    resource_id: str
    def __init__(self, resource_type: _Optional[_Union[ResourceType, str]] = ..., resource_id: _Optional[str] = ...) -> None: ...

class ResourceVersion(_message.Message):
    __slots__ = ("version", "content_sha256", "author_id", "recorded_time", "resource")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDED_TIME_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    version: int
    content_sha256: str
    author_id: str
    recorded_time: _timestamp_pb2.Timestamp
    resource: ClinicalResource
    def __init__(self, version: _Optional[int] = ..., content_sha256: _Optional[str] = ..., author_id: _Optional[str] = ..., recorded_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resource: _Optional[_Union[ClinicalResource, _Mapping]] = ...) -> None: ...

class GetResourceHistoryResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[ResourceVersion]
    def __init__(self, versions: _Optional[_Iterable[_Union[ResourceVersion, _Mapping]]] = ...) -> None: ...

class GetPatientTimelineRequest(_message.Message):
    __slots__ = ("patient_id", "resource_types", "start_time", "end_time", "facility_code", "page_size", "page_token")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPES_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    resource_types: _containers.RepeatedScalarFieldContainer[ResourceType]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    facility_code: str
    page_size: int
    page_token: str
    def __init__(self, patient_id: _Optional[str] = ..., resource_types: _Optional[_Iterable[_Union[ResourceType, str]]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., facility_code: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class TimelineEntry(_message.Message):
    __slots__ = ("time", "resource", "restricted", "resource_type", "facility_code")
    TIME_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    RESTRICTED_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    FACILITY_CODE_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    resource: ClinicalResource
    restricted: bool
    resource_type: ResourceType
    facility_code: str
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resource: _Optional[_Union[ClinicalResource, _Mapping]] = ..., restricted: _Optional[bool] = ..., resource_type: _Optional[_Union[ResourceType, str]] = ..., facility_code: _Optional[str] = ...) -> None: ...

class GetPatientTimelineResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[TimelineEntry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[TimelineEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListObservationsRequest(_message.Message):
    __slots__ = ("patient_id", "loinc_code", "start_time", "end_time", "page_size", "page_token")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    LOINC_CODE_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    loinc_code: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, patient_id: _Optional[str] = ..., loinc_code: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListObservationsResponse(_message.Message):
    __slots__ = ("observations", "next_page_token")
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    observations: _containers.RepeatedCompositeFieldContainer[Observation]
    next_page_token: str
    def __init__(self, observations: _Optional[_Iterable[_Union[Observation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetEncounterBundleRequest(_message.Message):
    __slots__ = ("encounter_id",)
    ENCOUNTER_ID_FIELD_NUMBER: _ClassVar[int]
    encounter_id: str
    def __init__(self, encounter_id: _Optional[str] = ...) -> None: ...

class GetEncounterBundleResponse(_message.Message):
    __slots__ = ("encounter", "resources")
    ENCOUNTER_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    encounter: Encounter
    resources: _containers.RepeatedCompositeFieldContainer[ClinicalResource]
    def __init__(self, encounter: _Optional[_Union[Encounter, _Mapping]] = ..., resources: _Optional[_Iterable[_Union[ClinicalResource, _Mapping]]] = ...) -> None: ...

class ExportPatientRequest(_message.Message):
    __slots__ = ("patient_id",)
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    def __init__(self, patient_id: _Optional[str] = ...) -> None: ...

class ExportPatientResponse(_message.Message):
    __slots__ = ("fhir_bundle_json", "resource_count")
    FHIR_BUNDLE_JSON_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_COUNT_FIELD_NUMBER: _ClassVar[int]
    fhir_bundle_json: bytes
    resource_count: int
    def __init__(self, fhir_bundle_json: _Optional[bytes] = ..., resource_count: _Optional[int] = ...) -> None: ...
