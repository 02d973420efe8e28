"""Throughput cost of authentication + authorization + mutual TLS on identity GetPatient, same run.

    .venv/bin/python bench/security_cost.py --patients 200 --rounds 4 --seconds 8 --concurrency 16

Starts FerretDB (unless MONGODB_URI is set) and, per mode, an audit and an identity process
(``MODES``; one identity database, an audit database per mode):
- "off": plaintext ports and channels (no TLS_* variables), AUTH_ENABLED=false: no token, no policy;
- "mtls": every port and channel mutual TLS (the client presents the development client
  certificate), no token checked;
- "auth": plaintext, an ES256 bearer token verified against the JWKS and the policy table applied,
  the caller a doctor of the registering facility (the treatment relationship is looked up in
  identity's data, then cached for 60 s);
- "mtls+auth": both, as the platform runs.
Rounds turn the order of the modes so that drift of the machine hits each; it prints GetPatient
calls per second of each round, the medians, the loss against "off" (target for "mtls+auth":
<= 20%), and the cost of a new connection (TLS handshake) per mode. Rate limits are off in every
mode (they would cap the figures, not measure them). Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from emr.identity.v1 import identity_pb2, identity_pb2_grpc

from emr_devstack import load
from emr_devstack.processes import free_port
from emr_devstack.stack import Ports, Stack
from emr_devstack.tokens import caller_metadata

pb = identity_pb2
FACILITY = "79001"
DOCTOR = tuple(caller_metadata("dr-bench", FACILITY, "TREATMENT", role="doctor"))
REGISTRAR = tuple(caller_metadata("registrar-bench", FACILITY, "TREATMENT", role="registrar"))
PLAINTEXT = {"TLS_CA_FILE": "", "TLS_CERT_FILE": "", "TLS_KEY_FILE": ""}
NO_AUTH = {"AUTH_ENABLED": "false"}
UNLIMITED = {"IDENTITY_RATE_LIMIT_PER_SECOND": "0", "AUDIT_RATE_LIMIT_PER_SECOND": "0"}


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


async def measure(deployments: list[Deployment], args: argparse.Namespace) -> None:
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--connections", type=int, default=50, help="new channels timed per mode")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="security-cost-") as run_dir:
        stack = Stack(run_dir=Path(run_dir), ports=Ports.free(), mongodb_uri=os.environ.get("MONGODB_URI"))
        try:
            if stack.mongodb_uri is None:
                stack.start_ferretdb()
            deployments = [deploy(stack, mode) for mode in MODES]
            asyncio.run(measure(deployments, args))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
