#!/usr/bin/env bash
# Regenerates the Python code of protos/ into services/contracts (make protos), or with --check
# fails when the committed code differs from what the protos generate (stub drift).
set -euo pipefail
cd "$(dirname "$0")/.."
out=services/contracts
if [ "${1:-}" = "--check" ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
find "$out" -path "$out/emr/*" \( -name '*_pb2*.py*' -o -name '__init__.py' \) -delete 2>/dev/null || true
mapfile -t files < <(cd protos && find emr -name '*.proto' | sort)
.venv/bin/python -m grpc_tools.protoc -I protos \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" "${files[@]}"
# Package markers so that `from emr.identity.v1 import identity_pb2` works and mypy sees packages.
find "$out/emr" -type d -exec touch {}/__init__.py \;
if [ "${1:-}" = "--check" ]; then
  if ! diff -r -x '__pycache__' "$out/emr" services/contracts/emr; then
    echo "generated code is stale: run 'make protos' and commit the result" >&2
    exit 1
  fi
  echo "generated code matches protos/"
fi
