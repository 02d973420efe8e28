"""The authentication interceptor: verifies every call's bearer JWT (emr_runtime.auth.TokenVerifier)
and keeps the verified caller for the call (emr_runtime.caller), or refuses it UNAUTHENTICATED.

It sits outside the audit interceptor (server chain: tracing, metrics, errors, per-peer rate limit,
authentication, guard, audit, access, per-application rate limit), so a call without a valid token
writes no audit event, reads no database and reaches no servicer: a stranger costs a token check,
and the per-peer rate limit in front of it (emr_runtime.guard) caps how many of those one address
gets. Authorization (emr_runtime.access) reads the caller verified here.

Refusals are counted (``emr_unauthenticated_calls_total`` by service, method and a reason of
``UNAUTHENTICATED_REASONS``) and logged sampled: at most one line per reason every
``LOG_EVERY_SECONDS``, saying how many refusals went unlogged since; never the token or its claims.
Health and reflection stay open.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

from prometheus_client import Counter

from emr_runtime.auth import AUTHORIZATION_KEY, TokenVerifier
from emr_runtime.caller import PURPOSE_OF_USE_KEY, metadata_value, set_verified_caller
from emr_runtime.errors import UnauthenticatedError
from emr_runtime.guard import peer_address
from emr_runtime.interceptors import HEALTH_SERVICE, Call, ScopedInterceptor

log = logging.getLogger("emr.authn")

# One line per reason this often is enough to see an attack and its size; a flood must not turn
# into a flood of log lines (each costs more than the refusal it reports).
LOG_EVERY_SECONDS = 10.0
UNAUTHENTICATED_CALLS = Counter(
    "emr_unauthenticated_calls_total",
    "Calls refused UNAUTHENTICATED (no, malformed, unknown-key, expired, wrong-audience ... token), "
    "before any audit write or database read.",
    ("grpc_service", "grpc_method", "reason"),
)


class LogSampler:
    """At most one log line per key every ``interval_seconds``. Keys must come from a small fixed
    set (reasons, not caller input): one entry is kept per key."""

    def __init__(self, interval_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval_seconds
        self._clock = clock
        self._next_line_at: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def admit(self, key: str) -> int | None:
        """None: leave this occurrence unlogged (it is counted). Else log it now, saying how many
        occurrences of the key went unlogged since its previous line (the number returned)."""
        now = self._clock()
        if now < self._next_line_at.get(key, float("-inf")):
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._next_line_at[key] = now + self._interval
        return self._suppressed.pop(key, 0)


class AuthenticationInterceptor(ScopedInterceptor):
    def __init__(self, verifier: TokenVerifier, log_every_seconds: float = LOG_EVERY_SECONDS) -> None:
        self._verifier = verifier
        self._log_sampler = LogSampler(log_every_seconds)

    def applies_to(self, full_method: str) -> bool:
        return super().applies_to(full_method) and not full_method.startswith(f"/{HEALTH_SERVICE}/")

    @asynccontextmanager
    async def scope(self, call: Call) -> AsyncIterator[None]:
        metadata = call.context.invocation_metadata()
        try:
            caller = await self._verifier.caller(metadata_value(metadata, AUTHORIZATION_KEY))
        except UnauthenticatedError as error:
            self._refused(call, error.reason)
            raise
        set_verified_caller(replace(caller, purpose_of_use=metadata_value(metadata, PURPOSE_OF_USE_KEY)[:32]))
        yield

    def _refused(self, call: Call, reason: str) -> None:
        UNAUTHENTICATED_CALLS.labels(call.service, call.method, reason).inc()
        unlogged = self._log_sampler.admit(reason)
        if unlogged is not None:
            log.warning(
                "unauthenticated call refused",
                extra={
                    "reason": reason,
                    "grpc_method": call.full_method,
                    "peer": peer_address(call.context.peer()),
                    "unlogged_since_last_line": unlogged,
                },
            )
