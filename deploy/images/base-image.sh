#!/usr/bin/env bash
# Makes the local base image localhost/emr-base:bookworm (Debian bookworm minbase + python3) with
# debootstrap, because no image may be pulled from a registry here. The root filesystem tarball is
# cached in ~/.cache/emr-platform/images so later runs only import it; without the cache it is made
# again (about 80 s). Real users build with the public python slim image instead (Dockerfile default).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/tools.env
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}"
image=localhost/emr-base:bookworm
cache_dir="$EMR_CACHE/images"
tarball="$cache_dir/emr-base-bookworm-$BASE_IMAGE_REVISION.tar"

if podman image exists "$image" && [ "$(podman image inspect --format '{{index .Labels "emr.base.revision"}}' "$image" 2>/dev/null)" = "$BASE_IMAGE_REVISION" ]; then
  exit 0
fi
mkdir -p "$cache_dir"
if [ ! -s "$tarball" ]; then
  echo "[base-image] debootstrap bookworm (first time only, about 80 s)" >&2
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" >/dev/null
  # Package lists, caches and docs are not needed at run time.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/var/log/*
  tar -C "$root" -cf "$tarball.partial" .
  mv "$tarball.partial" "$tarball"
fi
podman import --quiet --change "LABEL emr.base.revision=$BASE_IMAGE_REVISION" --change 'CMD ["/bin/bash"]' \
  "$tarball" "$image" >/dev/null
echo "[base-image] $image imported from $tarball" >&2
