"""gRPC transport of the identity service: protobuf in, protobuf out, nothing else."""

from __future__ import annotations

from typing import Any

import grpc
from emr.audit.v1 import audit_pb2
from emr.identity.v1 import identity_pb2, identity_pb2_grpc

from emr_identity import converters
from emr_identity.service import IdentityService
from emr_identity.sharing_service import SharingService
from emr_runtime.caller import caller_from_metadata
from emr_runtime.interceptors import AuditRule

SERVICE_NAME = "emr.identity.v1.PatientIdentityService"
Context = grpc.aio.ServicerContext[Any, Any]


def _actor(context: Context) -> str:
    return caller_from_metadata(context.invocation_metadata()).actor_id


class PatientIdentityServicer(identity_pb2_grpc.PatientIdentityServiceServicer):
    def __init__(self, service: IdentityService, sharing: SharingService, fingerprint_key: bytes) -> None:
        self._service = service
        self._sharing = sharing
        self._fingerprint_key = fingerprint_key  # keys the request digests kept for idempotency

    async def RegisterPatient(
        self, request: identity_pb2.RegisterPatientRequest, context: Context
    ) -> identity_pb2.RegisterPatientResponse:
        result = await self._service.register(
            converters.registration_input(request, self._fingerprint_key), _actor(context)
        )
        return converters.registration_response(result)

    async def GetPatient(
        self, request: identity_pb2.GetPatientRequest, context: Context
    ) -> identity_pb2.GetPatientResponse:
        view = await self._service.read(request.patient_id)
        return identity_pb2.GetPatientResponse(
            patient=converters.patient_message(view.person),
            merged_from_patient_id=view.merged_from,
            record_ids=view.record_ids,
            merged_patient_ids=view.person.merged_person_ids,
        )

    async def UpdatePatient(
        self, request: identity_pb2.UpdatePatientRequest, context: Context
    ) -> identity_pb2.UpdatePatientResponse:
        result = await self._service.update(
            converters.update_input(request, self._fingerprint_key),
            request.patient_id,
            request.expected_version,
            _actor(context),
        )
        return converters.update_response(result)

    async def MatchPatient(
        self, request: identity_pb2.MatchPatientRequest, context: Context
    ) -> identity_pb2.MatchPatientResponse:
        result = await self._service.match(
            converters.registration_input(request.demographics, self._fingerprint_key), request.patient_id
        )
        return identity_pb2.MatchPatientResponse(
            decision=converters.decision_value(result.decision),
            candidates=converters.candidate_messages(result.candidates),
        )

    async def SearchPatients(
        self, request: identity_pb2.SearchPatientsRequest, context: Context
    ) -> identity_pb2.SearchPatientsResponse:
        persons, token = await self._service.search(converters.search_query(request))
        return identity_pb2.SearchPatientsResponse(
            patients=[converters.patient_message(p) for p in persons], next_page_token=token
        )

    async def ListReviewTasks(
        self, request: identity_pb2.ListReviewTasksRequest, context: Context
    ) -> identity_pb2.ListReviewTasksResponse:
        tasks, token = await self._service.list_review_tasks(request.page_size, request.page_token)
        return identity_pb2.ListReviewTasksResponse(
            review_tasks=[converters.review_task_message(t) for t in tasks], next_page_token=token
        )

    async def ResolveReviewTask(
        self, request: identity_pb2.ResolveReviewTaskRequest, context: Context
    ) -> identity_pb2.ResolveReviewTaskResponse:
        person = await self._service.resolve_review_task(
            request.request_id,
            request.review_task_id,
            converters.resolution_value(request.resolution),
            request.candidate_patient_id,
            request.reason,
            _actor(context),
        )
        return identity_pb2.ResolveReviewTaskResponse(patient=converters.patient_message(person))

    async def MergePatients(
        self, request: identity_pb2.MergePatientsRequest, context: Context
    ) -> identity_pb2.MergePatientsResponse:
        survivor = await self._service.merge(
            request.request_id,
            request.survivor_patient_id,
            request.merged_patient_id,
            request.reason,
            _actor(context),
        )
        return identity_pb2.MergePatientsResponse(patient=converters.patient_message(survivor))

    async def UnmergePatients(
        self, request: identity_pb2.UnmergePatientsRequest, context: Context
    ) -> identity_pb2.UnmergePatientsResponse:
        restored, survivor = await self._service.unmerge(
            request.request_id, request.merged_patient_id, request.reason, _actor(context)
        )
        return identity_pb2.UnmergePatientsResponse(
            restored=converters.patient_message(restored), survivor=converters.patient_message(survivor)
        )

    async def GetPersonHistory(
        self, request: identity_pb2.GetPersonHistoryRequest, context: Context
    ) -> identity_pb2.GetPersonHistoryResponse:
        events = await self._service.history(request.patient_id)
        return identity_pb2.GetPersonHistoryResponse(events=[converters.event_message(e) for e in events])

    async def CheckRegistration(
        self, request: identity_pb2.CheckRegistrationRequest, context: Context
    ) -> identity_pb2.CheckRegistrationResponse:
        registered = await self._service.registered_at(request.patient_id, request.facility_code)
        return identity_pb2.CheckRegistrationResponse(registered=registered)

    async def ListPatientChanges(
        self, request: identity_pb2.ListPatientChangesRequest, context: Context
    ) -> identity_pb2.ListPatientChangesResponse:
        changes, next_after = await self._service.patient_changes(request.after_sequence, request.limit)
        return identity_pb2.ListPatientChangesResponse(
            changes=[converters.patient_change_message(change, person) for change, person in changes],
            next_after_sequence=next_after,
        )

    # --- sharing grants, referrals, emergency access ---------------------------------------------

    async def RecordSharingGrant(
        self, request: identity_pb2.RecordSharingGrantRequest, context: Context
    ) -> identity_pb2.RecordSharingGrantResponse:
        grant = await self._sharing.record_grant(
            converters.grant_input(request, self._fingerprint_key), _actor(context)
        )
        return identity_pb2.RecordSharingGrantResponse(sharing_grant=converters.sharing_grant_message(grant))

    async def RevokeSharingGrant(
        self, request: identity_pb2.RevokeSharingGrantRequest, context: Context
    ) -> identity_pb2.RevokeSharingGrantResponse:
        grant = await self._sharing.revoke_grant(
            converters.revocation_input(request, self._fingerprint_key), _actor(context)
        )
        return identity_pb2.RevokeSharingGrantResponse(sharing_grant=converters.sharing_grant_message(grant))

    async def ListSharingGrants(
        self, request: identity_pb2.ListSharingGrantsRequest, context: Context
    ) -> identity_pb2.ListSharingGrantsResponse:
        grants = await self._sharing.list_grants(request.patient_id)
        return identity_pb2.ListSharingGrantsResponse(
            sharing_grants=[converters.sharing_grant_message(g) for g in grants]
        )

    async def RecordReferral(
        self, request: identity_pb2.RecordReferralRequest, context: Context
    ) -> identity_pb2.RecordReferralResponse:
        grant = await self._sharing.record_referral(
            converters.referral_input(request, self._fingerprint_key), _actor(context)
        )
        return identity_pb2.RecordReferralResponse(sharing_grant=converters.sharing_grant_message(grant))

    async def DeclareEmergencyAccess(
        self, request: identity_pb2.DeclareEmergencyAccessRequest, context: Context
    ) -> identity_pb2.DeclareEmergencyAccessResponse:
        declared = await self._sharing.declare_emergency(
            converters.emergency_input(request, self._fingerprint_key), _actor(context)
        )
        return identity_pb2.DeclareEmergencyAccessResponse(
            emergency_access=converters.emergency_access_message(declared)
        )

    async def ListEmergencyAccesses(
        self, request: identity_pb2.ListEmergencyAccessesRequest, context: Context
    ) -> identity_pb2.ListEmergencyAccessesResponse:
        declared, token = await self._sharing.list_emergencies(
            request.unreviewed_only, request.page_size, request.page_token
        )
        return identity_pb2.ListEmergencyAccessesResponse(
            emergency_accesses=[
                converters.emergency_access_message(e, with_justification=True) for e in declared
            ],
            next_page_token=token,
        )

    async def ReviewEmergencyAccess(
        self, request: identity_pb2.ReviewEmergencyAccessRequest, context: Context
    ) -> identity_pb2.ReviewEmergencyAccessResponse:
        reviewed = await self._sharing.review_emergency(
            converters.review_input(request, self._fingerprint_key), _actor(context)
        )
        return identity_pb2.ReviewEmergencyAccessResponse(
            emergency_access=converters.emergency_access_message(reviewed, with_justification=True)
        )

    async def CheckAccess(
        self, request: identity_pb2.CheckAccessRequest, context: Context
    ) -> identity_pb2.CheckAccessResponse:
        visibility = await self._sharing.check_access(
            request.patient_id, request.facility_code, request.purpose_of_use, request.export
        )
        return converters.check_access_response(visibility)


