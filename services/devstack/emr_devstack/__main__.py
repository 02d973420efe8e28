"""python -m emr_devstack: `make up`. Checks that every port it needs is free (DEVSTACK_*_PORT move
them), starts FerretDB and every service on the documented ports,
prints the endpoints, and stops everything on Ctrl-C or SIGTERM.

python -m emr_devstack down: `make down`. Asks the running platform to stop and waits until it has,
so that a `make up` right after finds every port free."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from pydantic import ValidationError

from emr_devstack.processes import StartupError
from emr_devstack.settings import DevstackSettings
from emr_devstack.stack import Stack, elapsed
from emr_devstack.tokens import JWKS_FILE, service_jwks_main
from emr_devstack.tokens import main as issue_token_main

RUN_DIR = Path(os.environ.get("EMR_RUN_DIR", ".run"))
PID_FILE = RUN_DIR / "devstack.pid"
# Every process gets 15 s to stop on SIGTERM before it is killed (ManagedProcess.stop); FerretDB last.
DOWN_WITHIN_SECONDS = 120.0


def main() -> int:
    started = time.monotonic()
    try:
        ports = DevstackSettings().ports()
    except ValidationError as error:
        print(f"start-up failed: bad DEVSTACK_* port setting: {error}", file=sys.stderr)
        return 2
    stack = Stack(run_dir=RUN_DIR.resolve(), ports=ports, mongodb_uri=os.environ.get("MONGODB_URI") or None)
    try:
        stack.check_ports_free()  # before anything starts: a busy port fails here, by name
    except StartupError as error:
        print(f"start-up failed: {error}", file=sys.stderr)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    PID_FILE.write_text(str(os.getpid()))
    try:
        stack.start()
        p = stack.ports
        print(
            f"""
EMR platform is up ({elapsed(started)}). Logs: {RUN_DIR}/logs/  Stop: Ctrl-C or `make down`.

  identity  gRPC 127.0.0.1:{p.identity}   metrics http://127.0.0.1:{p.identity_metrics}/metrics
  records   gRPC 127.0.0.1:{p.records}   metrics http://127.0.0.1:{p.records_metrics}/metrics
  audit     gRPC 127.0.0.1:{p.audit}   metrics http://127.0.0.1:{p.audit_metrics}/metrics
  sync      gRPC 127.0.0.1:{p.sync}   metrics http://127.0.0.1:{p.sync_metrics}/metrics
  gateway   http://127.0.0.1:{p.gateway}/fhir/Patient/<id>
  national emulator  http://127.0.0.1:{p.national_emulator}/deliveries
  MongoDB   {stack.effective_mongodb_uri}

gRPC ports speak mutual TLS with the development CA in {stack.certs_dir}/; health alone, plaintext,
on 127.0.0.1:{p.identity_health} (identity) to :{p.sync_health} (sync).
Development JWKS: {RUN_DIR}/{JWKS_FILE}. A token: python -m emr_devstack issue-token --facility 79001 --role doctor
Try: grpcurl -cacert {stack.certs_dir}/ca.pem -cert {stack.certs_dir}/client.pem \\
       -key {stack.certs_dir}/client-key.pem 127.0.0.1:{p.identity} list
     grpcurl -cacert {stack.certs_dir}/ca.pem -cert {stack.certs_dir}/client.pem \\
       -key {stack.certs_dir}/client-key.pem \\
       -H "authorization: Bearer $(python -m emr_devstack issue-token --role auditor)" \\
       127.0.0.1:{p.audit} emr.audit.v1.AuditService/GetPublicKey
""",
            flush=True,
        )
        while not stop.wait(1.0):
            for name, process in stack.processes.items():
                if not process.running():
                    print(f"{name} exited unexpectedly; see {process.log_path}", file=sys.stderr)
                    stop.set()
        return 0
    except StartupError as error:
        print(f"start-up failed: {error}", file=sys.stderr)
        return 1
    finally:
        print("stopping ...", flush=True)
        codes = stack.stop()
        PID_FILE.unlink(missing_ok=True)
        print("stopped: " + ", ".join(f"{name}={code}" for name, code in codes.items()), flush=True)


def down() -> int:
    """SIGTERM to the platform of ``PID_FILE``; returns once that process has exited."""
    try:
        pid = int(PID_FILE.read_text())
    except (OSError, ValueError):
        print(f"nothing to stop (no {PID_FILE})")
        return 0
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        print(f"nothing to stop (process {pid} of {PID_FILE} is gone)")
        PID_FILE.unlink(missing_ok=True)
        return 0
    print(f"stopping the platform (process {pid}) ...", flush=True)
    deadline = time.monotonic() + DOWN_WITHIN_SECONDS
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print("stopped")
            return 0
        time.sleep(0.2)
    print(f"process {pid} still runs after {DOWN_WITHIN_SECONDS:.0f}s; see {RUN_DIR}/logs/", file=sys.stderr)
    return 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["down"]:
        sys.exit(down())
    if sys.argv[1:2] == ["issue-token"]:
        sys.exit(issue_token_main(sys.argv[2:]))
    if sys.argv[1:2] == ["service-jwks"]:
        sys.exit(service_jwks_main(sys.argv[2:]))
    sys.exit(main())
