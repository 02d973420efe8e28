"""Throughput cost of authentication + authorization on identity GetPatient.

    .venv/bin/python bench/auth_cost.py --patients 200 --rounds 4 --seconds 8 --concurrency 16

Starts FerretDB (unless MONGODB_URI is set), audit, and two identity processes on one database,
alike but for AUTH_ENABLED: "off" (no token checked, no policy) and "on" (ES256 bearer token
verified against the JWKS file, the policy table applied). Against "on" it measures two callers:
"on-doctor", a doctor of the registering facility (the treatment relationship is looked up in
identity's data on every call), and "on-platform", a platform-service token (no data looked up).
Rounds alternate the modes (in a turning order) so that drift of the machine hits all; it prints GetPatient calls per
second of each round, the medians and the loss against "off" (target <= 20%). Nothing leaves
127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import grpc
from emr.identity.v1 import identity_pb2, identity_pb2_grpc

from emr_devstack.processes import free_port
from emr_devstack.stack import Ports, Stack
from emr_devstack.tokens import caller_metadata

pb = identity_pb2
FACILITY = "79001"
CALLERS: dict[str, Sequence[tuple[str, str]]] = {
    "off": [("x-purpose-of-use", "TREATMENT")],
    "on-doctor": caller_metadata("dr-bench", FACILITY, "TREATMENT", role="doctor"),
    "on-platform": caller_metadata("service:bench", "", "TREATMENT", role="platform-service"),
}


def registration(serial: int) -> pb.RegisterPatientRequest:
    """A synthetic person (never real data)."""
    return pb.RegisterPatientRequest(
        request_id=str(uuid.uuid4()),
        full_name=f"Phạm Thị Bench {serial}",
        birth_date=f"19{50 + serial % 50:02d}-0{1 + serial % 9}-1{serial % 10}",
        sex=pb.SEX_FEMALE,
        facility_code=FACILITY,
        identifiers=[
            pb.Identifier(system=pb.IDENTIFIER_SYSTEM_CCCD, value=f"0791{50 + serial % 50:02d}{serial:06d}")
        ],
    )


async def calls_per_second(
    target: str, metadata: Sequence[tuple[str, str]], patient_ids: list[str], concurrency: int, seconds: float
) -> float:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = identity_pb2_grpc.PatientIdentityServiceStub(channel)
        for patient_id in patient_ids[:20]:  # warm-up: connection, caches
            await stub.GetPatient(pb.GetPatientRequest(patient_id=patient_id), metadata=metadata)
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            nonlocal done
            index = offset
            while time.perf_counter() < deadline:
                request = pb.GetPatientRequest(patient_id=patient_ids[index % len(patient_ids)])
                await stub.GetPatient(request, metadata=metadata, timeout=30)
                done += 1
                index += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return done / (time.perf_counter() - started)


async def measure(on: Ports, off: Ports, args: argparse.Namespace) -> None:
    registrar = caller_metadata("registrar-bench", FACILITY, "TREATMENT", role="registrar")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{on.identity}") as channel:
        stub = identity_pb2_grpc.PatientIdentityServiceStub(channel)
        patient_ids = [
            (await stub.RegisterPatient(registration(i), metadata=registrar)).patient.patient_id
            for i in range(args.patients)
        ]
    print(f"registered patients={len(patient_ids)}", flush=True)
    results: dict[str, list[float]] = {mode: [] for mode in CALLERS}
    for round_number in range(1, args.rounds + 1):
        # The order turns each round, so that no mode always runs right after the same one.
        modes = list(CALLERS)
        shift = round_number % len(modes)
        for mode in modes[shift:] + modes[:shift]:
            metadata = CALLERS[mode]
            ports = off if mode == "off" else on
            rate = await calls_per_second(
                f"127.0.0.1:{ports.identity}", metadata, patient_ids, args.concurrency, args.seconds
            )
            results[mode].append(rate)
            print(f"round={round_number} mode={mode} GetPatient_per_s={rate:.1f}", flush=True)
    off_rate = statistics.median(results["off"])
    for mode in ("on-doctor", "on-platform"):
        on_rate = statistics.median(results[mode])
        print(
            f"GetPatient_per_s median off={off_rate:.1f} {mode}={on_rate:.1f} "
            f"throughput_loss={(1 - on_rate / off_rate) * 100:.1f}% (target <= 20%)",
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

    with tempfile.TemporaryDirectory(prefix="auth-cost-") as run_dir:
        stack = Stack(run_dir=Path(run_dir), ports=Ports.free(), mongodb_uri=os.environ.get("MONGODB_URI"))
        on = replace(stack.ports, identity=free_port(), identity_metrics=0)
        off = replace(stack.ports, identity=free_port(), identity_metrics=0)
        quiet = {"OTEL_SDK_DISABLED": "true"}
        try:
            if stack.mongodb_uri is None:
                stack.start_ferretdb()
            stack.start_service("audit", extra_env=quiet)
            stack.start_service("identity", ports=on, name="identity-on", extra_env=quiet)
            stack.start_service(
                "identity", ports=off, name="identity-off", extra_env={**quiet, "AUTH_ENABLED": "false"}
            )
            asyncio.run(measure(on, off, args))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