def _registered_patient_id(request: Any, response: Any) -> str:
    return str(response.patient.patient_id) if response is not None else ""


def _requested_patient_id(request: Any, response: Any) -> str:
    return str(request.patient_id)


def _survivor_id(request: Any, response: Any) -> str:
    return str(request.survivor_patient_id)


def _merged_id(request: Any, response: Any) -> str:
    return str(request.merged_patient_id)


def _nobody(request: Any, response: Any) -> str:
    return ""


def _found_patient_ids(request: Any, response: Any) -> list[str]:
    return [str(patient.patient_id) for patient in response.patients]


def _candidate_patient_ids(request: Any, response: Any) -> list[str]:
    return [str(candidate.patient_id) for candidate in response.candidates]


# The patient change feed (ListPatientChanges) is the platform's own feed to sync, not an access on a
# patient's behalf; sync audits what it exports (as records' change feed).
AUDIT_RULES = {
    f"/{SERVICE_NAME}/RegisterPatient": AuditRule(
        audit_pb2.AUDIT_ACTION_CREATE, "Patient", _registered_patient_id, _registered_patient_id
    ),
    f"/{SERVICE_NAME}/GetPatient": AuditRule(
        audit_pb2.AUDIT_ACTION_READ, "Patient", _requested_patient_id, _requested_patient_id
    ),
    f"/{SERVICE_NAME}/GetPersonHistory": AuditRule(
        audit_pb2.AUDIT_ACTION_READ, "Patient", _requested_patient_id, _requested_patient_id
    ),
    f"/{SERVICE_NAME}/UpdatePatient": AuditRule(
        audit_pb2.AUDIT_ACTION_UPDATE, "Patient", _requested_patient_id, _requested_patient_id
    ),
    f"/{SERVICE_NAME}/MergePatients": AuditRule(
        audit_pb2.AUDIT_ACTION_UPDATE, "Patient", _survivor_id, _survivor_id
    ),
    f"/{SERVICE_NAME}/UnmergePatients": AuditRule(
        audit_pb2.AUDIT_ACTION_UPDATE, "Patient", _merged_id, _merged_id
    ),
    f"/{SERVICE_NAME}/ResolveReviewTask": AuditRule(
        audit_pb2.AUDIT_ACTION_UPDATE, "Patient", _registered_patient_id, _registered_patient_id
    ),
    # Every person a search returns is a hit in that person's access report (one event each).
    f"/{SERVICE_NAME}/SearchPatients": AuditRule(
        audit_pb2.AUDIT_ACTION_SEARCH, "Patient", _nobody, _nobody, patient_ids=_found_patient_ids
    ),
    f"/{SERVICE_NAME}/MatchPatient": AuditRule(
        audit_pb2.AUDIT_ACTION_SEARCH, "Patient", _nobody, _nobody, patient_ids=_candidate_patient_ids
    ),
}

