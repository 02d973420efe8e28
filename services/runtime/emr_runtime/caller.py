"""Who is calling. The authentication interceptor (emr_runtime.authn) verifies the bearer token and
keeps the verified caller for the duration of the call (the access interceptor adds the role it
was allowed under); every consumer reads it through ``caller_from_metadata`` only. The purpose of
use stays a header the caller declares."""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass, replace

PURPOSE_OF_USE_KEY = "x-purpose-of-use"
UNKNOWN_ACTOR = "anonymous"
# The role of a patient-facing app acting for one patient (the token's patient_id claim): allowed only
# the policy's patient-self RPCs, about that patient (emr_runtime.policy).
PATIENT_ROLE = "patient"


@dataclass(frozen=True)
class Caller:
    """The verified subject, facility and roles of an incoming call, and its declared purpose."""

    actor_id: str
    facility_code: str
    purpose_of_use: str
    # The role the call was allowed under (all roles of the token when it was not allowed).
    role: str = ""
    client_application: str = ""
    roles: tuple[str, ...] = ()
    # The patient a patient-role token acts for (its patient_id claim); empty for every other token.
    patient_id: str = ""


ANONYMOUS = Caller(UNKNOWN_ACTOR, "", "")
# Per call: grpc.aio runs each call in its own task, so a value set here is the call's alone.
_verified_caller: ContextVar[Caller] = ContextVar("emr_verified_caller", default=ANONYMOUS)


def set_verified_caller(caller: Caller) -> None:
    _verified_caller.set(caller)


def is_verified() -> bool:
    """Whether the current call's caller was verified (authentication on and passed)."""
    return _verified_caller.get() is not ANONYMOUS


def caller_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller:
    """The verified caller of the current call (anonymous when authentication is off or failed),
    with the purpose of use its metadata declares."""
    purpose = metadata_value(metadata, PURPOSE_OF_USE_KEY)
    return replace(_verified_caller.get(), purpose_of_use=purpose[:32])


def metadata_value(metadata: Iterable[tuple[str, str | bytes]] | None, wanted: str) -> str:
    return next((value for key, value in metadata or () if key == wanted and isinstance(value, str)), "")


def purpose_metadata(purpose_of_use: str) -> list[tuple[str, str]]:
    """Outgoing metadata declaring the purpose of a call (the identity comes from the token)."""
    return [(PURPOSE_OF_USE_KEY, purpose_of_use)] if purpose_of_use else []
