"""The access policy: ONE table, for every RPC of every service, of which roles may call it and
with which facility scope. Pure: the interceptor (emr_runtime.access) applies it; what a facility may
see of a patient's data is the access model's question (emr_runtime.visibility), answered by the
services from their data.

Scopes:
- ``PLATFORM``: no facility condition on the call itself (platform operations; searches, whose
  results the service filters by what the caller may see);
- ``OWN_FACILITY``: writes: the facility the request names must be the caller's own;
- ``PATIENT``: the call touches one patient's data: the caller's facility must have a relationship
  with the patient (its own registration or records, a sharing grant, a referral or an emergency
  access), and sees of the patient's data only what that relationship opens.
Platform roles (auditor, sync-service, platform-service, admin) act for the whole city and are
never facility-scoped; hospital roles always are, and need a facility claim for every call.
The patient role (a patient-facing app acting for one patient: its token's ``patient_id`` claim)
may call only the RPCs whose rule reads the patient a request names (``patient_of``), and only for
its own patient; it then sees everything of that patient (the data subject's own data, every
facility's), never anything of another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from emr_runtime.caller import PATIENT_ROLE, Caller

REGISTRAR = "registrar"
DOCTOR = "doctor"
NURSE = "nurse"
LAB = "lab"
PHARMACIST = "pharmacist"
AUDITOR = "auditor"
SYNC_SERVICE = "sync-service"
PLATFORM_SERVICE = "platform-service"
ADMIN = "admin"
PATIENT = PATIENT_ROLE
HOSPITAL_ROLES = frozenset({REGISTRAR, DOCTOR, NURSE, LAB, PHARMACIST})
PLATFORM_ROLES = frozenset({AUDITOR, SYNC_SERVICE, PLATFORM_SERVICE, ADMIN})
ROLES = HOSPITAL_ROLES | PLATFORM_ROLES | {PATIENT}
# Doctors alone may declare an emergency access (break the glass) for their facility.
BREAK_GLASS_ROLES = frozenset({DOCTOR})


class Scope(Enum):
    PLATFORM = "platform"
    OWN_FACILITY = "own facility"
    PATIENT = "patient"


@dataclass(frozen=True)
class Rule:
    """Who may call one RPC. ``facility_of`` reads the facility an OWN_FACILITY request names;
    ``export`` marks PATIENT rules that take the whole record out (no emergency access covers them);
    ``patient_of`` reads the patient a request names, for the patient role (which it must equal)."""

    roles: frozenset[str]
    scope: Scope = Scope.PLATFORM
    facility_of: Callable[[Any], str] | None = None
    export: bool = False
    patient_of: Callable[[Any], str] | None = None


def _facility_field(request: Any) -> str:
    return str(request.facility_code)


def _resource_facility(request: Any) -> str:
    kind = request.resource.WhichOneof("resource")
    return str(getattr(request.resource, kind).facility_code) if kind else ""


def _patient_field(request: Any) -> str:
    return str(request.patient_id)


def _for_the_patient_too(rule: Rule) -> Rule:
    """The rule, also open to the patient role for requests naming the token's own patient."""
    return replace(rule, roles=rule.roles | {PATIENT}, patient_of=_patient_field)


def _roles(*names: str) -> frozenset[str]:
    return frozenset(names) | {ADMIN}


def _own_facility_write(*names: str, facility_of: Callable[[Any], str] = _facility_field) -> Rule:
    return Rule(_roles(*names), Scope.OWN_FACILITY, facility_of)


def _patient_read(*names: str, export: bool = False) -> Rule:
    return Rule(_roles(*names), Scope.PATIENT, export=export)


