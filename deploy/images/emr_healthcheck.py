"""emr-healthcheck: asks services for their health until each answers or the deadline passes.

    emr-healthcheck --grpc identity=emr-platform-identity:8051 --http gateway=emr-platform-gateway:8080

A gRPC service is healthy when grpc.health.v1 Check answers SERVING; an HTTP one when GET /healthz
answers 200. Prints one line per service and exits 1 if any is not healthy. Installed in every
image as /opt/venv/bin/emr-healthcheck; the chart's `helm test` pod and skaffold's verify run it.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request
from collections.abc import Callable

SERVING = "SERVING"


def grpc_status(address: str) -> str:
    # Imported here: the HTTP-only images (national emulator) carry no grpcio.
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def http_status(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/healthz", timeout=3) as reply:
        return SERVING if reply.status == 200 else f"HTTP {reply.status}"


def wait_healthy(probe: Callable[[str], str], address: str, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while True:
        try:
            status = probe(address)
        except Exception as error:  # any failure to answer is "not yet"; the name says which
            status = type(error).__name__
        if status == SERVING or time.monotonic() >= deadline:
            return status
        time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grpc", action="append", default=[], metavar="NAME=HOST:PORT")
    parser.add_argument("--http", action="append", default=[], metavar="NAME=HOST:PORT")
    parser.add_argument("--wait", type=float, default=60, help="seconds each service gets to become healthy")
    args = parser.parse_args(argv)
    checks = [(item, grpc_status) for item in args.grpc] + [(item, http_status) for item in args.http]
    if not checks:
        parser.error("name at least one --grpc or --http service")
    failed = []
    for item, probe in checks:
        name, _, address = item.partition("=")
        status = wait_healthy(probe, address, args.wait)
        print(f"{name:20} {address:45} {status}", flush=True)
        if status != SERVING:
            failed.append(name)
    if failed:
        print(f"not healthy: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
