"""Throughput cost of authentication + authorization + mutual TLS on identity GetPatient, same run.

    .venv/bin/python bench/security_cost.py --patients 200 --rounds 4 --seconds 8 --concurrency 16

Starts FerretDB (unless MONGODB_URI is set) and, per mode, an audit and an identity process
(``MODES``; one identity database, an audit database per mode):
- "off": plaintext ports and channels (no TLS_* variables), AUTH_ENABLED=false: no token, no policy;
- "mtls": every port and channel mutual TLS (the client presents the development client
  certificate), no token checked;
- "auth": plaintext, an ES256 bearer token verified against the JWKS and the policy table applied,
  the caller a doctor of the registering facility (the access model's answer, its registration,
  is looked up in identity's data on every call);
- "mtls+auth": both, as the platform runs.
Rounds turn the order of the modes so that drift of the machine hits each; it prints GetPatient
calls per second of each round, the medians, the loss against "off" (target for "mtls+auth":
<= 20%), and the cost of a new connection (TLS handshake) per mode. Rate limits are off in every
mode (they would cap the figures, not measure them).

Then what strangers cost (``--flood``, 0 skips it): an identity (and its audit) as the platform runs
(mutual TLS, tokens, the default rate limits), listening on 127.0.0.1 and ::1. An authorised
doctor calls GetPatient one call after another from 127.0.0.1, first alone, then while a separate
process sends ``--flood`` GetPatient calls without a token from ::1 (another address, as a stranger
is; it holds a client certificate of the platform CA, or TLS would refuse it before gRPC). It prints
the doctor's p50 alone and during the flood and their ratio (goal: within 2x), what the flood got
(UNAUTHENTICATED, and RESOURCE_EXHAUSTED once its address is over the per-peer limit), and the
audit events the flood added (goal: 0; counted by QueryEvents on the flood's target patient).
Nothing leaves the loopback addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from emr.audit.v1 import audit_pb2, audit_pb2_grpc
from emr.identity.v1 import identity_pb2, identity_pb2_grpc

from emr_devstack import load
from emr_devstack.certs import TlsFiles
from emr_devstack.processes import free_port
from emr_devstack.stack import Ports, Stack
from emr_devstack.tokens import caller_metadata

pb = identity_pb2
FACILITY = "79001"
DOCTOR = tuple(caller_metadata("dr-bench", FACILITY, "TREATMENT", role="doctor"))
REGISTRAR = tuple(caller_metadata("registrar-bench", FACILITY, "TREATMENT", role="registrar"))
PLAINTEXT = {"TLS_CA_FILE": "", "TLS_CERT_FILE": "", "TLS_KEY_FILE": ""}
NO_AUTH = {"AUTH_ENABLED": "false"}
UNLIMITED = {
    "IDENTITY_RATE_LIMIT_PER_SECOND": "0",
    "AUDIT_RATE_LIMIT_PER_SECOND": "0",
    "IDENTITY_PEER_RATE_LIMIT_PER_SECOND": "0",
    "AUDIT_PEER_RATE_LIMIT_PER_SECOND": "0",
}
AUDITOR = tuple(caller_metadata("auditor-bench", role="auditor"))


@dataclass(frozen=True)
class Mode:
    """One configuration measured: its processes' environment and how its client calls."""

    name: str
    tls: bool
    env: dict[str, str] = field(default_factory=dict)
    metadata: Sequence[tuple[str, str]] = DOCTOR


MODES = (
    Mode("off", tls=False, env={**PLAINTEXT, **NO_AUTH}),
    Mode("mtls", tls=True, env=NO_AUTH),
    Mode("auth", tls=False, env=PLAINTEXT),
    Mode("mtls+auth", tls=True),
)
BASELINE = "off"


@dataclass
class Deployment:
    """A mode's identity (and its own audit) on free ports."""

    mode: Mode
    identity_target: str
    open_channel: Callable[[str], grpc.aio.Channel]


def registration(serial: int) -> pb.RegisterPatientRequest:
    """A synthetic person (never real data)."""
    return pb.RegisterPatientRequest(
        request_id=str(uuid.uuid4()),
        full_name=f"Lê Thị Bench {serial}",
        birth_date=f"19{50 + serial % 50:02d}-0{1 + serial % 9}-1{serial % 10}",
        sex=pb.SEX_FEMALE,
        facility_code=FACILITY,
        identifiers=[
            pb.Identifier(system=pb.IDENTIFIER_SYSTEM_CCCD, value=f"0791{50 + serial % 50:02d}{serial:06d}")
        ],
    )


