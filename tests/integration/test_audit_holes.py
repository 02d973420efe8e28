"""A hole in the audit chain is told apart from an alteration: a stretch of event documents deleted
directly in audit's database is reported by VerifyIntegrity as missing events with the exact
stretch, and by audit's own periodic check on /metrics; putting the original documents back makes
the log intact again. An event whose content is edited is reported as altered, never as missing."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import httpx
from emr.audit.v1 import audit_pb2, audit_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

EVENTS = 60
# The stretch cut out: it spans checkpoint boundaries (checkpoints cover at most 20 events here).
MISSING_FROM, MISSING_THROUGH = 23, 37
ALTERED_SEQUENCE = 45


def synthetic_event(index: int) -> audit_pb2.AuditEvent:
    event = audit_pb2.AuditEvent(
        event_id=f"hole-{uuid.uuid4().hex[:8]}-{index:03d}",
        action=audit_pb2.AUDIT_ACTION_READ,
        outcome=audit_pb2.AUDIT_OUTCOME_SUCCESS,
        source_service="records",
        actor_id=f"dr-{index % 4}",
        actor_facility_code="79001",
        patient_id=f"patient-{index % 5}",
        resource_type="Encounter",
        resource_id=f"enc-{index}",
        operation="/emr.records.v1.ClinicalRecordsService/GetEncounter",
    )
    event.occurred_time.FromDatetime(datetime.now(UTC))
    return event


async def integrity_findings(metrics_port: int) -> dict[str, float]:
    """emr_audit_integrity_findings by kind, as audit's /metrics page shows it."""
    async with httpx.AsyncClient() as http:
        body = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    return {
        sample.labels["kind"]: sample.value
        for family in text_string_to_metric_families(body)
        if family.name == "emr_audit_integrity_findings"
        for sample in family.samples
    }


async def logged_audit(
    service_instance: Callable[..., Any],
    audit_database: str,
    open_channel: Callable[[str], grpc.aio.Channel],
    tools: Any,
) -> tuple[Any, audit_pb2_grpc.AuditServiceStub]:
    """An audit instance on its own database, checking itself every 0.2 s, holding EVENTS events
    that checkpoints cover and its periodic check has found intact."""
    env = {
        **tools.audit_env(audit_database, every_events=20, interval_seconds=0.3),
        "AUDIT_INTEGRITY_CHECK_INTERVAL_SECONDS": "0.2",
    }
    instance = service_instance("audit", env)
    audit = audit_pb2_grpc.AuditServiceStub(open_channel(instance.target))
    for first in range(0, EVENTS, 20):
        await audit.AppendEvents(
            audit_pb2.AppendEventsRequest(events=[synthetic_event(i) for i in range(first, first + 20)])
        )
    await tools.checkpointed_through(audit, EVENTS)
    before = await audit.VerifyIntegrity(audit_pb2.VerifyIntegrityRequest())
    assert before.intact and before.checked_events == EVENTS, before
    assert before.finding_kind == audit_pb2.INTEGRITY_FINDING_KIND_UNSPECIFIED
    assert set((await integrity_findings(instance.metrics_port)).values()) == {0.0}
    return instance, audit


async def test_a_deleted_stretch_is_reported_as_missing_events_with_its_exact_bounds(
    service_instance: Callable[..., Any],
    audit_database: str,
    open_channel: Callable[[str], grpc.aio.Channel],
    tools: Any,
    mongo: Any,
) -> None:
    instance, audit = await logged_audit(service_instance, audit_database, open_channel, tools)
    events = mongo[audit_database]["events"]
    stretch = {"_id": {"$gte": MISSING_FROM, "$lte": MISSING_THROUGH}}
    originals = await events.find(stretch).sort("_id", 1).to_list(None)
    assert [document["_id"] for document in originals] == list(range(MISSING_FROM, MISSING_THROUGH + 1))
    await events.delete_many(stretch)

    verdict = await audit.VerifyIntegrity(audit_pb2.VerifyIntegrityRequest())
    assert not verdict.intact
    assert verdict.finding_kind == audit_pb2.INTEGRITY_FINDING_KIND_MISSING_EVENTS
    assert (verdict.first_bad_sequence, verdict.missing_from_sequence, verdict.missing_through_sequence) == (
        MISSING_FROM,
        MISSING_FROM,
        MISSING_THROUGH,
    )
    assert (
        verdict.problem
        == f"events {MISSING_FROM}..{MISSING_THROUGH} are missing (next stored is {MISSING_THROUGH + 1})"
    )
    assert verdict.checked_events == MISSING_FROM - 1

    # A range that ends inside the hole names the stretch up to where the range ends.
    partial = await audit.VerifyIntegrity(audit_pb2.VerifyIntegrityRequest(from_sequence=10, to_sequence=30))
    assert partial.finding_kind == audit_pb2.INTEGRITY_FINDING_KIND_MISSING_EVENTS
    assert (partial.missing_from_sequence, partial.missing_through_sequence) == (MISSING_FROM, 30)
    assert partial.problem == f"events {MISSING_FROM}..30 are missing"

    # Audit's periodic check finds the hole by itself (its sweep re-reads every checkpoint's range).
    async def missing_reported() -> dict[str, float] | None:
        found = await integrity_findings(instance.metrics_port)
        return found if found.get("missing_events") == 1.0 else None

    findings = await tools.poll_until(missing_reported)
    assert findings["altered"] == findings["checkpoint_mismatch"] == findings["bad_signature"] == 0.0

    # The runbook's repair: the original documents back from a backup, unchanged.
    await events.insert_many(originals)
    assert (await audit.VerifyIntegrity(audit_pb2.VerifyIntegrityRequest())).intact

    async def cleared() -> dict[str, float] | None:
        found = await integrity_findings(instance.metrics_port)
        return found if set(found.values()) == {0.0} else None

    await tools.poll_until(cleared)


async def test_an_edited_event_is_reported_as_altered_not_missing(
    service_instance: Callable[..., Any],
    audit_database: str,
    open_channel: Callable[[str], grpc.aio.Channel],
    tools: Any,
    mongo: Any,
) -> None:
    instance, audit = await logged_audit(service_instance, audit_database, open_channel, tools)
    events = mongo[audit_database]["events"]
    await events.update_one({"_id": ALTERED_SEQUENCE}, {"$set": {"actor_id": "dr-innocent"}})

    verdict = await audit.VerifyIntegrity(audit_pb2.VerifyIntegrityRequest())
    assert not verdict.intact
    assert verdict.finding_kind == audit_pb2.INTEGRITY_FINDING_KIND_ALTERED_EVENT
    assert verdict.first_bad_sequence == ALTERED_SEQUENCE
    assert verdict.problem == "stored hash does not match the event's content"
    assert (verdict.missing_from_sequence, verdict.missing_through_sequence) == (0, 0)

    async def altered_reported() -> dict[str, float] | None:
        found = await integrity_findings(instance.metrics_port)
        return found if found.get("altered") == 1.0 else None

    findings = await tools.poll_until(altered_reported)
    assert findings["missing_events"] == 0.0
