"""Dashboards and alerts query what the platform really exports: the metric names of every panel and
rule appear on the services' /metrics pages, and Debian's Prometheus, scraping the running platform,
holds the RED series and the sync backlog series with the labels the dashboards group by."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from emr.identity.v1 import identity_pb2, identity_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from emr_devstack.certs import tls_files
from emr_devstack.observability import (
    RULES,
    LocalPrometheus,
    dashboard_queries,
    exported_names,
    metric_names,
    recorded_names,
    rule_queries,
    scrape,
)
from emr_devstack.stack import Stack
from emr_devstack.tokens import caller_metadata

# The components serving /metrics, each on its own port.
SERVICES = ("identity", "records", "audit", "sync", "gateway")
IDENTITY = "emr.identity.v1.PatientIdentityService"
CLINICIAN = caller_metadata("dr-synthetic-02", "79001", "TREATMENT")


def metrics_ports(stack: Stack) -> dict[str, int]:
    return {service: getattr(stack.ports, f"{service}_metrics") for service in SERVICES}


async def drive_traffic(stack: Stack, clinical: Any, identity: Any, facility_code: str) -> str:
    """Registrations, reads (one of them refused), clinical writes, a FHIR read through the gateway:
    RED, domain and sync traffic. Returns the patient's id."""
    patient_id = await clinical.patient(facility_code)
    encounter_id = await clinical.encounter(patient_id, facility_code)
    for resource in clinical.every_resource(patient_id, facility_code, encounter_id)[:2]:
        await clinical.create(resource)
    for _ in range(5):
        await identity.GetPatient(identity_pb2.GetPatientRequest(patient_id=patient_id), metadata=CLINICIAN)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await identity.GetPatient(identity_pb2.GetPatientRequest(patient_id=""), metadata=CLINICIAN)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    async with httpx.AsyncClient(base_url=stack.url("gateway"), headers=dict(CLINICIAN)) as http:
        assert (await http.get(f"/fhir/Patient/{patient_id}")).status_code == 200
    # No token (a channel of the platform CA that adds none): refused before any audit write.
    async with tls_files(stack.certs_dir, "client").aio_channel(stack.target("identity")) as bare:
        with pytest.raises(grpc.aio.AioRpcError) as stranger:
            await identity_pb2_grpc.PatientIdentityServiceStub(bare).GetPatient(
                identity_pb2.GetPatientRequest(patient_id=patient_id), timeout=10
            )
    assert stranger.value.code() is grpc.StatusCode.UNAUTHENTICATED
    # A doctor of another facility breaks the glass and reads the patient under it.
    elsewhere = caller_metadata("dr-synthetic-er", "79099", "EMERGENCY", role="doctor")
    await identity.DeclareEmergencyAccess(
        identity_pb2.DeclareEmergencyAccessRequest(
            request_id=str(uuid.uuid4()),
            patient_id=patient_id,
            facility_code="79099",
            reason=identity_pb2.EMERGENCY_REASON_URGENT_CARE,
            justification="synthetic emergency to drive the metrics",
        ),
        metadata=elsewhere,
    )
    await identity.GetPatient(identity_pb2.GetPatientRequest(patient_id=patient_id), metadata=elsewhere)
    return str(patient_id)


async def eventually(check: Callable[[], set[str]], seconds: float) -> set[str]:
    """Polls ``check`` (what is still missing) until nothing is missing or the deadline passes."""
    deadline = time.monotonic() + seconds
    while True:
        missing = await asyncio.to_thread(check)
        if not missing or time.monotonic() > deadline:
            return missing
        await asyncio.sleep(0.5)


async def test_every_metric_of_dashboards_and_rules_is_exported(
    stack: Stack, clinical: Any, identity: Any, facility_code: str
) -> None:
    await drive_traffic(stack, clinical, identity, facility_code)
    used: dict[str, list[str]] = {}
    for where, expr in [*dashboard_queries(), *rule_queries()]:
        for name in metric_names(expr) - recorded_names():
            used.setdefault(name, []).append(where)
    assert "grpc_server_handled_total" in used and "emr_sync_pending_deliveries" in used

    def missing() -> set[str]:
        exported = set().union(*(exported_names(scrape(port)) for port in metrics_ports(stack).values()))
        return set(used) - exported

    absent = await eventually(missing, 15)
    assert not absent, "used by dashboards or rules but exported by no service:\n" + "\n".join(
        f"  {name}: {', '.join(sorted(set(used[name])))}" for name in sorted(absent)
    )


def sample(port: int, name: str, **labels: str) -> float:
    """The value of one sample on a /metrics page (0 when absent)."""
    exposition = scrape(port)
    for family in text_string_to_metric_families(exposition):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return 0.0