def deploy(stack: Stack, mode: Mode) -> Deployment:
    audit_port, identity_port = free_port(), free_port()
    ports = stack.with_ports(
        audit=audit_port, audit_metrics=free_port(), identity=identity_port, identity_metrics=free_port()
    )
    env = {
        **UNLIMITED,
        **mode.env,
        "IDENTITY_AUDIT_TARGET": f"127.0.0.1:{audit_port}",
        # Each mode's audit keeps its own chain: audits sharing one chain would each first catch
        # up with what the others appended (a cost of the bench's layout, not of security).
        "AUDIT_MONGODB_DATABASE": f"emr_audit_bench_{mode.name.replace('+', '_')}",
    }
    stack.start_service("audit", ports, name=f"audit-{mode.name}", extra_env=env)
    stack.start_service("identity", ports, name=f"identity-{mode.name}", extra_env=env)
    opener = stack.client_tls.aio_channel if mode.tls else grpc.aio.insecure_channel
    return Deployment(mode, f"127.0.0.1:{identity_port}", opener)


async def calls_per_second(
    deployment: Deployment, patient_ids: list[str], concurrency: int, seconds: float
) -> float:
    metadata = deployment.mode.metadata
    async with deployment.open_channel(deployment.identity_target) as channel:
        stub = identity_pb2_grpc.PatientIdentityServiceStub(channel)
        for patient_id in patient_ids[:20]:  # warm-up: connection, caches
            await stub.GetPatient(pb.GetPatientRequest(patient_id=patient_id), metadata=metadata, timeout=30)

        async def get(index: int) -> object:
            request = pb.GetPatientRequest(patient_id=patient_ids[index % len(patient_ids)])
            return await stub.GetPatient(request, metadata=metadata, timeout=30)

        return await load.calls_per_second(get, concurrency, seconds)


async def new_connection_ms(deployment: Deployment, patient_id: str, connections: int) -> float:
    """Median time of a first call on a new channel (TCP, TLS handshake, HTTP/2, the call)."""
    samples = []
    for _ in range(connections):
        started = time.perf_counter()
        async with deployment.open_channel(deployment.identity_target) as channel:
            stub = identity_pb2_grpc.PatientIdentityServiceStub(channel)
            await stub.GetPatient(
                pb.GetPatientRequest(patient_id=patient_id), metadata=deployment.mode.metadata, timeout=30
            )
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def measure(deployments: list[Deployment], args: argparse.Namespace) -> list[str]:
    first = deployments[0]
    async with first.open_channel(first.identity_target) as channel:
        stub = identity_pb2_grpc.PatientIdentityServiceStub(channel)
        patient_ids = [
            (await stub.RegisterPatient(registration(i), metadata=REGISTRAR, timeout=30)).patient.patient_id
            for i in range(args.patients)
        ]
    print(f"registered patients={len(patient_ids)}", flush=True)
    results: dict[str, list[float]] = {d.mode.name: [] for d in deployments}
    for round_number in range(1, args.rounds + 1):
        # The order turns each round, so that no mode always runs right after the same one.
        shift = round_number % len(deployments)
        for deployment in deployments[shift:] + deployments[:shift]:
            rate = await calls_per_second(deployment, patient_ids, args.concurrency, args.seconds)
            results[deployment.mode.name].append(rate)
            print(f"round={round_number} mode={deployment.mode.name} GetPatient_per_s={rate:.1f}", flush=True)
    baseline = statistics.median(results[BASELINE])
    for deployment in deployments:
        name = deployment.mode.name
        rate = statistics.median(results[name])
        connect = await new_connection_ms(deployment, patient_ids[0], args.connections)
        loss = "" if name == BASELINE else f" throughput_loss={(1 - rate / baseline) * 100:.1f}%"
        print(
            f"mode={name} GetPatient_per_s median={rate:.1f}{loss} new_connection_first_call_ms={connect:.1f}",
            flush=True,
        )
    print('target: "mtls+auth" (authentication + authorization + mTLS) <= 20% throughput loss', flush=True)
    return patient_ids


# --- what strangers cost --------------------------------------------------------------------------


@dataclass
class Guarded:
    """An identity and its audit as the platform runs them, reachable from two loopback addresses."""

    port: int
    audit_port: int
    tls: TlsFiles


def deploy_guarded(stack: Stack) -> Guarded:
    audit_port, identity_port = free_port(), free_port()
    ports = stack.with_ports(
        audit=audit_port, audit_metrics=free_port(), identity=identity_port, identity_metrics=free_port()
    )
    env = {
        # Both 127.0.0.1 and ::1: the doctor and the stranger are two peer addresses on one machine.
        "IDENTITY_LISTEN_HOST": "localhost",
        "IDENTITY_AUDIT_TARGET": f"127.0.0.1:{audit_port}",
        "AUDIT_MONGODB_DATABASE": "emr_audit_bench_flood",
    }
    stack.start_service("audit", ports, name="audit-guarded", extra_env=env)
    stack.start_service("identity", ports, name="identity-guarded", extra_env=env)
    return Guarded(identity_port, audit_port, stack.client_tls)


