"""Prometheus metrics of gRPC servers and clients, named as go-grpc-prometheus names them, so
that the usual dashboards and alerts work unchanged."""

from __future__ import annotations

import grpc
from prometheus_client import Counter, Histogram, start_http_server

# Latency buckets in seconds: from a fast cache hit to a slow cross-service call.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_SERVER_LABELS = ("grpc_type", "grpc_service", "grpc_method")

SERVER_STARTED = Counter("grpc_server_started_total", "RPCs started on the server.", _SERVER_LABELS)
SERVER_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, regardless of success or failure.",
    (*_SERVER_LABELS, "grpc_code"),
)
SERVER_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Response latency of RPCs handled by the server.",
    _SERVER_LABELS,
    buckets=LATENCY_BUCKETS,
)
CLIENT_STARTED = Counter("grpc_client_started_total", "RPCs started on the client.", _SERVER_LABELS)
CLIENT_HANDLED = Counter(
    "grpc_client_handled_total",
    "RPCs completed by the client, regardless of success or failure.",
    (*_SERVER_LABELS, "grpc_code"),
)
CLIENT_HANDLING_SECONDS = Histogram(
    "grpc_client_handling_seconds",
    "Response latency of RPCs made by the client, until the status is received.",
    _SERVER_LABELS,
    buckets=LATENCY_BUCKETS,
)
MONGODB_COMMAND_SECONDS = Histogram(
    "emr_mongodb_command_duration_seconds",
    "Latency of MongoDB commands as the driver saw them, by command name and outcome (ok, error).",
    ("command", "outcome"),
    buckets=LATENCY_BUCKETS,
)


def code_label(code: grpc.StatusCode) -> str:
    """The grpc_code label as go-grpc-prometheus writes it (Go's codes.Code names: NotFound, ...)."""
    return _GO_CODE_NAMES[code]


_GO_CODE_NAMES = {
    code: "Canceled"
    if code is grpc.StatusCode.CANCELLED
    else "".join(p.capitalize() for p in code.name.split("_"))
    for code in grpc.StatusCode
}
_GO_CODE_NAMES[grpc.StatusCode.OK] = "OK"


def split_method(full_method: str) -> tuple[str, str]:
    """'/emr.identity.v1.PatientIdentityService/GetPatient' -> (service, method)."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


def start_metrics_server(host: str, port: int) -> None:
    """Serves /metrics over HTTP on a daemon thread; port 0 means metrics are not served."""
    if port:
        start_http_server(port, addr=host)