# Sharing grants, referrals and emergency accesses: in the patient's access report with their own
# subtypes and the grant (declaration) id. CheckAccess is the platform asking, not an access to data.


def _granted_patient_id(request: Any, response: Any) -> str:
    return str(response.sharing_grant.patient_id) if response is not None else str(request.patient_id)


def _revoked_patient_id(request: Any, response: Any) -> str:
    return str(response.sharing_grant.patient_id) if response is not None else ""


def _grant_id(request: Any, response: Any) -> str:
    return str(response.sharing_grant.sharing_grant_id) if response is not None else ""


def _requested_grant_id(request: Any, response: Any) -> str:
    return str(request.sharing_grant_id)


def _declared_patient_id(request: Any, response: Any) -> str:
    return str(response.emergency_access.patient_id) if response is not None else str(request.patient_id)


def _reviewed_patient_id(request: Any, response: Any) -> str:
    return str(response.emergency_access.patient_id) if response is not None else ""


def _emergency_access_id(request: Any, response: Any) -> str:
    return str(response.emergency_access.emergency_access_id) if response is not None else ""


def _requested_emergency_access_id(request: Any, response: Any) -> str:
    return str(request.emergency_access_id)


def _listed_patient_ids(request: Any, response: Any) -> list[str]:
    return list(dict.fromkeys(str(e.patient_id) for e in response.emergency_accesses))


