"""The whole platform on one machine: which processes, on which ports, with which settings.

`make up` runs it on the documented ports; tests run it on free ports in a temporary folder.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from emr_devstack.certs import DevCertificates, ensure_dev_certificates, tls_files
from emr_devstack.ferretdb_sqlite import add_id_lookup_indexes
from emr_devstack.national import national_env, write_dev_national_clients
from emr_devstack.processes import (
    ManagedProcess,
    StartupError,
    free_port,
    grpc_serving,
    port_open,
    wait_until,
)
from emr_devstack.tokens import JWKS_FILE, service_key_file, write_dev_keys
from emr_runtime.auth import DEV_ISSUER

CACHE_BIN = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "emr-platform" / "bin"
GRPC_SERVICES = ("audit", "identity", "records", "sync")
HTTP_SERVICES = ("national_emulator", "gateway")
# Start order: everything a service calls is up before it.
START_ORDER = ("audit", "identity", "records", "national_emulator", "sync", "gateway")
# Keys of field encryption at rest (identifiers, phones) for `make up` and tests: development only,
# public in this repository. Production takes its own from a Secret (README, "Encryption at rest").
DEV_FIELD_ENCRYPTION = {
    "FIELD_ENCRYPTION_KEYS": "dev1:0EjKlHtR6Ngq3BJUNgUSSde9mJVQ1Q+kJlkEj0I4S3U=",
    "FIELD_ENCRYPTION_CURRENT_KEY_ID": "dev1",
    "FIELD_BLIND_INDEX_KEY": "hVbqYPh55CZv1wfWp4/DQdRmaYPbz7A0bZaNNScPsVk=",
}
# The services that store identifiers or phone numbers, and so need those keys.
FIELD_ENCRYPTING_SERVICES = ("identity", "records", "sync", "audit")


@dataclass(frozen=True)
class Ports:
    """Ports of `make up` (DEVSTACK_<NAME>_PORT move them; emr_devstack.settings). All below the
    kernel's ephemeral range (32768-60999 on Linux): an outgoing connection never holds one."""

    mongodb: int = 27017
    identity: int = 8051
    records: int = 8052
    audit: int = 8053
    sync: int = 8054
    identity_metrics: int = 9451
    records_metrics: int = 9452
    audit_metrics: int = 9453
    sync_metrics: int = 9454
    gateway_metrics: int = 9455
    # Plaintext grpc.health.v1 only (the API ports speak mutual TLS).
    identity_health: int = 8061
    records_health: int = 8062
    audit_health: int = 8063
    sync_health: int = 8064
    gateway: int = 8080
    national_emulator: int = 8090

    @classmethod
    def free(cls) -> Ports:
        return cls(**{f.name: free_port() for f in fields(cls)})


def port_variable(name: str) -> str:
    """The variable that moves the port ``name`` of ``Ports`` for `make up` (emr_devstack.settings)."""
    return f"DEVSTACK_{name.upper()}_PORT"


def port_component(name: str) -> str:
    """What listens on the port ``name`` of ``Ports``, in words."""
    if name == "mongodb":
        return "FerretDB (MongoDB)"
    service, _, kind = name.partition("_")
    if name == "national_emulator":
        service, kind = "national emulator", ""
    if service in GRPC_SERVICES:
        return f"{service} {kind or 'gRPC'}"
    return f"{service} {kind or 'HTTP'}"


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when a server could not bind ``host:port`` now: something listens there, or another
    program's connection holds it. SO_REUSEADDR as our servers set it, so the TIME_WAIT leftovers
    of a platform just stopped do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


class PortBusyError(StartupError):
    """Ports the platform must bind are taken; the message says which and how to move them."""

    def __init__(self, busy: dict[str, int]) -> None:
        self.busy = busy
        lines = [
            f"  port {port}: {port_component(name)} (move it: {port_variable(name)}=<free port>)"
            for name, port in busy.items()
        ]
        first = next(iter(busy.values()))
        super().__init__(
            f"{len(busy)} port(s) the platform needs are already in use on 127.0.0.1; nothing was started.\n"
            + "\n".join(lines)
            + f"\nSee who holds one: ss -tanp 'sport = :{first}'  (a running `make up`? `make down`)"
        )


