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

started=$(date +%s)
bash deploy/images/base-image.sh
echo "[images] base image localhost/emr-base:bookworm ready in $(( $(date +%s) - started ))s"
uv_cache="$EMR_CACHE/image-build/uv"
mkdir -p "$uv_cache"
for service in "${SERVICES[@]}"; do
  image="localhost/emr-${service//_/-}:$TAG"
  previous=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
  started=$(date +%s)
  podman build --pull=never --quiet --layers \
    --build-arg BASE_IMAGE=localhost/emr-base:bookworm \
    --build-arg SERVICE="$service" --build-arg UV_VERSION="$UV_VERSION" \
    -v /etc/ssl/certs:/etc/ssl/certs:ro -v "$uv_cache:/uv-cache:z" \
    -t "$image" -f Dockerfile . >/dev/null
  size=$(podman image inspect --format '{{.Size}}' "$image")
  # The image this build replaced is garbage (its build-stage layers stay: they are the cache).
  if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$image")" ]; then
    podman rmi "$previous" >/dev/null 2>&1 || true
  fi
  awk -v image="$image" -v size="$size" -v seconds=$(( $(date +%s) - started )) \
    'BEGIN { printf "[images] %-42s %6.1f MB  built in %3ds\n", image, size / 1e6, seconds }' 
done
# Build cache older than three days goes; what the builds above used is newer and stays.
podman image prune -f --filter until=72h >/dev/null
