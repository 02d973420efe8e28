"""The access policy: ONE table, for every RPC of every service, of which roles may call it and
with which facility scope. Pure: the interceptor (emr_runtime.access) applies it, and the services
answer the one question that needs their data (does a facility treat this patient?).

Scopes:
- ``PLATFORM``: no facility condition (searches, platform operations);
- ``OWN_FACILITY``: writes: the facility the request names must be the caller's own;
- ``PATIENT``: the call touches one patient: the caller's facility must treat the patient (an
  open encounter or a registration there; answered by the service); doctors may read outside that
  scope by declaring a break-the-glass reason.
Platform roles (auditor, sync-service, platform-service, admin) act for the whole city and are
never facility-scoped; hospital roles always are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from emr_runtime.caller import Caller

REGISTRAR = "registrar"
DOCTOR = "doctor"
NURSE = "nurse"
LAB = "lab"
PHARMACIST = "pharmacist"
AUDITOR = "auditor"
SYNC_SERVICE = "sync-service"
PLATFORM_SERVICE = "platform-service"
ADMIN = "admin"
HOSPITAL_ROLES = frozenset({REGISTRAR, DOCTOR, NURSE, LAB, PHARMACIST})
PLATFORM_ROLES = frozenset({AUDITOR, SYNC_SERVICE, PLATFORM_SERVICE, ADMIN})
ROLES = HOSPITAL_ROLES | PLATFORM_ROLES
# May read a patient of another facility when treating them; doctors also by breaking the glass.
TREATING_ROLES = frozenset({DOCTOR, NURSE})
BREAK_GLASS_ROLES = frozenset({DOCTOR})
BREAK_GLASS_REASON_MAX = 200


class Scope(Enum):
    PLATFORM = "platform"
    OWN_FACILITY = "own facility"
    PATIENT = "patient"


@dataclass(frozen=True)
class Rule:
    """Who may call one RPC. ``facility_of`` reads the facility an OWN_FACILITY request names;
    ``read`` marks PATIENT rules a doctor may break the glass for."""

    roles: frozenset[str]
    scope: Scope = Scope.PLATFORM
    facility_of: Callable[[Any], str] | None = None
    read: bool = True


def _facility_field(request: Any) -> str:
    return str(request.facility_code)


def _resource_facility(request: Any) -> str:
    kind = request.resource.WhichOneof("resource")
    return str(getattr(request.resource, kind).facility_code) if kind else ""


def _roles(*names: str) -> frozenset[str]:
    return frozenset(names) | {ADMIN}


def _own_facility_write(*names: str, facility_of: Callable[[Any], str] = _facility_field) -> Rule:
    return Rule(_roles(*names), Scope.OWN_FACILITY, facility_of, read=False)


def _patient_read(*names: str) -> Rule:
    return Rule(_roles(*names), Scope.PATIENT)


_IDENTITY = "/emr.identity.v1.PatientIdentityService/"
_RECORDS = "/emr.records.v1.ClinicalRecordsService/"
_AUDIT = "/emr.audit.v1.AuditService/"
_SYNC = "/emr.sync.v1.NationalSyncService/"
# admin (platform operators) may call everything, everywhere: hand that role to very few people;
# every call is audited like any other.
POLICY: dict[str, Rule] = {
    # --- identity: registrations are writes of the registering facility ---------------------
    f"{_IDENTITY}RegisterPatient": _own_facility_write(REGISTRAR, DOCTOR, NURSE),
    f"{_IDENTITY}GetPatient": _patient_read(
        REGISTRAR, DOCTOR, NURSE, LAB, PHARMACIST, SYNC_SERVICE, PLATFORM_SERVICE
    ),
    f"{_IDENTITY}UpdatePatient": Rule(_roles(REGISTRAR, DOCTOR, NURSE), Scope.PATIENT, read=False),
    # Finding a person by identifier or demographics is how a facility starts to treat them.
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
    f"{_RECORDS}ExportPatient": _patient_read(DOCTOR, SYNC_SERVICE),
    # --- audit: services append; auditors read; the public key and checkpoints are public ------
    f"{_AUDIT}AppendEvents": Rule(_roles(PLATFORM_SERVICE, SYNC_SERVICE)),
    f"{_AUDIT}QueryEvents": Rule(_roles(AUDITOR)),
    f"{_AUDIT}GetPatientAccessReport": Rule(_roles(AUDITOR)),
    f"{_AUDIT}GetCheckpoint": Rule(_roles(*ROLES)),
    f"{_AUDIT}GetPublicKey": Rule(_roles(*ROLES)),
    f"{_AUDIT}GetInclusionProof": Rule(_roles(AUDITOR)),
    f"{_AUDIT}VerifyIntegrity": Rule(_roles(AUDITOR)),
    f"{_AUDIT}ExportEvents": Rule(_roles(AUDITOR)),
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
    # The caller's facility must treat the patient (asked of the service).
    needs_treatment: bool = False
    break_glass: bool = False
    reason: str = ""


def decide(full_method: str, caller: Caller, request: Any, break_glass_reason: str = "") -> Decision:
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
    if platform or rule.scope is Scope.PLATFORM:
        return Decision(True, (platform or granted)[0])
    role = granted[0]
    if not caller.facility_code:
        return Decision(False, reason=f"{method} needs a token with a facility claim for role {role}")
    if rule.scope is Scope.OWN_FACILITY:
        assert rule.facility_of is not None
        named = rule.facility_of(request)
        if named and named != caller.facility_code:
            return Decision(False, reason=f"{method}: a {role} writes for their own facility only")
        return Decision(True, role)
    breaker = next((r for r in granted if r in BREAK_GLASS_ROLES), "")
    if rule.read and breaker and break_glass_reason.strip():
        return Decision(True, breaker, break_glass=True)
    treating = next((r for r in granted if r in TREATING_ROLES), role)
    return Decision(True, treating, needs_treatment=True)


def treatment_denial(full_method: str, role: str) -> str:
    method = full_method.rsplit("/", 1)[-1]
    hint = " (a doctor may declare x-break-glass-reason in an emergency)" if role in BREAK_GLASS_ROLES else ""
    return f"{method}: the caller's facility has no treatment relationship with this patient{hint}"
