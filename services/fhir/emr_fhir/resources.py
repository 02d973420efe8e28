"""FHIR R4 JSON (as dicts) of contract messages. Pure functions.

Identifier systems are this platform's own URNs until the national FHIR implementation guide
fixes official ones; they are defined here and nowhere else.
"""

from __future__ import annotations

from typing import Any

from emr.identity.v1 import identity_pb2
from emr.records.v1 import records_pb2
from google.protobuf.timestamp_pb2 import Timestamp

FhirJson = dict[str, Any]

SYSTEM_CCCD = "urn:emr-platform:sid:cccd"
SYSTEM_BHYT = "urn:emr-platform:sid:bhyt"
SYSTEM_PASSPORT = "urn:emr-platform:sid:passport"
SYSTEM_MRN_PREFIX = "urn:emr-platform:sid:mrn:"
SYSTEM_FACILITY = "urn:emr-platform:sid:facility"
V2_IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

_GENDERS = {
    identity_pb2.SEX_MALE: "male",
    identity_pb2.SEX_FEMALE: "female",
    identity_pb2.SEX_OTHER: "other",
    identity_pb2.SEX_UNKNOWN: "unknown",
}
_IDENTIFIER_TYPES = {  # v2-0203 codes
    identity_pb2.IDENTIFIER_SYSTEM_CCCD: ("NI", "National unique individual identifier"),
    identity_pb2.IDENTIFIER_SYSTEM_BHYT: ("SB", "Social Beneficiary Identifier"),
    identity_pb2.IDENTIFIER_SYSTEM_PASSPORT: ("PPN", "Passport number"),
    identity_pb2.IDENTIFIER_SYSTEM_MRN: ("MR", "Medical record number"),
}
_ENCOUNTER_STATUSES = {
    records_pb2.ENCOUNTER_STATUS_PLANNED: "planned",
    records_pb2.ENCOUNTER_STATUS_IN_PROGRESS: "in-progress",
    records_pb2.ENCOUNTER_STATUS_FINISHED: "finished",
    records_pb2.ENCOUNTER_STATUS_CANCELLED: "cancelled",
}
_ENCOUNTER_CLASSES = {
    records_pb2.ENCOUNTER_CLASS_OUTPATIENT: ("AMB", "ambulatory"),
    records_pb2.ENCOUNTER_CLASS_INPATIENT: ("IMP", "inpatient encounter"),
    records_pb2.ENCOUNTER_CLASS_EMERGENCY: ("EMER", "emergency"),
    records_pb2.ENCOUNTER_CLASS_DAY_CARE: ("SS", "short stay"),
}


def _instant(stamp: Timestamp) -> str:
    return stamp.ToJsonString()


def identifier_system(identifier: identity_pb2.Identifier) -> str:
    if identifier.system == identity_pb2.IDENTIFIER_SYSTEM_MRN:
        return SYSTEM_MRN_PREFIX + identifier.facility_code
    return {
        identity_pb2.IDENTIFIER_SYSTEM_CCCD: SYSTEM_CCCD,
        identity_pb2.IDENTIFIER_SYSTEM_BHYT: SYSTEM_BHYT,
        identity_pb2.IDENTIFIER_SYSTEM_PASSPORT: SYSTEM_PASSPORT,
    }[identifier.system]


def human_name(full_name: str) -> FhirJson:
    """Vietnamese order: family name first, then middle and given names (FHIR ``given`` holds both)."""
    words = full_name.split()
    name: FhirJson = {"use": "official", "text": full_name}
    if words:
        name["family"] = words[0]
    if len(words) > 1:
        name["given"] = words[1:]
    return name


def patient_resource(patient: identity_pb2.Patient) -> FhirJson:
    identifiers = []
    for identifier in patient.identifiers:
        code, display = _IDENTIFIER_TYPES[identifier.system]
        identifiers.append(
            {
                "type": {"coding": [{"system": V2_IDENTIFIER_TYPE, "code": code, "display": display}]},
                "system": identifier_system(identifier),
                "value": identifier.value,
            }
        )
    resource: FhirJson = {
        "resourceType": "Patient",
        "id": patient.patient_id,
        "meta": {"lastUpdated": _instant(patient.create_time)},
        "active": True,
        "name": [human_name(patient.full_name)],
        "gender": _GENDERS.get(patient.sex, "unknown"),
        "birthDate": patient.birth_date,
    }
    if identifiers:
        resource["identifier"] = identifiers
    if patient.registering_facility_code:
        resource["managingOrganization"] = {
            "identifier": {"system": SYSTEM_FACILITY, "value": patient.registering_facility_code}
        }
    return resource


def encounter_resource(encounter: records_pb2.Encounter) -> FhirJson:
    class_code, class_display = _ENCOUNTER_CLASSES[encounter.encounter_class]
    period: FhirJson = {"start": _instant(encounter.start_time)}
    if encounter.HasField("end_time"):
        period["end"] = _instant(encounter.end_time)
    resource: FhirJson = {
        "resourceType": "Encounter",
        "id": encounter.encounter_id,
        "meta": {"versionId": str(encounter.version), "lastUpdated": _instant(encounter.create_time)},
        "status": _ENCOUNTER_STATUSES[encounter.status],
        "class": {"system": V3_ACT_CODE, "code": class_code, "display": class_display},
        "subject": {"reference": f"Patient/{encounter.patient_id}"},
        "period": period,
        "serviceProvider": {"identifier": {"system": SYSTEM_FACILITY, "value": encounter.facility_code}},
    }
    if encounter.reason:
        resource["reasonCode"] = [{"text": encounter.reason}]
    return resource


def operation_outcome(code: str, diagnostics: str, expression: list[str] | None = None) -> FhirJson:
    """An OperationOutcome with one error issue; ``code`` is a FHIR issue-type code."""
    issue: FhirJson = {"severity": "error", "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = expression
    return {"resourceType": "OperationOutcome", "issue": [issue]}
