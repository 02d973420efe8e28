#!/usr/bin/env bash
# Development CA and per-service certificates for mutual TLS (emr_devstack.certs). `make certs`.
# Options: --out DIR (default .run/certs), --release NAME, --namespace NS (SANs of the chart's
# Services), --force (new CA and certificates). `make up` and the tests make them by themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m emr_devstack.certs "$@"