async def test_domain_metrics_count_what_happened(stack: Stack, clinical: Any, facility_code: str) -> None:
    ports = metrics_ports(stack)
    created = sample(ports["identity"], "emr_identity_match_outcomes_total", outcome="created")
    observations = sample(
        ports["records"], "emr_records_writes_total", resource_type="Observation", kind="created"
    )
    head = sample(ports["records"], "emr_records_change_feed_head")

    patient_id = await clinical.patient(facility_code)
    encounter_id = await clinical.encounter(patient_id, facility_code)
    await clinical.create(clinical.every_resource(patient_id, facility_code, encounter_id)[0])

    assert sample(ports["identity"], "emr_identity_match_outcomes_total", outcome="created") == created + 1
    assert sample(
        ports["records"], "emr_records_writes_total", resource_type="Observation", kind="created"
    ) == (observations + 1)
    assert sample(ports["records"], "emr_records_change_feed_head") >= head + 2  # encounter, observation
    assert (
        sample(ports["records"], "emr_mongodb_command_duration_seconds_count", command="insert", outcome="ok")
        > 0
    )
    # The audited calls above extend the chain; audit reports its height.
    assert (
        await eventually(
            lambda: set() if sample(ports["audit"], "emr_audit_chain_height") > 0 else {"height"}, 10
        )
        == set()
    )


@pytest.fixture
def prometheus(stack: Stack, tmp_path: Path) -> Iterator[LocalPrometheus]:
    server = LocalPrometheus(
        tmp_path / "prometheus", metrics_ports(stack), rule_files=sorted(RULES.glob("*.yaml"))
    )
    try:
        yield server.start()
    finally:
        server.stop()


def _labels_missing(prometheus: LocalPrometheus, wanted: dict[str, set[str]]) -> set[str]:
    """Selectors of ``wanted`` with no series in Prometheus, or whose series lack a wanted label."""
    missing = set()
    for selector, labels in wanted.items():
        series = prometheus.series(selector)
        if not any(labels <= set(found) for found in series):
            missing.add(selector)
    return missing


async def test_prometheus_scrapes_red_and_sync_backlog_series(
    stack: Stack, clinical: Any, identity: Any, facility_code: str, prometheus: LocalPrometheus
) -> None:
    patient_id = await drive_traffic(stack, clinical, identity, facility_code)
    assert patient_id not in scrape(stack.ports.gateway_metrics)  # labelled by route template only
    red_labels = {"job", "instance", "grpc_type", "grpc_service", "grpc_method"}
    get_patient = f'grpc_service="{IDENTITY}",grpc_method="GetPatient",grpc_type="unary",job="identity"'
    red = {
        f"grpc_server_started_total{{{get_patient}}}": red_labels,
        f'grpc_server_handled_total{{{get_patient},grpc_code="OK"}}': red_labels | {"grpc_code"},
        f'grpc_server_handled_total{{{get_patient},grpc_code="InvalidArgument"}}': red_labels | {"grpc_code"},
        f'grpc_server_handling_seconds_bucket{{{get_patient},le="0.5"}}': red_labels | {"le"},
        # Records calls identity for every write: the client side of the same RED.
        f'grpc_client_handled_total{{job="records",grpc_service="{IDENTITY}"}}': red_labels | {"grpc_code"},
        # The gateway's HTTP RED, by route template (never the concrete path, which holds the id).
        'http_server_requests_total{job="gateway",route="/fhir/Patient/{patient_id}",code="200"}': {
            "job",
            "instance",
            "method",
            "route",
            "code",
        },
        'http_server_request_duration_seconds_bucket{job="gateway",le="0.5"}': {"route", "method", "le"},
        # The chart's recording rules evaluate over the scraped series.
        f'emr:grpc_server_fault_ratio:rate5m{{grpc_service="{IDENTITY}"}}': {"grpc_service"},
    }
    absent = await eventually(lambda: _labels_missing(prometheus, red), 30)
    assert not absent, f"RED series not in Prometheus: {sorted(absent)}"

    # The dashboards' RED query answers per service.
    rates = prometheus.api("query", query="sum by (grpc_service) (rate(grpc_server_handled_total[1m]))")
    assert IDENTITY in {sample["metric"].get("grpc_service") for sample in rates["result"]}

    backlog = {'emr_sync_pending_deliveries{job="sync"}': {"job", "instance", "facility_code"}}
    absent = await eventually(lambda: _labels_missing(prometheus, backlog), 15)
    assert not absent, f"sync backlog series not in Prometheus: {sorted(absent)}"
