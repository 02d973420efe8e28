"""Speed of the identity service over a real database and a real gRPC server.

    .venv/bin/python bench/identity_speed.py --small 10000 --large 500000

Starts FerretDB (unless MONGODB_URI is set) and audit as processes on free loopback ports, seeds
two databases with synthetic populations of --small and --large persons (one facility record each)
through the repository in bulk (PersonRepository.bulk_load: insert_many of prepared person, record
and block documents, not RegisterPatient), and starts one identity process on each. Then measures
MatchPatient latency on both, interleaved (p50/p95 over --samples sequential calls each, with
realistic entry errors), and their ratio; then, per index, RegisterPatient (new persons) against
GetPatient throughput at --concurrency in alternating rounds. Interleaving lets the machine's other
load fall on both sides of each ratio alike. On our FerretDB (SQLite) the stack adds the `_id`
lookup index FerretDB lacks (emr_devstack.ferretdb_sqlite) when it starts a service, as for every
service it starts. Nothing leaves 127.0.0.1.
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
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import grpc
from emr.identity.v1 import identity_pb2, identity_pb2_grpc
from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).parent))
from identity_quality import TODAY, registration_input

from emr_devstack.processes import free_port
from emr_devstack.stack import DEV_FIELD_ENCRYPTION, Ports, Stack
from emr_identity.domain import IdentifierSystem, Outcome, PersonStatus, new_person, validate_registration
from emr_identity.linkage import FacilityRecord
from emr_identity.matching import (
    MAX_BLOCK_MEMBERS,
    MatchRecord,
    NameFrequencies,
    blocking_keys,
    candidate_records,
    match_record,
    proposable,
    score,
)
from emr_identity.repository import COLLECTIONS, PersonRepository
from emr_identity.synthetic import SyntheticRecord, duplicates_of, generate
from emr_runtime.fieldcrypt import FieldCrypt

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
    uri: str, database: str, persons: int, seed: int
) -> tuple[list[SyntheticRecord], list[str], dict[str, list[MatchRecord]], NameFrequencies]:
    """An index of ``persons`` persons (no duplicates among them) in ``database``; returns the
    population, the person ids, the blocks (key -> members) and the index's name frequencies."""
    population = generate(persons, 0.0, seed)
    now = datetime.now(UTC)
    entries = []
    blocks: dict[str, list[MatchRecord]] = defaultdict(list)
    frequencies = NameFrequencies()
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
        frequencies.add(record.match.names)
        for key in blocking_keys(record.match):
            blocks[key].append(record.match)
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri, tz_aware=True)
    db = client[database]
    for collection in COLLECTIONS:
        await db.drop_collection(collection)
    crypt = FieldCrypt.from_variables(DEV_FIELD_ENCRYPTION)  # the stack's keys
    await PersonRepository(db, crypt).bulk_load(entries)
    await client.close()
    return population, [person.person_id for person, _ in entries], blocks, frequencies


async def latency(
    stub: identity_pb2_grpc.PatientIdentityServiceStub, query: pb.RegisterPatientRequest
) -> float:
    started = time.perf_counter()
    await stub.MatchPatient(pb.MatchPatientRequest(demographics=query), timeout=600)
    return (time.perf_counter() - started) * 1000


def percentile(values: Sequence[float], share: float) -> float:
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


def retrieval(
    picks: list[SyntheticRecord], blocks: dict[str, list[MatchRecord]], frequencies: NameFrequencies
) -> tuple[list[int], list[int]]:
    """For each query, how many block members retrieval scores (the union of its blocks) and how
    many records it then reads (the members worth proposing)."""
    scored, read = [], []
    for pick in picks:
        match = match_record(validate_registration(registration_input(pick, 0), TODAY), "query")
        members, _ = candidate_records({k: blocks[k] for k in blocking_keys(match) if k in blocks})
        scored.append(len(members))
        read.append(sum(proposable(score(match, m, frequencies)) for m in members.values()))
    return scored, read


def block_sizes(blocks: dict[str, list[MatchRecord]]) -> str:
    sizes = sorted(len(members) for members in blocks.values())
    over = sum(size > MAX_BLOCK_MEMBERS for size in sizes)
    return (
        f"blocks={len(sizes)} block_size_p50={sizes[len(sizes) // 2]} "
        f"block_size_p99={sizes[int(len(sizes) * 0.99)]} block_size_max={sizes[-1]} "
        f"blocks_over_cap_{MAX_BLOCK_MEMBERS}={over}"
    )


@dataclass
class Index:
    """One seeded index, served by its own identity process."""

    size: int
    person_ids: list[str]
    queries: list[pb.RegisterPatientRequest]
    stub: identity_pb2_grpc.PatientIdentityServiceStub | None = None
    found: list[float] = field(default_factory=list)


