"""What of a special category of clinical data goes to the national shared database
(docs/privacy-sensitive.md). Pure; no I/O.

HIV data is withheld from the FHIR submission: a visit carrying HIV is not submitted at all, and an
HIV resource never leaves with another visit. Other categories are submitted with their security
labels (emr_fhir.resources.security_labels), which tell the receiver to restrict them. The BHYT
claim of a visit is sent whatever its categories: the insurer pays for the treatment it bills.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from emr.records.v1 import records_pb2, sensitivity_pb2

WITHHELD_FROM_FHIR_SUBMISSION = frozenset({sensitivity_pb2.SENSITIVITY_CATEGORY_HIV})


def withheld(categories: Iterable[int]) -> bool:
    """Whether data carrying these categories stays out of the national FHIR submission."""
    return any(category in WITHHELD_FROM_FHIR_SUBMISSION for category in categories)


def submitted(resources: Sequence[records_pb2.ClinicalResource]) -> list[records_pb2.ClinicalResource]:
    """The resources of a visit that its FHIR submission carries."""
    return [resource for resource in resources if not withheld(resource.sensitivity)]
