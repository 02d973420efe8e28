"""Unit tests of the data subject's export (emr_gateway.privacy_export; pure): which access request
opens it, and the access report as valid FHIR AuditEvents appended to the patient's collection."""

from __future__ import annotations

import pytest
from emr.audit.v1 import audit_pb2
from emr.identity.v1 import privacy_pb2
from fhir.resources.R4B.bundle import Bundle
from google.protobuf.timestamp_pb2 import Timestamp

from emr_gateway.privacy_export import ExportRefused, check_access_request, subject_export


def request(
    request_id: str, kind: privacy_pb2.DataSubjectRequestKind, status: privacy_pb2.DataSubjectRequestStatus
) -> privacy_pb2.DataSubjectRequest:
    return privacy_pb2.DataSubjectRequest(data_subject_request_id=request_id, kind=kind, status=status)


ACCESS = privacy_pb2.DATA_SUBJECT_REQUEST_KIND_ACCESS
LISTED = [
    request("received", ACCESS, privacy_pb2.DATA_SUBJECT_REQUEST_STATUS_RECEIVED),
    request("working", ACCESS, privacy_pb2.DATA_SUBJECT_REQUEST_STATUS_IN_PROGRESS),
    request("done", ACCESS, privacy_pb2.DATA_SUBJECT_REQUEST_STATUS_COMPLETED),
    request("refused", ACCESS, privacy_pb2.DATA_SUBJECT_REQUEST_STATUS_REFUSED),
    request(
        "objection",
        privacy_pb2.DATA_SUBJECT_REQUEST_KIND_OBJECTION,
        privacy_pb2.DATA_SUBJECT_REQUEST_STATUS_COMPLETED,
    ),
]


@pytest.mark.parametrize("request_id", ["working", "done"])
def test_an_access_request_in_progress_or_completed_opens_the_export(request_id: str) -> None:
    assert check_access_request(LISTED, request_id).data_subject_request_id == request_id


@pytest.mark.parametrize(
    ("request_id", "status_code"), [("received", 409), ("refused", 409), ("objection", 409), ("nope", 404)]
)
def test_anything_else_is_refused(request_id: str, status_code: int) -> None:
    with pytest.raises(ExportRefused) as refused:
        check_access_request(LISTED, request_id)
    assert refused.value.status_code == status_code


def test_the_access_report_is_appended_as_valid_audit_events() -> None:
    collection = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "fullUrl": "urn:uuid:5e8cd432-44cc-520e-8dd8-76e9915a84a3",
                "resource": {"resourceType": "Patient", "id": "5e8cd432-44cc-520e-8dd8-76e9915a84a3"},
            }
        ],
    }
    occurred = Timestamp()
    occurred.FromSeconds(1_767_000_000)
    accesses = [
        audit_pb2.PatientAccess(
            occurred_time=occurred,
            accessor_role="doctor",
            facility_code="79002",
            subtype=audit_pb2.AUDIT_EVENT_SUBTYPE_READ,
            resource_type="Observation",
            purpose_of_use="TREATMENT",
            outcome=audit_pb2.AUDIT_OUTCOME_SUCCESS,
        ),
        audit_pb2.PatientAccess(
            occurred_time=occurred,
            accessor_role="nurse",
            subtype=audit_pb2.AUDIT_EVENT_SUBTYPE_BREAK_GLASS,
            outcome=audit_pb2.AUDIT_OUTCOME_CLIENT_FAILURE,
            break_glass_reason="EMERGENCY_REASON_UNABLE_TO_CONSENT",
        ),
    ]
    bundle = subject_export(collection, accesses)
    Bundle.model_validate(bundle)
    events = [e["resource"] for e in bundle["entry"][1:]]
    assert [e["resourceType"] for e in events] == ["AuditEvent", "AuditEvent"]
    assert events[0]["entity"][0]["what"]["reference"] == "urn:uuid:5e8cd432-44cc-520e-8dd8-76e9915a84a3"
    assert (events[0]["outcome"], events[1]["outcome"]) == ("0", "4")
    assert events[0]["agent"][0]["who"]["identifier"]["value"] == "79002"
    assert len({e["fullUrl"] for e in bundle["entry"]}) == 3
