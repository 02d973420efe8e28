"""Throughput cost of tracing and metrics on identity GetPatient.

    .venv/bin/python bench/observability_cost.py --patients 200 --rounds 4 --seconds 8 --concurrency 16

Starts FerretDB (unless MONGODB_URI is set), audit, and two identity processes on one database:
"off" with OTEL_SDK_DISABLED=true and IDENTITY_METRICS_PORT=0 (no spans, no server metrics, no
/metrics); "on" sampling 10% of traces (OTEL_TRACES_SAMPLER=parentbased_traceidratio,
OTEL_TRACES_SAMPLER_ARG=0.1), exporting them over OTLP to a receiver in this process, with metrics
served and scraped every second. Rounds alternate off/on so that drift of the machine hits both; it
prints GetPatient calls per second of each round, the medians and the loss (target <= 15%).
Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from emr.identity.v1 import identity_pb2, identity_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from emr_devstack import load
from emr_devstack.processes import free_port
from emr_devstack.stack import Ports, Stack

pb = identity_pb2
READER = (("x-actor-id", "bench-reader"), ("x-facility-code", "79001"), ("x-purpose-of-use", "TREATMENT"))


class SpanCounter(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP receiver that only counts what it is sent."""

    def __init__(self) -> None:
        self.spans = 0
        self._lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        with self._lock:
            self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def registration(serial: int) -> pb.RegisterPatientRequest:
    """A synthetic person (never real data)."""
    return pb.RegisterPatientRequest(
        request_id=str(uuid.uuid4()),
        full_name=f"Nguyễn Văn Bench {serial}",
        birth_date=f"19{50 + serial % 50:02d}-0{1 + serial % 9}-1{serial % 10}",
        sex=pb.SEX_MALE,
        facility_code="79001",
        identifiers=[
            pb.Identifier(system=pb.IDENTIFIER_SYSTEM_CCCD, value=f"079{50 + serial % 50:03d}{serial:06d}")
        ],
    )


async def calls_per_second(
    stack: Stack, target: str, patient_ids: list[str], concurrency: int, seconds: float
) -> float:
    async with stack.dev_channel(target) as channel:
        stub = identity_pb2_grpc.PatientIdentityServiceStub(channel)
        for patient_id in patient_ids[:20]:  # warm-up: connection, caches
            await stub.GetPatient(pb.GetPatientRequest(patient_id=patient_id), metadata=READER)

        async def get(index: int) -> object:
            request = pb.GetPatientRequest(patient_id=patient_ids[index % len(patient_ids)])
            return await stub.GetPatient(request, metadata=READER, timeout=30)

        return await load.calls_per_second(get, concurrency, seconds)


def scrape_every_second(port: int, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            response.read()


async def measure(
    stack: Stack, on: Ports, off: Ports, collector: SpanCounter, args: argparse.Namespace
) -> None:
    async with stack.dev_channel(stack.target("identity")) as channel:
        stub = identity_pb2_grpc.PatientIdentityServiceStub(channel)
        patient_ids = [
            (await stub.RegisterPatient(registration(i), metadata=READER)).patient.patient_id
            for i in range(args.patients)
        ]
    print(f"registered patients={len(patient_ids)}", flush=True)
    results: dict[str, list[float]] = {"off": [], "on": []}
    for round_number in range(1, args.rounds + 1):
        for mode, ports in (("off", off), ("on", on)):
            stop = threading.Event()
            scraper = None
            if mode == "on":
                scraper = threading.Thread(target=scrape_every_second, args=(ports.identity_metrics, stop))
                scraper.start()
            rate = await calls_per_second(
                stack, f"127.0.0.1:{ports.identity}", patient_ids, args.concurrency, args.seconds
            )
            stop.set()
            if scraper is not None:
                scraper.join()
            results[mode].append(rate)
            print(f"round={round_number} mode={mode} GetPatient_per_s={rate:.1f}", flush=True)
    off_rate, on_rate = statistics.median(results["off"]), statistics.median(results["on"])
    print(
        f"spans received so far (10% of calls sampled; each with MongoDB and client child spans): {collector.spans}"
    )
    print(
        f"GetPatient_per_s median off={off_rate:.1f} on={on_rate:.1f} "
        f"throughput_loss={(1 - on_rate / off_rate) * 100:.1f}% (target <= 15%)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    collector = SpanCounter()
    receiver = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)
    receiver_port = receiver.add_insecure_port("127.0.0.1:0")
    receiver.start()
    with tempfile.TemporaryDirectory(prefix="observability-cost-") as run_dir:
        stack = Stack(run_dir=Path(run_dir), ports=Ports.free(), mongodb_uri=os.environ.get("MONGODB_URI"))
        on = stack.with_ports(identity=free_port(), identity_metrics=free_port())
        off = stack.with_ports(identity=free_port(), identity_metrics=0)
        try:
            if stack.mongodb_uri is None:
                stack.start_ferretdb()
            stack.start_service("audit")
            stack.start_service("identity", extra_env={"OTEL_SDK_DISABLED": "true"})
            stack.start_service(
                "identity",
                ports=on,
                name="identity-on",
                extra_env={
                    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                    "OTEL_TRACES_SAMPLER_ARG": "0.1",
                    "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver_port}",
                    "OTEL_EXPORTER_OTLP_INSECURE": "true",
                },
            )
            stack.start_service(
                "identity", ports=off, name="identity-off", extra_env={"OTEL_SDK_DISABLED": "true"}
            )
            asyncio.run(measure(stack, on, off, collector, args))
        finally:
            stack.stop()
            receiver.stop(grace=None)


if __name__ == "__main__":
    main()
