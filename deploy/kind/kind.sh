#!/usr/bin/env bash
# make kind-up / kind-down: the kind cluster of deploy/kind/cluster.yaml, for `skaffold dev -p kind`.
# Needs Docker (or podman: KIND_EXPERIMENTAL_PROVIDER=podman) able to pull kindest/node; installs the
# kind CLI with the Go toolchain the first time.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/tools.env
stamp="$EMR_BIN/.kind.version"
if [ ! -x "$EMR_BIN/kind" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$KIND_VERSION" ]; then
  echo "[kind] installing kind $KIND_VERSION with the Go toolchain" >&2
  GOBIN="$EMR_BIN" GOFLAGS=-mod=mod go install "sigs.k8s.io/kind@$KIND_VERSION"
  echo "$KIND_VERSION" > "$stamp"
fi
cluster=$(awk '/^name:/ {print $2}' deploy/kind/cluster.yaml)
case "${1:-}" in
  up)
    if "$EMR_BIN/kind" get clusters | grep -qx "$cluster"; then
      echo "[kind] cluster $cluster already exists" >&2
    else
      "$EMR_BIN/kind" create cluster --config deploy/kind/cluster.yaml --wait 120s
    fi
    kubectl cluster-info --context "kind-$cluster" ;;
  down) "$EMR_BIN/kind" delete cluster --name "$cluster" ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