_IDENTITY = "/emr.identity.v1.PatientIdentityService/"
_RECORDS = "/emr.records.v1.ClinicalRecordsService/"
_RETENTION = "/emr.records.v1.RecordRetentionService/"
_AUDIT = "/emr.audit.v1.AuditService/"
_PRIVACY = "/emr.identity.v1.PrivacyRequestService/"
_SYNC = "/emr.sync.v1.NationalSyncService/"
_BREACH = "/emr.audit.v1.BreachService/"
# admin (platform operators) may call everything, everywhere: hand that role to very few people;
# every call is audited like any other.
POLICY: dict[str, Rule] = {
    # --- identity: registrations are writes of the registering facility ---------------------
    f"{_IDENTITY}RegisterPatient": _own_facility_write(REGISTRAR, DOCTOR, NURSE),
    f"{_IDENTITY}GetPatient": _patient_read(
        REGISTRAR, DOCTOR, NURSE, LAB, PHARMACIST, SYNC_SERVICE, PLATFORM_SERVICE
    ),
    f"{_IDENTITY}UpdatePatient": _patient_read(REGISTRAR, DOCTOR, NURSE),
    # Finding a person: results are limited to persons the caller's facility may see, identifiers
    # masked, every returned person audited.
    f"{_IDENTITY}MatchPatient": Rule(_roles(REGISTRAR, DOCTOR, NURSE)),
    f"{_IDENTITY}SearchPatients": Rule(_roles(REGISTRAR, DOCTOR, NURSE)),
    # Data stewardship of the master patient index: platform operators.
    f"{_IDENTITY}ListReviewTasks": Rule(_roles()),
    f"{_IDENTITY}ResolveReviewTask": Rule(_roles()),
    f"{_IDENTITY}MergePatients": Rule(_roles()),
    f"{_IDENTITY}UnmergePatients": Rule(_roles()),
    f"{_IDENTITY}GetPersonHistory": Rule(_roles(AUDITOR)),
    f"{_IDENTITY}CheckRegistration": Rule(_roles(PLATFORM_SERVICE)),
    # Every person's changes, for the national system: the sync service's alone.
    f"{_IDENTITY}ListPatientChanges": Rule(_roles(SYNC_SERVICE)),
    # --- identity: the patient's sharing grants, referrals and emergency access -----------------
    f"{_IDENTITY}RecordSharingGrant": _own_facility_write(REGISTRAR),
    f"{_IDENTITY}RevokeSharingGrant": _own_facility_write(REGISTRAR),
    f"{_IDENTITY}ListSharingGrants": _patient_read(REGISTRAR, DOCTOR, NURSE, AUDITOR),
    f"{_IDENTITY}RecordReferral": _own_facility_write(DOCTOR),
    f"{_IDENTITY}DeclareEmergencyAccess": _own_facility_write(*BREAK_GLASS_ROLES),
    # The data-protection officer reviews every break-the-glass access.
    f"{_IDENTITY}ListEmergencyAccesses": Rule(_roles(AUDITOR)),
    f"{_IDENTITY}ReviewEmergencyAccess": Rule(_roles(AUDITOR)),
    f"{_IDENTITY}CheckAccess": Rule(_roles(PLATFORM_SERVICE)),
    # --- records: clinical writes at the caller's facility, reads of treated patients ----------
    f"{_RECORDS}CreateEncounter": _own_facility_write(REGISTRAR, DOCTOR, NURSE),
    f"{_RECORDS}GetEncounter": _patient_read(DOCTOR, NURSE, SYNC_SERVICE),
    f"{_RECORDS}ListEncounters": _patient_read(DOCTOR, NURSE),
    # The change feed carries every facility's data: the sync service's alone.
    f"{_RECORDS}ListChanges": Rule(_roles(SYNC_SERVICE)),
    f"{_RECORDS}StreamChanges": Rule(_roles(SYNC_SERVICE)),
    f"{_RECORDS}CreateResource": _own_facility_write(
        DOCTOR, NURSE, LAB, PHARMACIST, facility_of=_resource_facility
    ),
    f"{_RECORDS}UpdateResource": _own_facility_write(
        DOCTOR, NURSE, LAB, PHARMACIST, facility_of=_resource_facility
    ),
    f"{_RECORDS}GetResource": _patient_read(DOCTOR, NURSE, PHARMACIST),
    f"{_RECORDS}GetResourceHistory": _patient_read(DOCTOR, NURSE),
    f"{_RECORDS}GetPatientTimeline": _patient_read(DOCTOR, NURSE),
    f"{_RECORDS}ListObservations": _patient_read(DOCTOR, NURSE, LAB),
    f"{_RECORDS}GetEncounterBundle": _patient_read(DOCTOR, NURSE, SYNC_SERVICE),
    f"{_RECORDS}ExportPatient": _for_the_patient_too(_patient_read(DOCTOR, SYNC_SERVICE, export=True)),
    # --- records retention (issue 17, part "retention"): the data-protection officer (auditor)
    # reads retention, classes records, holds them and runs the disposal job; the approval of a
    # disposal is another person's than its request (emr_records.retention_service).
    f"{_RETENTION}GetRecordRetention": Rule(_roles(AUDITOR)),
    f"{_RETENTION}ClassifyRecord": Rule(_roles(AUDITOR)),
    f"{_RETENTION}PlaceLegalHold": Rule(_roles(AUDITOR)),
    f"{_RETENTION}ReleaseLegalHold": Rule(_roles(AUDITOR)),
    f"{_RETENTION}ListDueRecords": Rule(_roles(AUDITOR)),
    f"{_RETENTION}RequestDisposal": Rule(_roles(AUDITOR)),
    f"{_RETENTION}ApproveDisposal": Rule(_roles(AUDITOR)),
    f"{_RETENTION}GetDisposal": Rule(_roles(AUDITOR)),
    # --- audit: services append; auditors read; the public key and checkpoints are public ------
    f"{_AUDIT}AppendEvents": Rule(_roles(PLATFORM_SERVICE, SYNC_SERVICE)),
    f"{_AUDIT}QueryEvents": Rule(_roles(AUDITOR)),
    f"{_AUDIT}GetPatientAccessReport": _for_the_patient_too(Rule(_roles(AUDITOR))),
    f"{_AUDIT}GetCheckpoint": Rule(_roles(*HOSPITAL_ROLES, *PLATFORM_ROLES)),
    f"{_AUDIT}GetPublicKey": Rule(_roles(*HOSPITAL_ROLES, *PLATFORM_ROLES)),
    f"{_AUDIT}GetInclusionProof": Rule(_roles(AUDITOR)),
    f"{_AUDIT}VerifyIntegrity": Rule(_roles(AUDITOR)),
    f"{_AUDIT}ExportEvents": Rule(_roles(AUDITOR)),
    # --- audit, breach workflow (issue 17, part "breach"): the data-protection officer (auditor)
    # records incidents, computes the affected patients and notifies the authority -------------
    f"{_BREACH}RecordIncident": Rule(_roles(AUDITOR)),
    f"{_BREACH}GetIncident": Rule(_roles(AUDITOR)),
    f"{_BREACH}ListIncidents": Rule(_roles(AUDITOR)),
    f"{_BREACH}ChangeIncidentStatus": Rule(_roles(AUDITOR)),
    f"{_BREACH}ListAffectedPatients": Rule(_roles(AUDITOR)),
    f"{_BREACH}GetBreachNotification": Rule(_roles(AUDITOR)),
    # --- identity (privacy): data-subject requests (Law 91/2025/QH15, Decree 356/2025) ---------
    # Filed by a registrar of a facility that registered the patient (the service checks it) or by
    # the patient's own token; listed and answered by the handling facility's registrar, the
    # data-protection officer (auditor) or the patient (their own). The export itself is records'
    # ExportPatient and audit's GetPatientAccessReport, open to the patient's own token above.
    f"{_PRIVACY}FileDataSubjectRequest": _for_the_patient_too(_own_facility_write(REGISTRAR)),
    f"{_PRIVACY}GetDataSubjectRequest": Rule(_roles(REGISTRAR, AUDITOR)),
    f"{_PRIVACY}ListDataSubjectRequests": _for_the_patient_too(_own_facility_write(REGISTRAR, AUDITOR)),
    f"{_PRIVACY}UpdateDataSubjectRequestStatus": _own_facility_write(REGISTRAR, AUDITOR),
    # --- sync: operations of the national delivery --------------------------------------------
    f"{_SYNC}GetSyncStatus": Rule(_roles(AUDITOR)),
    f"{_SYNC}ListDeadLetters": Rule(_roles()),
    f"{_SYNC}RetryDeadLetter": Rule(_roles()),
    f"{_SYNC}Replay": Rule(_roles()),
    f"{_SYNC}Reconcile": Rule(_roles()),
}


