#!/usr/bin/env bash
# Builds the service images with podman from the local base image, never pulling:
#   deploy/images/build.sh [service ...]   (default: every service; tag localhost/emr-<service>:dev)
# Prints each build's time and the image size. Dependency downloads are cached in
# ~/.cache/emr-platform/image-build (the build works without that cache, only slower).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/tools.env
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}"
SERVICES=(audit identity records sync gateway national_emulator)
TAG="${EMR_IMAGE_TAG:-dev}"
[ $# -gt 0 ] && SERVICES=("$@")

BASE=localhost/emr-base:bookworm
started=$(date +%s)
bash deploy/images/base-image.sh
echo "[images] base image $BASE ready in $(( $(date +%s) - started ))s"
uv_cache="$EMR_CACHE/image-build/uv"
mkdir -p "$uv_cache"

build() {  # build SERVICE IMAGE: one podman build; its output goes to stdout (for the caller to judge)
  podman build --pull=never --quiet --layers \
    --build-arg BASE_IMAGE="$BASE" \
    --build-arg SERVICE="$1" --build-arg UV_VERSION="$UV_VERSION" \
    -v /etc/ssl/certs:/etc/ssl/certs:ro -v "$uv_cache:/uv-cache:z" \
    -t "$2" -f Dockerfile . 2>&1
}

for service in "${SERVICES[@]}"; do
  image="localhost/emr-${service//_/-}:$TAG"
  previous=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
  started=$(date +%s)
  # podman storage is machine-wide: another session's `podman rmi`/prune may remove the base image at
  # any time. It is made sure of (re-imported from the cached tarball) right before each build, and
  # a build that lost it on the way is retried.
  for attempt in 1 2 3; do
    bash deploy/images/base-image.sh
    if output=$(build "$service" "$image"); then
      break
    fi
    if [ "$attempt" -lt 3 ] && grep -q "${BASE}.*image not known\|${BASE}.*no such image" <<<"$output"; then
      echo "[images] $BASE vanished during the build of $image (removed by another session); again" >&2
      continue
    fi
    echo "$output" >&2
    echo "[images] building $image failed" >&2
    exit 1
  done
  size=$(podman image inspect --format '{{.Size}}' "$image")
  # The image this build replaced is garbage (its build-stage layers stay: they are the cache).
  if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$image")" ]; then
    podman rmi "$previous" >/dev/null 2>&1 || true
  fi
  awk -v image="$image" -v size="$size" -v seconds=$(( $(date +%s) - started )) \
    'BEGIN { printf "[images] %-42s %6.1f MB  built in %3ds\n", image, size / 1e6, seconds }'
done
# Build cache older than three days goes: dangling images only (untagged, no child), never a tagged
# image (the base, any session's service images) nor one a container (a build in progress) uses.
# Never `rmi -a` or `prune -a`: other sessions on this machine build and run from the same storage.
podman image prune -f --filter dangling=true --filter until=72h >/dev/null
