"""Identity as other services see it: who a patient is, following merges, and what a facility may
see of them (the access model's question, which identity answers). One client for every service
that looks patients up (records, sync), each naming itself and its purpose to identity, which audits
the look-up as made on the caller's behalf."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from emr.identity.v1 import identity_pb2, identity_pb2_grpc
from emr.records.v1 import sensitivity_pb2

from emr_runtime.caller import purpose_metadata
from emr_runtime.errors import DependencyUnavailableError
from emr_runtime.visibility import Visibility

log = logging.getLogger("emr.patients")

IDENTITY_SERVICE = "emr.identity.v1.PatientIdentityService"
ACCESS_CACHE_ENTRIES = 10_000
# A call made for an emergency must see a declaration made a moment ago: never answered from the cache.
UNCACHED_PURPOSES = frozenset({"EMERGENCY"})

AccessKey = tuple[str, str, str, bool]
CATEGORY_PREFIX = "SENSITIVITY_CATEGORY_"


class PatientDirectory:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        service: str,
        purpose_of_use: str,
        deadline_seconds: float = 5.0,
        access_cache_seconds: float = 0.0,
    ) -> None:
        self._stub = identity_pb2_grpc.PatientIdentityServiceStub(channel)
        # The service's own token comes from the channel (emr_runtime.channels).
        self._metadata = purpose_metadata(purpose_of_use)
        self._deadline = deadline_seconds
        self._access = AccessCache(access_cache_seconds, ACCESS_CACHE_ENTRIES)

    async def get(self, patient_id: str) -> PatientView | None:
        """The patient as identity knows it (following a merge to the survivor), with the persons
        merged into it; None if there is no such patient."""
        try:
            response = await self._stub.GetPatient(
                identity_pb2.GetPatientRequest(patient_id=patient_id),
                timeout=self._deadline,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return None
            raise DependencyUnavailableError("identity") from error
        return PatientView(response.patient, tuple(response.merged_patient_ids))

    async def exists(self, patient_id: str) -> bool:
        return await self.get(patient_id) is not None

    async def access(self, patient_id: str, facility_code: str, purpose: str, export: bool) -> Visibility:
        """What ``facility_code`` may see of the patient's data for ``purpose`` (identity's
        CheckAccess), from this process's recent answers when one is fresh (AccessCache)."""
        key = (patient_id, facility_code, purpose, export)
        cached = self._access.get(key)
        if cached is not None:
            return cached
        try:
            response = await self._stub.CheckAccess(
                identity_pb2.CheckAccessRequest(
                    patient_id=patient_id, facility_code=facility_code, purpose_of_use=purpose, export=export
                ),
                timeout=self._deadline,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                # A malformed or unknown id: no such patient, nothing to see.
                return Visibility(facility_code, exists=False)
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                log.error("identity does not implement CheckAccess: deploy an identity that does")
            raise DependencyUnavailableError("identity") from error
        found = visibility_of(facility_code, response)
        if purpose not in UNCACHED_PURPOSES:
            self._access.put(key, found)
        return found


def visibility_of(facility_code: str, response: identity_pb2.CheckAccessResponse) -> Visibility:
    """Identity's CheckAccess answer as the access model's Visibility."""
    all_facilities = bool(response.all_facilities)
    return Visibility(
        facility_code,
        registered=bool(response.registered),
        all_facilities=all_facilities,
        facilities=frozenset() if all_facilities else frozenset(response.visible_facility_codes),
        sharing_grant_ids=tuple(response.sharing_grant_ids),
        emergency_access_id=response.emergency_access_id,
        emergency_reason=response.emergency_reason,
        resolved_patient_id=response.resolved_patient_id,
        exists=bool(response.exists),
        categories=frozenset(
            sensitivity_pb2.SensitivityCategory.Name(category).removeprefix(CATEGORY_PREFIX)
            for category in response.sensitive_categories
            if category in sensitivity_pb2.SensitivityCategory.values()
            and category != sensitivity_pb2.SENSITIVITY_CATEGORY_UNSPECIFIED
        ),
    )


class AccessCache:
    """Recent access answers of this process, for ``ttl_seconds`` at most, the ``max_entries`` most
    recently used. A revoked or ended grant or referral thus stops opening data within
    ``ttl_seconds``. Never kept: an answer that opens nothing (a registration, grant or referral
    made a moment later counts at once) and one an emergency access opened (it must not outlive the
    declaration, whose end the answer does not carry). 0 seconds keeps nothing."""

    def __init__(
        self, ttl_seconds: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[AccessKey, tuple[float, Visibility]] = OrderedDict()

    def get(self, key: AccessKey) -> Visibility | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, found = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return found

    def put(self, key: AccessKey, found: Visibility) -> None:
        if self._ttl <= 0 or self._max <= 0 or not found.opens_anything or found.emergency_access_id:
            return
        self._entries[key] = (self._clock() + self._ttl, found)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class PatientView:
    """A person and the persons currently merged into it: whose records make up its record."""

    patient: identity_pb2.Patient
    merged_patient_ids: tuple[str, ...]

    @property
    def record_owner_ids(self) -> tuple[str, ...]:
        return (self.patient.patient_id, *self.merged_patient_ids)
