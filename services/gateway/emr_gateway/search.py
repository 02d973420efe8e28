"""FHIR search parameters of the gateway, parsed into what the gRPC requests take. Pure."""

from __future__ import annotations

import re

from emr_fhir.resources import LOINC

# FHIR id grammar (R4 datatypes: id).
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")


class SearchParameterError(ValueError):
    """A search parameter the gateway cannot serve; answered with 400 and an OperationOutcome."""

    def __init__(self, parameter: str, problem: str) -> None:
        super().__init__(f"search parameter {parameter}: {problem}")
        self.parameter = parameter


def resource_id(value: str, parameter: str) -> str:
    """A logical id as FHIR defines it (the platform's ids are UUIDs, which fit)."""
    if not _FHIR_ID.fullmatch(value):
        raise SearchParameterError(parameter, "must be a FHIR id (letters, digits, '-', '.'; at most 64)")
    return value


def patient_reference(value: str | None) -> str:
    """The patient id of ``patient=<id>`` or ``patient=Patient/<id>``; required."""
    if not value:
        raise SearchParameterError("patient", "required")
    if "/" in value:
        resource_type, _, value = value.partition("/")
        if resource_type != "Patient":
            raise SearchParameterError("patient", "must reference a Patient")
    return resource_id(value, "patient")


def page_count(value: str | None, maximum: int) -> int:
    """``_count`` as a page size; absent is 0 (the service's default), above ``maximum`` is capped
    (a server may return fewer than asked, never more)."""
    if value is None:
        return 0
    if not _WHOLE_NUMBER.fullmatch(value) or int(value) < 1:
        raise SearchParameterError("_count", "must be a whole number of at least 1")
    return min(int(value), maximum)


def loinc_code(value: str | None) -> str:
    """The code of ``code=<code>`` or ``code=http://loinc.org|<code>``; empty when absent. One code:
    the records service lists one code at a time, and only LOINC codes are stored."""
    if not value:
        return ""
    if "," in value:
        raise SearchParameterError("code", "only one code is supported")
    system, separator, code = value.rpartition("|")
    if separator and system != LOINC:
        raise SearchParameterError("code", f"only {LOINC} codes are stored")
    if not code:
        raise SearchParameterError("code", "has no code")
    return code
