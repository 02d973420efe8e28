"""The access interceptor: authorizes the caller that the authentication interceptor
(emr_runtime.authn) verified: applies the policy table (emr_runtime.policy), asks the service
whether the caller's facility treats the patient when the table says so, and turns break-the-glass
reads into loud, counted, flagged accesses.

It runs inside the audit interceptor, so a denial of an audited method is recorded by that one
(outcome client failure, with the verified caller); denials of other methods are recorded here.
Health and reflection stay open.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Protocol

from emr.audit.v1 import audit_pb2
from prometheus_client import Counter

from emr_runtime import policy
from emr_runtime.caller import (
    BREAK_GLASS_KEY,
    Caller,
    caller_from_metadata,
    is_verified,
    metadata_value,
    set_verified_caller,
)
from emr_runtime.errors import PermissionDeniedError, UnauthenticatedError
from emr_runtime.interceptors import HEALTH_SERVICE, AuditRule, AuditSink, Call, ScopedInterceptor

log = logging.getLogger("emr.access")

BREAK_GLASS_ACCESSES = Counter(
    "emr_break_glass_access_total",
    "Calls a doctor made outside the normal scope with a break-the-glass reason.",
    ("grpc_service", "grpc_method"),
)
# A relationship found holds for this long without asking again (a clinician reads the same patient
# many times in a row); a closed encounter or an unmerge takes effect within this time.
TREATING_CACHE_SECONDS = 60.0
TREATING_CACHE_SIZE = 10_000
# Denials of methods that are not audited anyway are recorded under this rule.
_DENIED_CALL = AuditRule(audit_pb2.AUDIT_ACTION_EXECUTE, "", lambda request, response: "")


class TreatmentRelationship(Protocol):
    """The service's answer to the one policy question that needs data."""

    async def treats(self, patient_id: str, caller: Caller) -> bool:
        """Whether ``caller.facility_code`` treats the patient (open encounter or registration)."""
        ...


class AccessInterceptor(ScopedInterceptor):
    def __init__(
        self,
        audit_rules: Mapping[str, AuditRule],
        audit_sink: AuditSink | None,
        relationship: TreatmentRelationship | None = None,
    ) -> None:
        self._audit_rules = dict(audit_rules)
        # Audited methods are recorded by the (outer) audit interceptor when there is one.
        self._audited_elsewhere = audit_sink is not None
        self._audit_sink = audit_sink
        self._relationship = relationship
        # Treatment relationships found recently, (patient, facility) -> until (monotonic).
        self._treating: dict[tuple[str, str], float] = {}

    def applies_to(self, full_method: str) -> bool:
        return super().applies_to(full_method) and not full_method.startswith(f"/{HEALTH_SERVICE}/")

    @asynccontextmanager
    async def scope(self, call: Call) -> AsyncIterator[None]:
        metadata = call.context.invocation_metadata()
        if not is_verified():  # fail closed if ever wired without the authentication interceptor
            raise UnauthenticatedError("missing 'authorization: Bearer <JWT>' metadata", "missing")
        caller = caller_from_metadata(metadata)
        reason = metadata_value(metadata, BREAK_GLASS_KEY).strip()[: policy.BREAK_GLASS_REASON_MAX]
        decision = policy.decide(call.full_method, caller, call.request, reason)
        if not decision.allowed:
            await self._deny(call, decision.reason)
        caller = replace(
            caller, role=decision.role, break_glass_reason=reason if decision.break_glass else ""
        )
        set_verified_caller(caller)
        if decision.break_glass:
            BREAK_GLASS_ACCESSES.labels(call.service, call.method).inc()
            log.warning(
                "break-the-glass access", extra={"grpc_method": call.full_method, "actor_id": caller.actor_id}
            )
        rule = self._audit_rules.get(call.full_method)
        checked = False
        if decision.needs_treatment and rule is not None:
            patient_id = rule.patient_id(call.request, None)
            if patient_id:
                await self._require_treatment(call, patient_id, caller, decision.role)
                checked = True
        elif decision.needs_treatment:
            await self._deny(call, f"{call.method} has no patient to check the treatment relationship on")
        yield
        if decision.needs_treatment and not checked and rule is not None:
            # By-id reads name the patient only in what they return: checked before it leaves.
            await self._require_treatment(
                call, rule.patient_id(call.request, call.response), caller, decision.role
            )

    async def _require_treatment(self, call: Call, patient_id: str, caller: Caller, role: str) -> None:
        key = (patient_id, caller.facility_code)
        if self._treating.get(key, 0.0) > time.monotonic():
            return
        if not (self._relationship and patient_id and await self._relationship.treats(patient_id, caller)):
            await self._deny(call, policy.treatment_denial(call.full_method, role))
        if len(self._treating) >= TREATING_CACHE_SIZE:
            self._treating.pop(next(iter(self._treating)))
        self._treating[key] = time.monotonic() + TREATING_CACHE_SECONDS

    async def _deny(self, call: Call, reason: str) -> None:
        if self._audit_sink is not None and not (
            self._audited_elsewhere and call.full_method in self._audit_rules
        ):
            await self._audit_sink.record_call(_DENIED_CALL, call, "client_failure")
        raise PermissionDeniedError(reason)