@dataclass(frozen=True)
class Decision:
    """What the table says before any data is looked at."""

    allowed: bool
    role: str = ""
    # The call touches one patient: the caller's facility must have a relationship with them.
    needs_relationship: bool = False
    # A hospital role: the call sees patient data only as far as its facility's relationship opens.
    facility_scoped: bool = False
    reason: str = ""


def decide(full_method: str, caller: Caller, request: Any) -> Decision:
    """Applies the table to a verified caller: roles first, then the facility scope."""
    rule = POLICY.get(full_method)
    method = full_method.rsplit("/", 1)[-1]
    if rule is None:
        return Decision(False, reason=f"{method} has no access policy")
    granted = [role for role in caller.roles if role in rule.roles]
    if not granted:
        held = ", ".join(caller.roles) or "none"
        return Decision(False, reason=f"{method} is not allowed for the token's roles ({held})")
    platform = [role for role in granted if role in PLATFORM_ROLES]
    if platform:
        return Decision(True, platform[0])
    if PATIENT in granted:
        return _decide_for_patient(method, caller, rule, request)
    role = granted[0]
    if not caller.facility_code:
        return Decision(False, reason=f"{method} needs a token with a facility claim for role {role}")
    if rule.scope is Scope.OWN_FACILITY:
        assert rule.facility_of is not None
        named = rule.facility_of(request)
        if named and named != caller.facility_code:
            return Decision(False, reason=f"{method}: a {role} writes for their own facility only")
        return Decision(True, role, facility_scoped=True)
    return Decision(True, role, needs_relationship=rule.scope is Scope.PATIENT, facility_scoped=True)