def flood(
    target: str, tls: TlsFiles, patient_id: str, calls: int, concurrency: int
) -> tuple[float, float, dict[str, int]]:
    """Runs in its own process: ``calls`` GetPatient calls without a token; returns when it started
    and ended (time.time()) and how many calls got each status."""

    async def run() -> tuple[float, float, dict[str, int]]:
        codes: Counter[str] = Counter()
        request = pb.GetPatientRequest(patient_id=patient_id)
        async with tls.aio_channel(target) as channel:
            stub = identity_pb2_grpc.PatientIdentityServiceStub(channel)
            await channel.channel_ready()
            queue = iter(range(calls))
            started = time.time()

            async def worker() -> None:
                for _ in queue:
                    try:
                        await stub.GetPatient(request, timeout=30)
                        codes["OK"] += 1
                    except grpc.aio.AioRpcError as error:
                        codes[error.code().name] += 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return started, time.time(), dict(codes)

    return asyncio.run(run())


async def events_of(audit: audit_pb2_grpc.AuditServiceStub, patient_id: str) -> int:
    count, token = 0, ""
    while True:
        page = await audit.QueryEvents(
            audit_pb2.QueryEventsRequest(patient_id=patient_id, page_size=500, page_token=token),
            metadata=AUDITOR,
            timeout=60,
        )
        count += len(page.events)
        token = page.next_page_token
        if not token:
            return count


async def measure_flood(guarded: Guarded, patient_ids: list[str], args: argparse.Namespace) -> None:
    async with (
        guarded.tls.aio_channel(f"127.0.0.1:{guarded.port}") as channel,
        guarded.tls.aio_channel(f"127.0.0.1:{guarded.audit_port}") as audit_channel,
    ):
        doctor = identity_pb2_grpc.PatientIdentityServiceStub(channel)
        audit = audit_pb2_grpc.AuditServiceStub(audit_channel)
        # The flood's target: a real patient (strangers aim at real ids), read by nobody else here.
        target = (
            await doctor.RegisterPatient(registration(10**6 - 1), metadata=REGISTRAR, timeout=30)
        ).patient
        readable = [p for p in patient_ids if p != target.patient_id]

        async def timed_read(index: int) -> tuple[float, float]:
            started = time.time()
            request = pb.GetPatientRequest(patient_id=readable[index % len(readable)])
            await doctor.GetPatient(request, metadata=DOCTOR, timeout=30)
            return started, (time.time() - started) * 1000

        for index in range(50):  # warm-up: connection and token caches
            await timed_read(index)
        alone = [(await timed_read(index))[1] for index in range(args.latency_calls)]
        events_before = await events_of(audit, target.patient_id)

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            loop = asyncio.get_running_loop()
            flooding = loop.run_in_executor(
                pool,
                flood,
                f"[::1]:{guarded.port}",
                guarded.tls,
                target.patient_id,
                args.flood,
                args.flood_concurrency,
            )
            samples: list[tuple[float, float]] = []
            index = 0
            while not flooding.done():
                samples.append(await timed_read(index))
                index += 1
            flood_started, flood_ended, codes = await flooding
        during = [ms for started, ms in samples if flood_started <= started <= flood_ended]
        # What the flood recorded was stored before its calls were answered (audit before answer).
        events_added = await events_of(audit, target.patient_id) - events_before

    p50_alone, p50_during = statistics.median(alone), statistics.median(during)
    print(
        f"flood: {args.flood} GetPatient without a token from ::1, {args.flood_concurrency} in flight, "
        f"{flood_ended - flood_started:.1f}s ({args.flood / (flood_ended - flood_started):.0f}/s); "
        f"answers {dict(sorted(codes.items()))}",
        flush=True,
    )
    print(
        f"authorised GetPatient p50: alone={p50_alone:.2f}ms ({len(alone)} calls) "
        f"during_flood={p50_during:.2f}ms ({len(during)} calls) ratio={p50_during / p50_alone:.2f} "
        f"(goal <= 2); p95 alone={statistics.quantiles(alone, n=20)[18]:.2f}ms "
        f"during={statistics.quantiles(during, n=20)[18]:.2f}ms",
        flush=True,
    )
    print(f"audit events the flood added: {events_added} (goal 0)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--connections", type=int, default=50, help="new channels timed per mode")
    parser.add_argument("--flood", type=int, default=5000, help="unauthenticated calls of the flood; 0: skip")
    parser.add_argument("--flood-concurrency", type=int, default=256, help="flood calls in flight")
    parser.add_argument("--latency-calls", type=int, default=300, help="authorised calls timed alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="security-cost-") as run_dir:
        stack = Stack(run_dir=Path(run_dir), ports=Ports.free(), mongodb_uri=os.environ.get("MONGODB_URI"))
        try:
            if stack.mongodb_uri is None:
                stack.start_ferretdb()
            deployments = [deploy(stack, mode) for mode in MODES]
            guarded = deploy_guarded(stack) if args.flood else None
            asyncio.run(measure_all(deployments, guarded, args))
        finally:
            stack.stop()


async def measure_all(
    deployments: list[Deployment], guarded: Guarded | None, args: argparse.Namespace
) -> None:
    patient_ids = await measure(deployments, args)
    if guarded is not None:
        await measure_flood(guarded, patient_ids, args)


if __name__ == "__main__":
    main()
