"""The access interceptor: authorizes the caller that the authentication interceptor
(emr_runtime.authn) verified: applies the policy table (emr_runtime.policy) and gives the call its
``CallAccess`` (emr_runtime.visibility): what the caller's facility may see of a patient. When the
request names the patient, the facility's relationship with them is checked before the service runs;
a by-id read, which learns the patient from what it reads, must check it in the service, and the
interceptor refuses to answer one that did not.

It runs inside the audit interceptor, so a denial of an audited method is recorded by that one
(outcome client failure, with the verified caller); denials of other methods are recorded here.
Health and reflection stay open.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace

from emr.audit.v1 import audit_pb2
from prometheus_client import Counter

from emr_runtime import policy
from emr_runtime.caller import caller_from_metadata, is_verified, set_verified_caller
from emr_runtime.errors import PermissionDeniedError, UnauthenticatedError
from emr_runtime.interceptors import HEALTH_SERVICE, AuditRule, AuditSink, Call, ScopedInterceptor
from emr_runtime.visibility import CallAccess, VisibilitySource, purpose_of, set_call_access

log = logging.getLogger("emr.access")

EMERGENCY_ACCESSES = Counter(
    "emr_emergency_access_reads_total",
    "Calls whose patient data an emergency access (break the glass) opened.",
    ("grpc_service", "grpc_method"),
)
# Denials of methods that are not audited anyway are recorded under this rule.
_DENIED_CALL = AuditRule(audit_pb2.AUDIT_ACTION_EXECUTE, "", lambda request, response: "")


class AccessInterceptor(ScopedInterceptor):
    def __init__(
        self,
        audit_rules: Mapping[str, AuditRule],
        audit_sink: AuditSink | None,
        visibility: VisibilitySource | None = None,
    ) -> None:
        self._audit_rules = dict(audit_rules)
        # Audited methods are recorded by the (outer) audit interceptor when there is one.
        self._audited_elsewhere = audit_sink is not None
        self._audit_sink = audit_sink
        self._visibility = visibility

    def applies_to(self, full_method: str) -> bool:
        return super().applies_to(full_method) and not full_method.startswith(f"/{HEALTH_SERVICE}/")

    @asynccontextmanager
    async def scope(self, call: Call) -> AsyncIterator[None]:
        metadata = call.context.invocation_metadata()
        if not is_verified():  # fail closed if ever wired without the authentication interceptor
            raise UnauthenticatedError("missing 'authorization: Bearer <JWT>' metadata", "missing")
        caller = caller_from_metadata(metadata)
        decision = policy.decide(call.full_method, caller, call.request)
        if not decision.allowed:
            await self._deny(call, decision.reason)
        set_verified_caller(replace(caller, role=decision.role))
        rule = policy.POLICY[call.full_method]
        access = CallAccess(
            caller.facility_code,
            purpose_of(caller.purpose_of_use),
            self._visibility,
            platform=not decision.facility_scoped,
            export=rule.export,
        )
        set_call_access(access)
        audit_rule = self._audit_rules.get(call.full_method)
        if decision.needs_relationship:
            named = audit_rule.patient_id(call.request, None) if audit_rule is not None else ""
            if named:
                await self._require(call, access, named)
            elif audit_rule is None:
                await self._deny(call, f"{call.method} has no patient to check the access model on")
        yield
        if decision.needs_relationship and audit_rule is not None:
            # A by-id read names the patient only in what it returns: its service must have checked
            # that patient; an answer nobody checked never leaves.
            returned = audit_rule.patient_id(call.request, call.response)
            if returned and returned not in access.checked:
                await self._require(call, access, returned)
        if access.emergency_access_id:
            EMERGENCY_ACCESSES.labels(call.service, call.method).inc()
            log.warning(
                "emergency access read", extra={"grpc_method": call.full_method, "actor_id": caller.actor_id}
            )

    async def _require(self, call: Call, access: CallAccess, patient_id: str) -> None:
        try:
            await access.require(patient_id)
        except PermissionDeniedError as error:
            await self._deny(call, error.message)

    async def _deny(self, call: Call, reason: str) -> None:
        if self._audit_sink is not None and not (
            self._audited_elsewhere and call.full_method in self._audit_rules
        ):
            await self._audit_sink.record_call(_DENIED_CALL, call, "client_failure")
        raise PermissionDeniedError(reason)
