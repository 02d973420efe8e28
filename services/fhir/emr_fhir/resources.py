"""FHIR R4 JSON (as dicts) of contract messages. Pure functions.

Identifier systems are this platform's own URNs until the national FHIR implementation guide
fixes official ones; they are defined here and nowhere else.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from emr.identity.v1 import identity_pb2
from emr.records.v1 import records_pb2, sensitivity_pb2
from google.protobuf.timestamp_pb2 import Timestamp

FhirJson = dict[str, Any]

SYSTEM_CCCD = "urn:emr-platform:sid:cccd"
SYSTEM_BHYT = "urn:emr-platform:sid:bhyt"
SYSTEM_PASSPORT = "urn:emr-platform:sid:passport"
SYSTEM_MRN_PREFIX = "urn:emr-platform:sid:mrn:"
SYSTEM_FACILITY = "urn:emr-platform:sid:facility"
SYSTEM_PRACTITIONER = "urn:emr-platform:sid:practitioner"
# Code systems the contract does not name a public URI for (the national drug list, the national
# list of technical services / ICD-9-CM for procedures): the platform's own until the national IG
# publishes official ones.
SYSTEM_NATIONAL_DRUG = "urn:emr-platform:cs:national-drug"
SYSTEM_PROCEDURE = "urn:emr-platform:cs:procedure"
# Extensions of this platform (Extension.url may be any URI; these are logical names).
EXT_ENCOUNTER_INSURANCE = "urn:emr-platform:fhir:extension:encounter-insurance"
EXT_DIAGNOSIS_ROLE = "urn:emr-platform:fhir:extension:diagnosis-role"
EXT_CONTENT_SHA256 = "urn:emr-platform:fhir:extension:content-sha256"
EXT_DOCUMENT_SIGNATURE = "urn:emr-platform:fhir:extension:document-signature"

V2_IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
V3_OBSERVATION_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DISCHARGE_DISPOSITION = "http://terminology.hl7.org/CodeSystem/discharge-disposition"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
DIAGNOSIS_ROLE = "http://terminology.hl7.org/CodeSystem/diagnosis-role"
LOINC = "http://loinc.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
UCUM = "http://unitsofmeasure.org"
SNOMED_CT = "http://snomed.info/sct"

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
    records_pb2.ENCOUNTER_STATUS_ENTERED_IN_ERROR: "entered-in-error",
}
_ENCOUNTER_CLASSES = {
    records_pb2.ENCOUNTER_CLASS_OUTPATIENT: ("AMB", "ambulatory"),
    records_pb2.ENCOUNTER_CLASS_INPATIENT: ("IMP", "inpatient encounter"),
    records_pb2.ENCOUNTER_CLASS_EMERGENCY: ("EMER", "emergency"),
    records_pb2.ENCOUNTER_CLASS_DAY_CARE: ("SS", "short stay"),
}


DISCHARGE_DISPOSITION_DISPLAYS = {  # the FHIR R4 discharge-disposition code system, complete
    "home": "Home",
    "alt-home": "Alternative home",
    "other-hcf": "Other healthcare facility",
    "hosp": "Hospice",
    "long": "Long-term care",
    "aadvice": "Left against advice",
    "exp": "Expired",
    "psy": "Psychiatric hospital",
    "rehab": "Rehabilitation",
    "snf": "Skilled nursing facility",
    "oth": "Other",
}
# Words the contract's comment uses for two of those codes.
_DISCHARGE_DISPOSITION_ALIASES = {"deceased": "exp", "transferred": "other-hcf"}
_OBSERVATION_STATUSES = {
    records_pb2.OBSERVATION_STATUS_REGISTERED: "registered",
    records_pb2.OBSERVATION_STATUS_PRELIMINARY: "preliminary",
    records_pb2.OBSERVATION_STATUS_FINAL: "final",
    records_pb2.OBSERVATION_STATUS_AMENDED: "amended",
    records_pb2.OBSERVATION_STATUS_ENTERED_IN_ERROR: "entered-in-error",
}
# Public: the codes the mapping turns into codings, for validation of input against the same table.
OBSERVATION_INTERPRETATION_DISPLAYS = {  # v3 ObservationInterpretation codes a result is flagged with
    "N": "Normal",
    "A": "Abnormal",
    "AA": "Critical abnormal",
    "H": "High",
    "HH": "Critical high",
    "HU": "Significantly high",
    "L": "Low",
    "LL": "Critical low",
    "LU": "Significantly low",
    "POS": "Positive",
    "NEG": "Negative",
    "IND": "Indeterminate",
    "DET": "Detected",
    "ND": "Not detected",
    "<": "Off scale low",
    ">": "Off scale high",
    "R": "Resistant",
    "S": "Susceptible",
    "I": "Intermediate",
}
_CONDITION_CLINICAL_STATUSES = {
    records_pb2.CONDITION_CLINICAL_STATUS_ACTIVE: ("active", "Active"),
    records_pb2.CONDITION_CLINICAL_STATUS_RECURRENCE: ("recurrence", "Recurrence"),
    records_pb2.CONDITION_CLINICAL_STATUS_RELAPSE: ("relapse", "Relapse"),
    records_pb2.CONDITION_CLINICAL_STATUS_INACTIVE: ("inactive", "Inactive"),
    records_pb2.CONDITION_CLINICAL_STATUS_REMISSION: ("remission", "Remission"),
    records_pb2.CONDITION_CLINICAL_STATUS_RESOLVED: ("resolved", "Resolved"),
}
_DIAGNOSIS_ROLES = {
    records_pb2.DIAGNOSIS_ROLE_PRIMARY: "primary",
    records_pb2.DIAGNOSIS_ROLE_SECONDARY: "secondary",
}
_MEDICATION_REQUEST_STATUSES = {
    records_pb2.MEDICATION_REQUEST_STATUS_ACTIVE: "active",
    records_pb2.MEDICATION_REQUEST_STATUS_COMPLETED: "completed",
    records_pb2.MEDICATION_REQUEST_STATUS_CANCELLED: "cancelled",
    records_pb2.MEDICATION_REQUEST_STATUS_STOPPED: "stopped",
    records_pb2.MEDICATION_REQUEST_STATUS_ENTERED_IN_ERROR: "entered-in-error",
}
ROUTE_CODES = {  # contract route code -> SNOMED CT route of administration
    "oral": ("26643006", "Oral route"),
    "iv": ("47625008", "Intravenous route"),
    "im": ("78421000", "Intramuscular route"),
    "sc": ("34206005", "Subcutaneous route"),
    "topical": ("6064005", "Topical route"),
    "sublingual": ("37839007", "Sublingual route"),
    "rectal": ("37161004", "Rectal route"),
    "nasal": ("46713006", "Nasal route"),
    "inhalation": ("447694001", "Respiratory tract route"),
}
_PROCEDURE_STATUSES = {
    records_pb2.PROCEDURE_STATUS_PREPARATION: "preparation",
    records_pb2.PROCEDURE_STATUS_IN_PROGRESS: "in-progress",
    records_pb2.PROCEDURE_STATUS_COMPLETED: "completed",
    records_pb2.PROCEDURE_STATUS_STOPPED: "stopped",
    records_pb2.PROCEDURE_STATUS_ENTERED_IN_ERROR: "entered-in-error",
}
_DOCUMENT_STATUSES = {
    records_pb2.DOCUMENT_STATUS_CURRENT: "current",
    records_pb2.DOCUMENT_STATUS_SUPERSEDED: "superseded",
    records_pb2.DOCUMENT_STATUS_ENTERED_IN_ERROR: "entered-in-error",
}


def _instant(stamp: Timestamp) -> str:
    return stamp.ToJsonString()


def _resource(resource_type: str, resource_id: str, message: Any) -> FhirJson:
    """resourceType, id and meta of a versioned contract message: versionId is the platform's
    version number; lastUpdated is when that version was stored."""
    stored = message.update_time if message.HasField("update_time") else message.create_time
    return {
        "resourceType": resource_type,
        "id": resource_id,
        "meta": {"versionId": str(message.version), "lastUpdated": _instant(stored)},
    }


def _facility(facility_code: str) -> FhirJson:
    """A logical reference to the facility (no Organization resource exists for it yet)."""
    return {"identifier": {"system": SYSTEM_FACILITY, "value": facility_code}}


def _practitioner(practitioner_id: str) -> FhirJson:
    """A logical reference to a practitioner: the platform keeps no Practitioner resources, so a
    literal reference would not resolve in a bundle."""
    return {"identifier": {"system": SYSTEM_PRACTITIONER, "value": practitioner_id}}


def _quantity(quantity: records_pb2.Quantity) -> FhirJson:
    """A UCUM quantity (the contract's units are UCUM codes)."""
    result: FhirJson = {"value": quantity.value}
    if quantity.unit:
        result.update({"unit": quantity.unit, "system": UCUM, "code": quantity.unit})
    return result


def _days(days: int) -> FhirJson:
    return {"value": days, "unit": "d", "system": UCUM, "code": "d"}


def _concept(system: str, code: str, display: str = "") -> FhirJson:
    coding: FhirJson = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def _clinical_context(patient_id: str, encounter_id: str) -> FhirJson:
    """subject, and encounter when the resource belongs to one."""
    context: FhirJson = {"subject": {"reference": f"Patient/{patient_id}"}}
    if encounter_id:
        context["encounter"] = {"reference": f"Encounter/{encounter_id}"}
    return context


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


def discharge_disposition(value: str) -> FhirJson:
    """A discharge-disposition code as FHIR; a value outside the code system stays text only."""
    code = _DISCHARGE_DISPOSITION_ALIASES.get(value, value)
    if code in DISCHARGE_DISPOSITION_DISPLAYS:
        return {**_concept(DISCHARGE_DISPOSITION, code, DISCHARGE_DISPOSITION_DISPLAYS[code]), "text": value}
    return {"text": value}


def encounter_resource(encounter: records_pb2.Encounter) -> FhirJson:
    """Encounter. The department is ``serviceType`` (a khoa is the specialty that served the visit;
    there are no Location resources); the practitioner is the attending participant; the insurance
    used is an extension (``EXT_ENCOUNTER_INSURANCE``) rather than Encounter.account, because an
    Account and its Coverage would be two more resources the platform does not keep."""
    class_code, class_display = _ENCOUNTER_CLASSES[encounter.encounter_class]
    period: FhirJson = {"start": _instant(encounter.start_time)}
    if encounter.HasField("end_time"):
        period["end"] = _instant(encounter.end_time)
    resource: FhirJson = {
        **_resource("Encounter", encounter.encounter_id, encounter),
        "status": _ENCOUNTER_STATUSES[encounter.status],
        "class": {"system": V3_ACT_CODE, "code": class_code, "display": class_display},
        "subject": {"reference": f"Patient/{encounter.patient_id}"},
        "period": period,
        "serviceProvider": _facility(encounter.facility_code),
    }
    if encounter.department:
        resource["serviceType"] = {"text": encounter.department}
    if encounter.practitioner_id:
        resource["participant"] = [
            {
                "type": [_concept(V3_PARTICIPATION_TYPE, "ATND", "attender")],
                "individual": _practitioner(encounter.practitioner_id),
            }
        ]
    if encounter.reason:
        resource["reasonCode"] = [{"text": encounter.reason}]
    if encounter.discharge_disposition:
        resource["hospitalization"] = {
            "dischargeDisposition": discharge_disposition(encounter.discharge_disposition)
        }
    insurance = _insurance_extension(encounter.insurance)
    if insurance:
        resource["extension"] = [insurance]
    return resource


def _complex_extension(url: str, parts: list[FhirJson]) -> FhirJson | None:
    """An extension made of parts; None without parts (an extension needs a value or parts)."""
    return {"url": url, "extension": parts} if parts else None


def _insurance_extension(insurance: records_pb2.EncounterInsurance) -> FhirJson | None:
    parts: list[FhirJson] = []
    if insurance.bhyt_number:
        parts.append(
            {"url": "bhytNumber", "valueIdentifier": {"system": SYSTEM_BHYT, "value": insurance.bhyt_number}}
        )
    if insurance.benefit_level > 0:
        parts.append({"url": "benefitLevel", "valuePositiveInt": insurance.benefit_level})
    return _complex_extension(EXT_ENCOUNTER_INSURANCE, parts)


def observation_resource(observation: records_pb2.Observation) -> FhirJson:
    """Observation: LOINC code, UCUM quantity / coded / text value, reference range and a v3
    ObservationInterpretation flag (a flag outside that code system stays text only)."""
    resource: FhirJson = {
        **_resource("Observation", observation.observation_id, observation),
        "status": _OBSERVATION_STATUSES[observation.status],
        "code": _concept(LOINC, observation.loinc_code),
        **_clinical_context(observation.patient_id, observation.encounter_id),
        "performer": [_facility(observation.facility_code)],
    }
    if observation.HasField("effective_time"):
        resource["effectiveDateTime"] = _instant(observation.effective_time)
    value_kind = observation.WhichOneof("value")
    if value_kind == "value_quantity":
        resource["valueQuantity"] = _quantity(observation.value_quantity)
    elif value_kind == "value_coding":
        coding = observation.value_coding
        resource["valueCodeableConcept"] = _concept(coding.system, coding.code, coding.display)
    elif value_kind == "value_text":
        resource["valueString"] = observation.value_text
    if observation.interpretation:
        flag = observation.interpretation
        resource["interpretation"] = [
            _concept(V3_OBSERVATION_INTERPRETATION, flag, OBSERVATION_INTERPRETATION_DISPLAYS[flag])
            if flag in OBSERVATION_INTERPRETATION_DISPLAYS
            else {"text": flag}
        ]
    if observation.HasField("reference_range"):
        bounds = observation.reference_range
        reference_range: FhirJson = {}
        if bounds.HasField("low"):
            reference_range["low"] = _quantity(bounds.low)
        if bounds.HasField("high"):
            reference_range["high"] = _quantity(bounds.high)
        if reference_range:
            resource["referenceRange"] = [reference_range]
    return resource


def condition_resource(condition: records_pb2.Condition) -> FhirJson:
    """Condition with an ICD-10 code. An entered-in-error diagnosis carries verificationStatus
    entered-in-error and no clinicalStatus (invariant con-5). Its place in the encounter (primary /
    secondary) is an extension here and Encounter.diagnosis in a bundle."""
    resource: FhirJson = {
        **_resource("Condition", condition.condition_id, condition),
    }
    if condition.clinical_status == records_pb2.CONDITION_CLINICAL_STATUS_ENTERED_IN_ERROR:
        resource["verificationStatus"] = _concept(
            CONDITION_VERIFICATION, "entered-in-error", "Entered in Error"
        )
    else:
        code, display = _CONDITION_CLINICAL_STATUSES[condition.clinical_status]
        resource["clinicalStatus"] = _concept(CONDITION_CLINICAL, code, display)
    if condition.encounter_id:
        resource["category"] = [_concept(CONDITION_CATEGORY, "encounter-diagnosis", "Encounter Diagnosis")]
    resource["code"] = _concept(ICD10, condition.icd10_code)
    resource.update(_clinical_context(condition.patient_id, condition.encounter_id))
    if condition.HasField("onset_time"):
        resource["onsetDateTime"] = _instant(condition.onset_time)
    if condition.HasField("recorded_time"):
        resource["recordedDate"] = _instant(condition.recorded_time)
    if condition.role in _DIAGNOSIS_ROLES:
        resource["extension"] = [{"url": EXT_DIAGNOSIS_ROLE, "valueCode": _DIAGNOSIS_ROLES[condition.role]}]
    return resource


def medication_route(route: str) -> FhirJson:
    """A route of administration as SNOMED CT; a route outside the table stays text only."""
    if route in ROUTE_CODES:
        code, display = ROUTE_CODES[route]
        return {**_concept(SNOMED_CT, code, display), "text": route}
    return {"text": route}


def medication_request_resource(request: records_pb2.MedicationRequest) -> FhirJson:
    """MedicationRequest (intent "order": a prescription): the drug as a code of the national drug
    list, dose, route and doses per day over the treatment days, and the quantity to dispense."""
    medication: FhirJson = {"text": request.drug_name} if request.drug_name else {}
    if request.drug_code:
        medication.update(_concept(SYSTEM_NATIONAL_DRUG, request.drug_code, request.drug_name))
    dosage: FhirJson = {}
    repeat: FhirJson = {}
    if request.doses_per_day > 0:
        repeat.update({"frequency": request.doses_per_day, "period": 1, "periodUnit": "d"})
    if request.duration_days > 0:
        repeat["boundsDuration"] = _days(request.duration_days)
    if repeat:
        dosage["timing"] = {"repeat": repeat}
    if request.route:
        dosage["route"] = medication_route(request.route)
    if request.HasField("dose"):
        dosage["doseAndRate"] = [{"doseQuantity": _quantity(request.dose)}]
    resource: FhirJson = {
        **_resource("MedicationRequest", request.medication_request_id, request),
        "status": _MEDICATION_REQUEST_STATUSES[request.status],
        "intent": "order",
        "medicationCodeableConcept": medication,
        **_clinical_context(request.patient_id, request.encounter_id),
        "requester": _facility(request.facility_code),
    }
    if request.HasField("authored_time"):
        resource["authoredOn"] = _instant(request.authored_time)
    if dosage:
        resource["dosageInstruction"] = [dosage]
    dispense: FhirJson = {}
    if request.HasField("quantity"):
        dispense["quantity"] = _quantity(request.quantity)
    if request.duration_days > 0:
        dispense["expectedSupplyDuration"] = _days(request.duration_days)
    if dispense:
        resource["dispenseRequest"] = dispense
    return resource


def procedure_resource(procedure: records_pb2.Procedure) -> FhirJson:
    """Procedure; the code is in the platform's procedure code system because the contract carries
    national service codes and ICD-9-CM codes in one field without saying which."""
    resource: FhirJson = {
        **_resource("Procedure", procedure.procedure_id, procedure),
        "status": _PROCEDURE_STATUSES[procedure.status],
        "code": _concept(SYSTEM_PROCEDURE, procedure.code),
        **_clinical_context(procedure.patient_id, procedure.encounter_id),
    }
    if procedure.HasField("performed_start_time"):
        period: FhirJson = {"start": _instant(procedure.performed_start_time)}
        if procedure.HasField("performed_end_time"):
            period["end"] = _instant(procedure.performed_end_time)
        resource["performedPeriod"] = period
    performers = [{"actor": _facility(procedure.facility_code)}]
    if procedure.performer_id:
        performers.insert(0, {"actor": _practitioner(procedure.performer_id)})
    resource["performer"] = performers
    return resource


def document_reference_resource(document: records_pb2.DocumentReference) -> FhirJson:
    """DocumentReference with its content inline. R4's Attachment.hash is the base64 SHA-1 of the
    data, so it holds exactly that; the platform's SHA-256 (hex, what records verifies on every read)
    goes into the attachment's ``EXT_CONTENT_SHA256`` extension: it describes the bytes, as
    Attachment.hash does, and is no identifier of the document. R4 DocumentReference has no signature
    element, so the signature metadata is the ``EXT_DOCUMENT_SIGNATURE`` extension and the signer is
    also the ``authenticator``; the signature bytes are not part of the contract."""
    attachment: FhirJson = {
        "contentType": document.content_type,
        "data": base64.b64encode(document.content).decode("ascii"),
        "size": len(document.content),
        "hash": base64.b64encode(hashlib.sha1(document.content, usedforsecurity=False).digest()).decode(
            "ascii"
        ),
    }
    if document.content_sha256:
        attachment["extension"] = [{"url": EXT_CONTENT_SHA256, "valueString": document.content_sha256}]
    if document.HasField("document_time"):
        attachment["creation"] = _instant(document.document_time)
    resource: FhirJson = {
        **_resource("DocumentReference", document.document_id, document),
        "status": _DOCUMENT_STATUSES[document.status],
        "type": _concept(LOINC, document.type_code),
        "subject": {"reference": f"Patient/{document.patient_id}"},
        "custodian": _facility(document.facility_code),
        "content": [{"attachment": attachment}],
    }
    if document.HasField("document_time"):
        resource["date"] = _instant(document.document_time)
    if document.encounter_id:
        resource["context"] = {"encounter": [{"reference": f"Encounter/{document.encounter_id}"}]}
    if document.signature.signer_id:
        resource["authenticator"] = _practitioner(document.signature.signer_id)
    signature = _signature_extension(document.signature)
    if signature:
        resource["extension"] = [signature]
    return resource


def _signature_extension(signature: records_pb2.DocumentSignature) -> FhirJson | None:
    parts: list[FhirJson] = []
    if signature.signer_id:
        parts.append({"url": "signer", "valueReference": _practitioner(signature.signer_id)})
    if signature.certificate_thumbprint:
        parts.append({"url": "certificateThumbprintSha256", "valueString": signature.certificate_thumbprint})
    if signature.algorithm:
        parts.append({"url": "algorithm", "valueCode": signature.algorithm})
    if signature.HasField("signed_time"):
        parts.append({"url": "signedTime", "valueInstant": _instant(signature.signed_time)})
    return _complex_extension(EXT_DOCUMENT_SIGNATURE, parts)


_RESOURCE_MAPPINGS: dict[str, Callable[[Any], FhirJson]] = {
    "encounter": encounter_resource,
    "observation": observation_resource,
    "condition": condition_resource,
    "medication_request": medication_request_resource,
    "procedure": procedure_resource,
    "document_reference": document_reference_resource,
}


def has_fhir_mapping(resource: records_pb2.ClinicalResource) -> bool:
    """Whether the resource has a FHIR form. Charge lines and progress notes have none yet (they feed
    the national claim tables); bundles leave them out rather than fail."""
    return resource.WhichOneof("resource") in _RESOURCE_MAPPINGS


# Security labels of a resource of a special category (docs/privacy-sensitive.md): confidentiality
# "restricted" and the HL7 v3 information sensitivity policy of each category.
SYSTEM_CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
SYSTEM_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
SENSITIVITY_POLICIES: dict[int, tuple[str, str]] = {
    sensitivity_pb2.SENSITIVITY_CATEGORY_HIV: ("HIV", "HIV/AIDS information sensitivity"),
    sensitivity_pb2.SENSITIVITY_CATEGORY_MENTAL_HEALTH: ("PSY", "psychiatry information sensitivity"),
    sensitivity_pb2.SENSITIVITY_CATEGORY_REPRODUCTIVE_HEALTH: (
        "SEX",
        "sexuality and reproductive health information sensitivity",
    ),
    sensitivity_pb2.SENSITIVITY_CATEGORY_SUBSTANCE_USE: ("ETH", "substance abuse information sensitivity"),
}


def security_labels(categories: Iterable[int]) -> list[FhirJson]:
    """meta.security of a resource carrying these special categories; empty for none."""
    policies = [SENSITIVITY_POLICIES[c] for c in sorted(set(categories)) if c in SENSITIVITY_POLICIES]
    if not policies:
        return []
    restricted = {"system": SYSTEM_CONFIDENTIALITY, "code": "R", "display": "restricted"}
    return [
        restricted,
        *({"system": SYSTEM_ACT_CODE, "code": code, "display": shown} for code, shown in policies),
    ]


def clinical_resource(resource: records_pb2.ClinicalResource) -> FhirJson:
    """The FHIR resource of whichever type the message holds, with the security labels of its
    special categories; ValueError when it holds none."""
    kind = resource.WhichOneof("resource")
    if kind is None:
        raise ValueError("ClinicalResource holds no resource")
    message = getattr(resource, kind)
    fhir = _RESOURCE_MAPPINGS[kind](message)
    # An encounter carries its categories itself too (an Encounter message outside a ClinicalResource).
    labels = security_labels([*resource.sensitivity, *(message.sensitivity if kind == "encounter" else ())])
    if labels:
        fhir["meta"] = {**fhir.get("meta", {}), "security": labels}
    return fhir


def _full_url(resource_id: str) -> str:
    """urn:uuid fullUrl of a platform id (every platform id is a UUID; ValueError otherwise)."""
    return f"urn:uuid:{uuid.UUID(resource_id)}"


def _resolve_references(node: Any, full_urls: dict[str, str]) -> None:
    """Rewrites, in place, every literal reference to an entry of the bundle into its fullUrl."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str) and value in full_urls:
                node[key] = full_urls[value]
            else:
                _resolve_references(value, full_urls)
    elif isinstance(node, list):
        for item in node:
            _resolve_references(item, full_urls)


def _encounter_diagnoses(resources: Iterable[records_pb2.ClinicalResource], fhir: list[FhirJson]) -> None:
    """Adds each condition to its encounter's ``diagnosis`` (primary: rank 1; secondary: the
    comorbidity role), the R4 place of a diagnosis' role, when the encounter is in the bundle."""
    encounters = {item["id"]: item for item in fhir if item["resourceType"] == "Encounter"}
    for message in resources:
        if message.WhichOneof("resource") != "condition":
            continue
        condition = message.condition
        encounter = encounters.get(condition.encounter_id)
        if encounter is None or condition.role not in _DIAGNOSIS_ROLES:
            continue
        diagnosis: FhirJson = {"condition": {"reference": f"Condition/{condition.condition_id}"}}
        if condition.role == records_pb2.DIAGNOSIS_ROLE_PRIMARY:
            diagnosis["rank"] = 1
        else:
            diagnosis["use"] = _concept(DIAGNOSIS_ROLE, "CM", "Comorbidity diagnosis")
        encounter.setdefault("diagnosis", []).append(diagnosis)