@dataclass
class Stack(DevCertificates):
    """FerretDB (unless ``mongodb_uri`` names another server) and every service, as child processes."""

    run_dir: Path
    ports: Ports = field(default_factory=Ports)
    mongodb_uri: str | None = None
    sync_poll_interval: float = 1.0
    # Set for every service, e.g. OTEL_* to export traces to a collector.
    environment: Mapping[str, str] = field(default_factory=dict)
    processes: dict[str, ManagedProcess] = field(default_factory=dict)

    @property
    def effective_mongodb_uri(self) -> str:
        return self.mongodb_uri or f"mongodb://127.0.0.1:{self.ports.mongodb}/"

    def target(self, service: str) -> str:
        return f"127.0.0.1:{getattr(self.ports, service)}"

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{getattr(self.ports, service)}"

    # --- FerretDB -------------------------------------------------------------------------------
    def start_ferretdb(self) -> ManagedProcess:
        binary = CACHE_BIN / "ferretdb"
        if not binary.exists():
            raise FileNotFoundError(f"{binary} is missing: run scripts/bootstrap.sh (make bootstrap)")
        data_dir = self.run_dir / "ferretdb"
        data_dir.mkdir(parents=True, exist_ok=True)
        process = ManagedProcess(
            "ferretdb",
            [
                str(binary),
                "--handler=sqlite",
                f"--sqlite-url=file:{data_dir}/",
                f"--listen-addr=127.0.0.1:{self.ports.mongodb}",
                f"--state-dir={data_dir}",
                "--debug-addr=-",
                "--telemetry=false",
                "--log-level=warn",
            ],
            # Telemetry off twice over: nothing may leave this machine.
            {"DO_NOT_TRACK": "1", "FERRETDB_TELEMETRY": "false"},
            self.run_dir / "logs" / "ferretdb.log",
        ).start()
        self.processes["ferretdb"] = process
        wait_until(process, self._mongodb_answers, 60, "accepting MongoDB connections")
        return process

    def _mongodb_answers(self) -> bool:
        if not port_open(self.ports.mongodb):
            return False
        try:
            client: MongoClient[dict[str, Any]]
            with MongoClient(self.effective_mongodb_uri, serverSelectionTimeoutMS=500) as client:
                client.admin.command("ping")
            return True
        except PyMongoError:
            return False

    # --- services -------------------------------------------------------------------------------
    def service_env(self, service: str, ports: Ports | None = None) -> dict[str, str]:
        """Environment of one service: the same variables a user sets (see README)."""
        p = ports or self.ports
        common = {
            "MONGODB_URI": self.effective_mongodb_uri,
            "PYTHONUNBUFFERED": "1",
            **(tls_files(self.certs_dir, service).env() if service != "national_emulator" else {}),
            **self.environment,
        }
        # Tokens of the development issuer, verified against the development JWKS file; services
        # that call others sign their own tokens with their own development key (see tokens.py).
        trust = {"AUTH_ISSUER": DEV_ISSUER, "AUTH_JWKS_FILE": str(self.run_dir / JWKS_FILE)}

        def sign(name: str) -> dict[str, str]:
            return {**trust, "AUTH_SERVICE_KEY_FILE": str(service_key_file(self.run_dir, name))}

        per_service: dict[str, dict[str, str]] = {
            "audit": {
                "AUDIT_GRPC_PORT": str(p.audit),
                "AUDIT_METRICS_PORT": str(p.audit_metrics),
                "AUDIT_HEALTH_PORT": str(p.audit_health),
                # One development key per run folder, shared by every audit replica started here.
                "AUDIT_SIGNING_KEY_FILE": str(self.run_dir / "audit-signing-key.pem"),
                "AUDIT_SIGNING_KEY_GENERATE": "true",
                **trust,
            },
            "identity": {
                "IDENTITY_GRPC_PORT": str(p.identity),
                "IDENTITY_METRICS_PORT": str(p.identity_metrics),
                "IDENTITY_HEALTH_PORT": str(p.identity_health),
                "IDENTITY_AUDIT_TARGET": self.target("audit"),
                **sign("identity"),
            },
            "records": {
                "RECORDS_GRPC_PORT": str(p.records),
                "RECORDS_METRICS_PORT": str(p.records_metrics),
                "RECORDS_HEALTH_PORT": str(p.records_health),
                "RECORDS_IDENTITY_TARGET": self.target("identity"),
                "RECORDS_AUDIT_TARGET": self.target("audit"),
                **sign("records"),
            },
            "sync": {
                "SYNC_GRPC_PORT": str(p.sync),
                "SYNC_METRICS_PORT": str(p.sync_metrics),
                "SYNC_HEALTH_PORT": str(p.sync_health),
                "SYNC_RECORDS_TARGET": self.target("records"),
                "SYNC_IDENTITY_TARGET": self.target("identity"),
                "SYNC_AUDIT_TARGET": self.target("audit"),
                "SYNC_NATIONAL_URL": self.url("national_emulator"),
                "SYNC_POLL_INTERVAL_SECONDS": str(self.sync_poll_interval),
                **sign("sync"),
            },
            "national_emulator": {"NATIONAL_EMULATOR_PORT": str(p.national_emulator)},
            "gateway": {
                "GATEWAY_PORT": str(p.gateway),
                "GATEWAY_METRICS_PORT": str(p.gateway_metrics),
                "GATEWAY_IDENTITY_TARGET": self.target("identity"),
                "GATEWAY_RECORDS_TARGET": self.target("records"),
                "GATEWAY_AUDIT_TARGET": self.target("audit"),
            },
        }
        keys = DEV_FIELD_ENCRYPTION if service in FIELD_ENCRYPTING_SERVICES else {}
        return {**common, **keys, **national_env(self.run_dir, service), **per_service[service]}

    def start_service(
        self,
        service: str,
        ports: Ports | None = None,
        name: str | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> ManagedProcess:
        """Starts ``python -m emr_<service>`` and waits until it is healthy. Tests start extra
        instances under another ``name`` with other ports and settings."""
        p = ports or self.ports
        name = name or service
        ensure_dev_certificates(self.certs_dir)
        write_dev_keys(self.run_dir)  # no-op when they are there (a folder of an older layout: rewritten)
        write_dev_national_clients(self.run_dir)
        env = {**self.service_env(service, p), **(extra_env or {})}
        process = ManagedProcess(
            name, [sys.executable, "-m", f"emr_{service}"], env, self.run_dir / "logs" / f"{name}.log"
        ).start()
        self.processes[name] = process
        port = getattr(p, service)
        if service in GRPC_SERVICES:
            # An instance started with TLS_* emptied (benches' baseline) speaks plaintext.
            credentials = self.client_tls.channel_credentials() if env.get("TLS_CA_FILE") else None
            wait_until(
                process, lambda: grpc_serving(f"127.0.0.1:{port}", credentials=credentials), 60, "SERVING"
            )
        else:
            wait_until(process, lambda: port_open(port), 60, "listening")
        self.index_ferretdb_ids()  # the service created its collections at start
        return process

    def index_ferretdb_ids(self) -> int:
        """Adds the `_id` lookup index our FerretDB (SQLite) lacks to every collection it has
        now (see emr_devstack.ferretdb_sqlite); nothing when ``mongodb_uri`` names another server."""
        if "ferretdb" not in self.processes:
            return 0
        return add_id_lookup_indexes(self.run_dir / "ferretdb")

    def check_ports_free(self) -> None:
        """Pre-flight of `make up`: raises PortBusyError naming every port it would bind that is
        taken (FerretDB's only when it starts FerretDB), before anything starts."""
        names = [f.name for f in fields(Ports) if f.name != "mongodb" or self.mongodb_uri is None]
        busy = {name: getattr(self.ports, name) for name in names if port_in_use(getattr(self.ports, name))}
        if busy:
            raise PortBusyError(busy)

    def start(self) -> None:
        ensure_dev_certificates(self.certs_dir)
        if self.mongodb_uri is None:
            self.start_ferretdb()
        for service in START_ORDER:
            self.start_service(service)

    def stop(self) -> dict[str, int | None]:
        """Stops every process, last started first; returns their exit codes."""
        codes = {}
        for name in reversed(list(self.processes)):
            codes[name] = self.processes[name].stop()
        self.processes.clear()
        return codes

    def with_ports(self, **changes: int) -> Ports:
        """The stack's ports with ``changes``; a service given another API port also gets its own
        health and metrics ports (two instances cannot share one)."""
        own = {f.name for f in fields(Ports)}
        for service in [name for name in changes if name in own]:
            for port in (f"{service}_health", f"{service}_metrics"):
                if port in own and port not in changes:
                    changes[port] = free_port()
        return replace(self.ports, **changes)


def elapsed(since: float) -> str:
    return f"{time.monotonic() - since:.1f}s"