AUDIT_RULES.update(
    {
        f"/{SERVICE_NAME}/RecordSharingGrant": AuditRule(
            audit_pb2.AUDIT_ACTION_CREATE,
            "Consent",
            _granted_patient_id,
            _grant_id,
            subtype=audit_pb2.AUDIT_EVENT_SUBTYPE_SHARING_GRANT,
        ),
        f"/{SERVICE_NAME}/RevokeSharingGrant": AuditRule(
            audit_pb2.AUDIT_ACTION_UPDATE,
            "Consent",
            _revoked_patient_id,
            _requested_grant_id,
            subtype=audit_pb2.AUDIT_EVENT_SUBTYPE_SHARING_REVOCATION,
        ),
        f"/{SERVICE_NAME}/ListSharingGrants": AuditRule(
            audit_pb2.AUDIT_ACTION_READ, "Consent", _requested_patient_id
        ),
        f"/{SERVICE_NAME}/RecordReferral": AuditRule(
            audit_pb2.AUDIT_ACTION_CREATE,
            "Consent",
            _granted_patient_id,
            _grant_id,
            subtype=audit_pb2.AUDIT_EVENT_SUBTYPE_REFERRAL,
        ),
        f"/{SERVICE_NAME}/DeclareEmergencyAccess": AuditRule(
            audit_pb2.AUDIT_ACTION_EXECUTE,
            "EmergencyAccess",
            _declared_patient_id,
            _emergency_access_id,
            subtype=audit_pb2.AUDIT_EVENT_SUBTYPE_BREAK_GLASS,
        ),
        # The reviewers read the justifications: every listed patient's report says so.
        f"/{SERVICE_NAME}/ListEmergencyAccesses": AuditRule(
            audit_pb2.AUDIT_ACTION_SEARCH,
            "EmergencyAccess",
            _nobody,
            _nobody,
            patient_ids=_listed_patient_ids,
        ),
        f"/{SERVICE_NAME}/ReviewEmergencyAccess": AuditRule(
            audit_pb2.AUDIT_ACTION_UPDATE,
            "EmergencyAccess",
            _reviewed_patient_id,
            _requested_emergency_access_id,
        ),
    }
)
