"""Speed of the identity service over a real database and a real gRPC server.

    .venv/bin/python bench/identity_speed.py --small 10000 --large 500000

Starts FerretDB (unless MONGODB_URI is set), audit and identity as processes on free loopback ports,
seeds a synthetic population of --small persons (one facility record each) through the repository
in bulk (PersonRepository.bulk_load: insert_many of prepared person, record and block documents,
not RegisterPatient), and measures MatchPatient latency (p50/p95 over --samples sequential calls
with realistic entry errors), then RegisterPatient and GetPatient throughput at --concurrency in
the same run; then reseeds with --large persons and measures all again. Prints both latencies and
their ratio. On our FerretDB (SQLite) the stack adds the `_id` lookup index FerretDB lacks
(emr_devstack.ferretdb_sqlite) after each seeding, as it does for every service it starts.
Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import grpc
from emr.identity.v1 import identity_pb2, identity_pb2_grpc
from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).parent))
from identity_quality import TODAY, registration_input

from emr_devstack.stack import Ports, Stack
from emr_identity.domain import IdentifierSystem, Outcome, PersonStatus, new_person, validate_registration
from emr_identity.linkage import FacilityRecord
from emr_identity.matching import MAX_BLOCK_MEMBERS, blocking_keys, match_record
from emr_identity.repository import COLLECTIONS, PersonRepository
from emr_identity.synthetic import SyntheticRecord, generate

DATABASE = "emr_identity_bench"
pb = identity_pb2


def request_of(record: SyntheticRecord, request_id: str) -> pb.RegisterPatientRequest:
    raw = registration_input(record, 0)
    systems = {
        IdentifierSystem.CCCD: pb.IDENTIFIER_SYSTEM_CCCD,
        IdentifierSystem.BHYT: pb.IDENTIFIER_SYSTEM_BHYT,
        IdentifierSystem.MRN: pb.IDENTIFIER_SYSTEM_MRN,
    }
    identifiers = [
        pb.Identifier(system=systems[i.system], value=i.value, facility_code=i.facility_code)
        for i in raw.identifiers
        if i.system is not None
    ]
    return pb.RegisterPatientRequest(
        request_id=request_id,
        identifiers=identifiers,
        full_name=raw.full_name,
        birth_date=raw.birth_date,
        sex=pb.SEX_MALE if record.sex == "male" else pb.SEX_FEMALE,
        facility_code=raw.facility_code,
        phone=raw.phone,
        province_code=raw.province_code,
    )


async def load(
    uri: str, persons: int, seed: int
) -> tuple[list[SyntheticRecord], list[str], dict[str, list[str]]]:
    """An index of ``persons`` persons (no duplicates among them); returns the population, the
    person ids and the blocks (key -> record ids)."""
    population = generate(persons, 0.0, seed)
    now = datetime.now(UTC)
    entries = []
    blocks: dict[str, list[str]] = defaultdict(list)
    for serial, synthetic in enumerate(population):
        registration = validate_registration(registration_input(synthetic, serial), TODAY)
        person = new_person(registration, f"bench-person-{serial}", now)
        record_id = f"bench-record-{serial}"
        record = FacilityRecord(
            record_id,
            person.person_id,
            registration.facility_code,
            match_record(registration, record_id),
            "",
            now,
            Outcome.CREATED,
        )

        entries.append((replace(person, status=PersonStatus.ACTIVE, record_ids=(record_id,)), record))
        for key in blocking_keys(record.match):
            blocks[key].append(record_id)
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri, tz_aware=True)
    db = client[DATABASE]
    for collection in COLLECTIONS:
        await db.drop_collection(collection)
    await PersonRepository(db).bulk_load(entries, blocks)
    await client.close()
    return population, [person.person_id for person, _ in entries], blocks


async def latencies(
    stub: identity_pb2_grpc.PatientIdentityServiceStub, queries: list[pb.RegisterPatientRequest]
) -> list[float]:
    found = []
    for query in queries:
        started = time.perf_counter()
        await stub.MatchPatient(pb.MatchPatientRequest(demographics=query), timeout=600)
        found.append((time.perf_counter() - started) * 1000)
    return found


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


RETRIED: dict[str, int] = defaultdict(int)


async def throughput(concurrency: int, calls: Sequence[Callable[[], Awaitable[object]]]) -> float:
    """Calls per second with ``concurrency`` callers. A failed call is retried (every call here is
    idempotent: registrations by request_id); retries are counted in RETRIED."""
    queue = list(reversed(calls))

    async def worker() -> None:
        while queue:
            call = queue.pop()
            for attempt in range(20):
                try:
                    await call()
                    break
                except grpc.aio.AioRpcError as error:
                    RETRIED[error.code().name] += 1
                    if attempt == 19:
                        raise

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(calls) / (time.perf_counter() - started)


def match_queries(
    population: list[SyntheticRecord], samples: int, seed: int
) -> list[pb.RegisterPatientRequest]:
    """Re-registrations of loaded persons with entry errors (the duplicates of a generated run)."""
    noisy = generate(len(population) + samples * 20, 0.5, seed)
    picks = [r for r in noisy[len(population) :] if r.person_key < len(population)][:samples]
    return [request_of(r, "") for r in picks]


def block_sizes(blocks: dict[str, list[str]]) -> str:
    sizes = sorted(len(members) for members in blocks.values())
    over = sum(size > MAX_BLOCK_MEMBERS for size in sizes)
    return (
        f"blocks={len(sizes)} block_size_p50={sizes[len(sizes) // 2]} "
        f"block_size_p99={sizes[int(len(sizes) * 0.99)]} block_size_max={sizes[-1]} "
        f"blocks_over_cap_{MAX_BLOCK_MEMBERS}={over}"
    )


async def measure(stack: Stack, args: argparse.Namespace) -> None:
    target = stack.target("identity")
    results: dict[str, float] = {}
    for size in (args.small, args.large):
        started = time.perf_counter()
        population, person_ids, blocks = await load(stack.effective_mongodb_uri, size, args.seed)
        print(
            f"seeded persons={size} through PersonRepository.bulk_load (insert_many of prepared "
            f"documents, not the RPC) seconds={time.perf_counter() - started:.1f}; {block_sizes(blocks)}",
            flush=True,
        )
        del blocks
        started = time.perf_counter()
        if args.after_load:
            # A database-side step after loading (e.g. the id indexes FerretDB-on-PostgreSQL lacks).
            command = partial(subprocess.run, args.after_load, shell=True, check=True)  # noqa: S604 -- operator's
            await asyncio.to_thread(command, capture_output=True)
        identity = stack.processes.pop("identity", None)
        if identity is not None:
            identity.stop()  # a fresh process reads the new index's name counts
        # Starting identity adds the FerretDB/SQLite `_id` lookup indexes (none on MongoDB).
        stack.start_service("identity", extra_env={"IDENTITY_MONGODB_DATABASE": DATABASE})
        print(
            f"identity started (with _id lookup indexes on FerretDB) seconds={time.perf_counter() - started:.1f}",
            flush=True,
        )
        async with grpc.aio.insecure_channel(target) as channel:
            stub = identity_pb2_grpc.PatientIdentityServiceStub(channel)
            queries = match_queries(population, args.samples, args.seed + 1)
            await latencies(stub, queries[:2])  # warm-up: connections, name counts
            found = await latencies(stub, queries)
            p50, p95 = statistics.median(found), percentile(found, 0.95)
            results[f"p50_{size}"], results[f"p95_{size}"] = p50, p95
            print(
                f"MatchPatient persons={size} samples={len(found)} p50_ms={p50:.1f} p95_ms={p95:.1f}",
                flush=True,
            )
            # New persons (a seed of their own) registered through the RPC; GetPatient of seeded ones.
            new_people = generate(args.registrations, 0.0, args.seed + 7 + size)
            register = [
                partial(stub.RegisterPatient, request_of(r, str(uuid.uuid4())), timeout=600)
                for r in new_people
            ]
            get = [
                partial(stub.GetPatient, pb.GetPatientRequest(patient_id=person_ids[i % size]), timeout=600)
                for i in range(0, args.gets * 7919, 7919)
            ]
            RETRIED.clear()
            registers = await throughput(args.concurrency, register)
            gets = await throughput(args.concurrency, get)
            print(f"retried calls by status: {dict(RETRIED)}", flush=True)
            print(
                f"persons={size} concurrency={args.concurrency} RegisterPatient_per_s={registers:.1f} "
                f"(calls={len(register)}) GetPatient_per_s={gets:.1f} (calls={len(get)}) "
                f"register_to_get_ratio={registers / gets:.3f}",
                flush=True,
            )
    print(
        f"MatchPatient p50 ratio {args.large}/{args.small} = {results[f'p50_{args.large}'] / results[f'p50_{args.small}']:.2f}; "
        f"p95 ratio = {results[f'p95_{args.large}'] / results[f'p95_{args.small}']:.2f} (target <= 1.5)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=500_000)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--registrations", type=int, default=640)
    parser.add_argument("--gets", type=int, default=3200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--after-load",
        default="",
        help="shell command run after each load, e.g. psql -f bench/ferretdb_pg_id_indexes.sql",
    )
    parser.add_argument(
        "--run-dir", default="", help="keep FerretDB files and logs here (default: a temp dir)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="identity-speed-") as temporary:
        run_dir = Path(args.run_dir or temporary)
        print(f"logs in {run_dir / 'logs'}", flush=True)
        print(
            f"machine: cores={os.cpu_count()} load_average_1m={os.getloadavg()[0]:.2f} "
            "(shared with other work: figures are noisy)",
            flush=True,
        )
        stack = Stack(run_dir=run_dir, ports=Ports.free(), mongodb_uri=os.environ.get("MONGODB_URI"))
        try:
            if stack.mongodb_uri is None:
                stack.start_ferretdb()
            stack.start_service("audit")
            asyncio.run(measure(stack, args))
            print(f"load_average_1m at the end={os.getloadavg()[0]:.2f}", flush=True)
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
