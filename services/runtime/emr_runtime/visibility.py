"""What a facility may see of one patient: the access model (docs/access-model.md) as the code
applies it.

A facility sees what it created itself. Another facility's data about the patient is visible only
under a sharing grant the patient gave (every facility's data), a referral (the referring facility's
data) or an active break-the-glass declaration (every facility's data, never for an export).
Registering a patient or opening an encounter never opens another facility's data.

The service that holds the answer (identity: registrations, grants, declarations; records: the same,
asked of identity, plus its own records) implements ``VisibilitySource``. The access interceptor
gives every call a ``CallAccess``; the use cases ask it before they return a record and filter what
they list by ``Visibility.sees``. Platform roles (sync, auditors, operators) see everything.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol

from emr_runtime.errors import PermissionDeniedError

DEFAULT_PURPOSE = "TREATMENT"
# The special categories of clinical data (emr.records.v1.SensitivityCategory names without prefix).
ALL_CATEGORIES = ("HIV", "MENTAL_HEALTH", "REPRODUCTIVE_HEALTH", "SUBSTANCE_USE")


@dataclass(frozen=True)
class Visibility:
    """What ``facility_code`` may see of one patient, and what opened it."""

    facility_code: str
    # The facility registered the patient (or holds records of them): its own data is visible.
    registered: bool = False
    # A consent grant or an emergency access opens every facility's data.
    all_facilities: bool = False
    # Other facilities whose data referrals open.
    facilities: frozenset[str] = frozenset()
    sharing_grant_ids: tuple[str, ...] = ()
    emergency_access_id: str = ""
    emergency_reason: str = ""
    # The id the patient resolves to (the survivor of a merge); empty when unknown.
    resolved_patient_id: str = ""
    exists: bool = True
    # Special categories (SensitivityCategory names without prefix, e.g. "HIV") of other facilities'
    # data that consent grants naming them open; the facility's own data is never hidden from it.
    categories: frozenset[str] = frozenset()

    def sees(self, data_facility_code: str) -> bool:
        """Whether data created by ``data_facility_code`` is visible."""
        return (
            self.all_facilities
            or data_facility_code == self.facility_code
            or data_facility_code in self.facilities
        )

    def sees_sensitive(self, data_facility_code: str, categories: frozenset[str]) -> bool:
        """Whether data created by ``data_facility_code`` carrying these special categories is
        visible: the facility's own always; another's only when every category is opened."""
        if not self.sees(data_facility_code):
            return False
        return data_facility_code == self.facility_code or categories <= self.categories

    @property
    def opens_anything(self) -> bool:
        """Whether the facility has any relationship with the patient at all."""
        return self.registered or self.all_facilities or bool(self.facilities)

    @property
    def shares_demographics(self) -> bool:
        """Whether the person's demographics from every facility are visible (not only the facility's
        own registration)."""
        return self.all_facilities


# Platform roles act for the whole city: the sync service, auditors, operators.
EVERYTHING = Visibility("", registered=True, all_facilities=True, categories=frozenset(ALL_CATEGORIES))


class VisibilitySource(Protocol):
    """The service's answer to the access model's question."""

    async def visibility(
        self, patient_id: str, facility_code: str, purpose_of_use: str, export: bool
    ) -> Visibility:
        """What ``facility_code`` may see of the patient for this purpose (``export``: the whole
        record leaves the platform, which no emergency access covers)."""
        ...


def purpose_of(declared: str) -> str:
    """The purpose a call is made for: what it declared, TREATMENT when it declared none."""
    return declared.strip().upper() or DEFAULT_PURPOSE


@dataclass
class CallAccess:
    """The access model for one call: asks the source once per patient and remembers which patients
    the call was checked for (the interceptor makes sure a by-id read checked the patient it
    returns) and whether an emergency access opened anything (the audit event says so)."""

    facility_code: str
    purpose_of_use: str
    source: VisibilitySource | None
    platform: bool = False
    export: bool = False
    checked: dict[str, Visibility] = field(default_factory=dict)
    emergency_access_id: str = ""
    emergency_reason: str = ""

    async def visibility(self, patient_id: str) -> Visibility:
        if self.platform:
            return EVERYTHING
        found = self.checked.get(patient_id)
        if found is None:
            if self.source is None or not patient_id:
                found = Visibility(self.facility_code, exists=False)
            else:
                found = await self.source.visibility(
                    patient_id, self.facility_code, self.purpose_of_use, self.export
                )
            self.checked[patient_id] = found
            if found.resolved_patient_id:
                self.checked.setdefault(found.resolved_patient_id, found)
        return found

    async def require(self, patient_id: str, data_facility_code: str | None = None) -> Visibility:
        """The visibility of the patient; PermissionDeniedError when the facility has no relationship
        with the patient, or (``data_facility_code``) cannot see that facility's data."""
        found = await self.visibility(patient_id)
        if self.platform:
            return found
        allowed = found.sees(data_facility_code) if data_facility_code is not None else found.opens_anything
        if not allowed:
            raise PermissionDeniedError(denial_reason(self.export))
        self.note_emergency(found, data_facility_code)
        return found

    def note_emergency(self, found: Visibility, data_facility_code: str | None = None) -> None:
        """Records that an emergency access, not the facility's own relationship, opened data."""
        if not found.emergency_access_id:
            return
        if data_facility_code is not None and data_facility_code == self.facility_code:
            return
        if data_facility_code is None and found.registered:
            return
        self.emergency_access_id = found.emergency_access_id
        self.emergency_reason = found.emergency_reason


def denial_reason(export: bool) -> str:
    if export:
        return (
            "the caller's facility may not export this patient's record: it needs the patient's "
            "sharing grant or its own registration (an emergency access never covers an export)"
        )
    return (
        "the caller's facility has no access to this patient's data: it needs its own registration, the "
        "patient's sharing grant, a referral, or a doctor's emergency access (DeclareEmergencyAccess)"
    )


# Per call: grpc.aio runs each call in its own task, so a value set here is the call's alone.
_call_access: ContextVar[CallAccess | None] = ContextVar("emr_call_access", default=None)


def set_call_access(access: CallAccess | None) -> None:
    _call_access.set(access)


def current_access() -> CallAccess:
    """The access of the current call. Without authentication (AUTH_ENABLED=false, development
    only) every call sees everything."""
    return _call_access.get() or CallAccess("", DEFAULT_PURPOSE, None, platform=True)