def _decide_for_patient(method: str, caller: Caller, rule: Rule, request: Any) -> Decision:
    """A patient token: only about its own patient, which the request must name; then the call sees
    all of that patient's data (not facility-scoped)."""
    if rule.patient_of is None or not caller.patient_id:
        return Decision(False, reason=f"{method} is not allowed for a patient token")
    if rule.patient_of(request).strip() != caller.patient_id:
        return Decision(False, reason=f"{method}: a patient token acts for its own patient_id only")
    return Decision(True, PATIENT)


_SCOPE_WORD = {Scope.PLATFORM: "all", Scope.OWN_FACILITY: "own", Scope.PATIENT: "patient"}
_ROLE_COLUMNS = (
    REGISTRAR,
    DOCTOR,
    NURSE,
    LAB,
    PHARMACIST,
    AUDITOR,
    SYNC_SERVICE,
    PLATFORM_SERVICE,
    ADMIN,
    PATIENT,
)


def markdown_table() -> str:
    """The table as docs/access-model.md shows it (a test keeps the two equal): per RPC and role,
    ``own``, ``patient``, ``all``, ``self`` (the patient role: its own patient) or nothing; platform
    roles are never facility-scoped."""
    lines = [
        "| RPC | " + " | ".join(_ROLE_COLUMNS) + " |",
        "|---|" + "---|" * len(_ROLE_COLUMNS),
    ]
    for full_method, rule in POLICY.items():
        service = full_method.split(".")[1]
        method = full_method.rsplit("/", 1)[1]
        cells = [
            ("self" if role == PATIENT else "all" if role in PLATFORM_ROLES else _SCOPE_WORD[rule.scope])
            if role in rule.roles
            else ""
            for role in _ROLE_COLUMNS
        ]
        lines.append(f"| {service} `{method}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