async def seed(stack: Stack, args: argparse.Namespace, size: int) -> Index:
    database = f"{DATABASE}_{size}"
    started = time.perf_counter()
    population, person_ids, blocks, frequencies = await load(
        stack.effective_mongodb_uri, database, size, args.seed
    )
    picks = duplicates_of(population, args.samples, args.seed + 1)
    scored, reads = retrieval(picks, blocks, frequencies)
    print(
        f"seeded persons={size} through PersonRepository.bulk_load (insert_many of prepared "
        f"documents, not the RPC) seconds={time.perf_counter() - started:.1f}; {block_sizes(blocks)}; "
        f"block members scored per MatchPatient: mean={statistics.mean(scored):.1f} "
        f"p95={percentile(scored, 0.95)} max={max(scored)}; "
        f"records read per MatchPatient: mean={statistics.mean(reads):.1f} "
        f"p95={percentile(reads, 0.95)} max={max(reads)}",
        flush=True,
    )
    started = time.perf_counter()
    if args.after_load:
        # A database-side step after loading (e.g. the id indexes FerretDB-on-PostgreSQL lacks).
        command = partial(subprocess.run, args.after_load, shell=True, check=True)  # noqa: S604 -- operator's
        await asyncio.to_thread(command, capture_output=True)
    # Starting identity adds the FerretDB/SQLite `_id` lookup indexes (none on MongoDB).
    ports = stack.with_ports(identity=free_port(), identity_metrics=free_port())
    stack.start_service(
        "identity", ports=ports, name=f"identity-{size}", extra_env={"IDENTITY_MONGODB_DATABASE": database}
    )
    print(
        f"identity-{size} started (with _id lookup indexes on FerretDB) "
        f"seconds={time.perf_counter() - started:.1f}",
        flush=True,
    )
    index = Index(size, person_ids, [request_of(r, "") for r in picks])
    index.stub = identity_pb2_grpc.PatientIdentityServiceStub(
        stack.dev_channel(f"127.0.0.1:{ports.identity}")
    )
    return index


async def measure(stack: Stack, args: argparse.Namespace) -> None:
    indexes = [await seed(stack, args, size) for size in (args.small, args.large)]
    for index in indexes:  # warm-up: connections, name counts, caches
        assert index.stub is not None
        for query in index.queries[: args.warmup]:
            await latency(index.stub, query)
    # Interleaved (small, large, small, …) so that the machine's other load falls on both alike.
    for position in range(args.samples):
        for index in indexes:
            assert index.stub is not None
            index.found.append(await latency(index.stub, index.queries[position % len(index.queries)]))
    for index in indexes:
        print(
            f"MatchPatient persons={index.size} samples={len(index.found)} "
            f"p50_ms={statistics.median(index.found):.1f} p95_ms={percentile(index.found, 0.95):.1f}",
            flush=True,
        )
    small, large = indexes
    print(
        f"MatchPatient p50 ratio {large.size}/{small.size} = "
        f"{statistics.median(large.found) / statistics.median(small.found):.2f}; p95 ratio = "
        f"{percentile(large.found, 0.95) / percentile(small.found, 0.95):.2f} (target <= 1.5)",
        flush=True,
    )
    for index in indexes:
        await register_against_get(index, args)


async def register_against_get(index: Index, args: argparse.Namespace) -> None:
    """RegisterPatient (new persons, a seed of their own) and GetPatient (seeded persons) throughput
    at --concurrency, in alternating rounds so that the machine's other load falls on both alike."""
    assert index.stub is not None
    stub = index.stub
    new_people = generate(args.registrations, 0.0, args.seed + 7 + index.size)
    register = [
        partial(stub.RegisterPatient, request_of(r, str(uuid.uuid4())), timeout=600) for r in new_people
    ]
    get = [
        partial(
            stub.GetPatient, pb.GetPatientRequest(patient_id=index.person_ids[i % index.size]), timeout=600
        )
        for i in range(0, args.gets * 7919, 7919)
    ]
    RETRIED.clear()
    seconds = {"register": 0.0, "get": 0.0}
    rounds = 4
    for round_ in range(rounds):
        for kind, calls in (("register", register), ("get", get)):
            share = calls[round_ * len(calls) // rounds : (round_ + 1) * len(calls) // rounds]
            seconds[kind] += len(share) / await throughput(args.concurrency, share)
    registers, gets = len(register) / seconds["register"], len(get) / seconds["get"]
    print(f"retried calls by status: {dict(RETRIED)}", flush=True)
    print(
        f"persons={index.size} concurrency={args.concurrency} RegisterPatient_per_s={registers:.1f} "
        f"(calls={len(register)}) GetPatient_per_s={gets:.1f} (calls={len(get)}) "
        f"register_to_get_ratio={registers / gets:.3f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=500_000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
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
