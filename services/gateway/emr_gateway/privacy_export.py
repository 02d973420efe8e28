"""The data subject's copy of their data (an ACCESS request, Law 91/2025/QH15): the records
service's whole-record export (every facility's data of the patient: the export is the person's
right, not filtered by facility) plus their access report from audit, as one FHIR R4 "collection"
Bundle. Pure: the gateway's endpoint makes the calls."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from emr.audit.v1 import audit_pb2
from emr.identity.v1 import privacy_pb2
from google.protobuf.timestamp_pb2 import Timestamp

FhirJson = dict[str, Any]
# The statuses of an ACCESS request whose export may be downloaded.
EXPORTABLE_STATUSES = frozenset(
    {privacy_pb2.DATA_SUBJECT_REQUEST_STATUS_IN_PROGRESS, privacy_pb2.DATA_SUBJECT_REQUEST_STATUS_COMPLETED}
)
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
AUDIT_EVENT_SUBTYPE = "http://hl7.org/fhir/restful-interaction"
EXT_ACCESS_REPORT = "https://emr.example.vn/fhir/StructureDefinition/access-report-entry"
# FHIR AuditEvent.outcome: 0 success, 4 minor failure (the caller's), 8 serious failure (ours).
_OUTCOMES = {
    audit_pb2.AUDIT_OUTCOME_SUCCESS: "0",
    audit_pb2.AUDIT_OUTCOME_CLIENT_FAILURE: "4",
    audit_pb2.AUDIT_OUTCOME_SERVER_FAILURE: "8",
}
_ACTIONS = {
    audit_pb2.AUDIT_EVENT_SUBTYPE_READ: "R",
    audit_pb2.AUDIT_EVENT_SUBTYPE_SEARCH: "E",
    audit_pb2.AUDIT_EVENT_SUBTYPE_CREATE: "C",
    audit_pb2.AUDIT_EVENT_SUBTYPE_UPDATE: "U",
    audit_pb2.AUDIT_EVENT_SUBTYPE_MERGE: "U",
    audit_pb2.AUDIT_EVENT_SUBTYPE_EXPORT: "R",
    audit_pb2.AUDIT_EVENT_SUBTYPE_SHARING_GRANT: "C",
    audit_pb2.AUDIT_EVENT_SUBTYPE_SHARING_REVOCATION: "U",
    audit_pb2.AUDIT_EVENT_SUBTYPE_REFERRAL: "C",
    audit_pb2.AUDIT_EVENT_SUBTYPE_BREAK_GLASS: "E",
}


class ExportRefused(Exception):
    """The named request does not allow the export (HTTP 404 or 409 with this text)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


def check_access_request(
    requests: Iterable[privacy_pb2.DataSubjectRequest], request_id: str
) -> privacy_pb2.DataSubjectRequest:
    """The patient's ACCESS request ``request_id`` if its export may be downloaded now."""
    found = next((r for r in requests if r.data_subject_request_id == request_id), None)
    if found is None:
        raise ExportRefused(404, "no data-subject request of this patient has that id")
    if found.kind != privacy_pb2.DATA_SUBJECT_REQUEST_KIND_ACCESS:
        raise ExportRefused(409, "the data-subject request is not an ACCESS request")
    if found.status not in EXPORTABLE_STATUSES:
        status = privacy_pb2.DataSubjectRequestStatus.Name(found.status).removeprefix(
            "DATA_SUBJECT_REQUEST_STATUS_"
        )
        raise ExportRefused(409, f"the access request is {status}: its export opens when it is IN_PROGRESS")
    return found


def _instant(stamp: Timestamp) -> str:
    return str(stamp.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ"))


def audit_event(patient_url: str, access: audit_pb2.PatientAccess, number: int) -> FhirJson:
    """One access of the patient's report as a FHIR AuditEvent: who (role and facility, never a
    person's name), when, what kind of data, for which purpose, with which outcome."""
    subtype = audit_pb2.AuditEventSubtype.Name(access.subtype).removeprefix("AUDIT_EVENT_SUBTYPE_").lower()
    agent: FhirJson = {
        "type": {"text": access.accessor_role or "unknown"},
        "requestor": True,
    }
    if access.facility_code:
        agent["who"] = {
            "identifier": {"system": "https://emr.example.vn/facility", "value": access.facility_code}
        }
    event: FhirJson = {
        "resourceType": "AuditEvent",
        "id": f"access-{number}",
        "type": {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": AUDIT_EVENT_SUBTYPE, "code": subtype}],
        "recorded": _instant(access.occurred_time),
        "outcome": _OUTCOMES.get(access.outcome, "0"),
        "agent": [agent],
        "source": {"observer": {"display": "EMR exchange platform"}},
        "entity": [{"what": {"reference": patient_url}, "type": {"code": access.resource_type or "Patient"}}],
    }
    action = _ACTIONS.get(access.subtype)
    if action:
        event["action"] = action
    if access.purpose_of_use:
        event["purposeOfEvent"] = [{"text": access.purpose_of_use}]
    if access.break_glass_reason:
        event["purposeOfEvent"] = [*event.get("purposeOfEvent", []), {"text": access.break_glass_reason}]
    return event


def subject_export(collection: FhirJson, accesses: Sequence[audit_pb2.PatientAccess]) -> FhirJson:
    """The export's collection Bundle with the access report appended as AuditEvents, which point
    at the Patient entry."""
    entries = list(collection.get("entry", []))
    patient_url = next(
        (e["fullUrl"] for e in entries if e.get("resource", {}).get("resourceType") == "Patient"), ""
    )
    report = [
        {
            "fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{patient_url}#access-{number}')}",
            "resource": audit_event(patient_url, access, number),
        }
        for number, access in enumerate(accesses, start=1)
    ]
    return {"resourceType": "Bundle", "type": "collection", "entry": [*entries, *report]}