def collection_bundle(
    patient: identity_pb2.Patient, resources: Sequence[records_pb2.ClinicalResource]
) -> FhirJson:
    """A Bundle of type "collection": the Patient first, then every resource, each with a urn:uuid
    fullUrl; references between entries point at those fullUrls, so they resolve inside the bundle.
    Every resource's subject is this patient, including records of persons merged into it. Resources
    without a FHIR form are left out."""
    resources = [message for message in resources if has_fhir_mapping(message)]
    patient_url = _full_url(patient.patient_id)
    fhir = [clinical_resource(message) for message in resources]
    _encounter_diagnoses(resources, fhir)
    full_urls = {f"Patient/{patient.patient_id}": patient_url}
    for message in resources:
        owner = getattr(message, str(message.WhichOneof("resource"))).patient_id
        full_urls[f"Patient/{owner}"] = patient_url
    for item in fhir:
        full_urls[f"{item['resourceType']}/{item['id']}"] = _full_url(item["id"])
    entries = [{"fullUrl": patient_url, "resource": patient_resource(patient)}]
    for item in fhir:
        _resolve_references(item, full_urls)
        entries.append({"fullUrl": full_urls[f"{item['resourceType']}/{item['id']}"], "resource": item})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def _searchset(entries: list[FhirJson], self_url: str, next_url: str | None) -> FhirJson:
    """A searchset Bundle; FHIR JSON has no empty arrays, so an empty page has no ``entry``."""
    links = [{"relation": "self", "url": self_url}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    bundle: FhirJson = {"resourceType": "Bundle", "type": "searchset", "link": links}
    if entries:
        bundle["entry"] = entries
    return bundle


def searchset_bundle(
    resources: Sequence[records_pb2.ClinicalResource],
    self_url: str,
    next_url: str | None = None,
    *,
    base_url: str | None = None,
) -> FhirJson:
    """One page of search results: a "searchset" Bundle with ``self`` (and ``next`` when there is a
    further page) links; with ``base_url`` (the server's FHIR base) each entry gets its fullUrl.
    Resources without a FHIR form are left out."""
    entries = []
    for message in filter(has_fhir_mapping, resources):
        item = clinical_resource(message)
        entry: FhirJson = {"resource": item, "search": {"mode": "match"}}
        if base_url:
            entry = {"fullUrl": f"{base_url.rstrip('/')}/{item['resourceType']}/{item['id']}", **entry}
        entries.append(entry)
    return _searchset(entries, self_url, next_url)


def everything_bundle(collection: FhirJson, self_url: str) -> FhirJson:
    """Patient/$everything answers with a "searchset" Bundle: the export's collection, retyped, with
    its ``self`` link; entries keep their urn:uuid fullUrls, so references still resolve."""
    entries = [{**entry, "search": {"mode": "match"}} for entry in collection.get("entry", [])]
    return _searchset(entries, self_url, None)


def operation_outcome(code: str, diagnostics: str, expression: list[str] | None = None) -> FhirJson:
    """An OperationOutcome with one error issue; ``code`` is a FHIR issue-type code."""
    issue: FhirJson = {"severity": "error", "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = expression
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def transaction_bundle(
    patient: identity_pb2.Patient,
    encounter: records_pb2.Encounter,
    resources: Sequence[records_pb2.ClinicalResource],
) -> FhirJson:
    """A Bundle of type "transaction" for one encounter: the Patient, the Encounter (as of the
    version given) and every resource attached to it, each a PUT of its logical id, so that the
    receiver upserts and a resend changes nothing. Built from ``collection_bundle``, so references
    resolve inside the bundle the same way."""
    everything = [records_pb2.ClinicalResource(encounter=encounter), *resources]
    collection = collection_bundle(patient, everything)
    entries = []
    for entry in collection["entry"]:
        resource = entry["resource"]
        request = {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
        entries.append({**entry, "request": request})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def patient_transaction_bundle(
    patient: identity_pb2.Patient,
    version_id: str,
    last_updated: Timestamp,
    replaced_by: str = "",
    replaces: Sequence[str] = (),
) -> FhirJson:
    """A Bundle of type "transaction" carrying one Patient (a PUT of its logical id), as identity's
    patient changes are sent: ``version_id`` and ``last_updated`` name the change. A person merged
    into another is inactive and links ``replaced-by`` the survivor; a survivor links ``replaces``
    each person merged into it; an unmerged person is active again without the link."""
    resource = patient_resource(patient)
    resource["meta"] = {"versionId": version_id, "lastUpdated": _instant(last_updated)}
    links = [{"other": {"reference": f"Patient/{other}"}, "type": "replaces"} for other in replaces]
    if replaced_by:
        resource["active"] = False
        links.insert(0, {"other": {"reference": f"Patient/{replaced_by}"}, "type": "replaced-by"})
    if links:
        resource["link"] = links
    entry = {
        "fullUrl": _full_url(patient.patient_id),
        "resource": resource,
        "request": {"method": "PUT", "url": f"Patient/{patient.patient_id}"},
    }
    return {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
