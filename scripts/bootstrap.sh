#!/usr/bin/env bash
# Installs everything the project needs into .venv and ~/.cache/emr-platform; fast when already there.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.env
mkdir -p "$EMR_BIN"

log() { printf '[bootstrap] %s\n' "$*" >&2; }

if ! command -v uv >/dev/null || [ "$(uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  if [ ! -x "$EMR_BIN/uv" ] || [ "$("$EMR_BIN/uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    log "installing uv $UV_VERSION"
    python3 -m venv "$EMR_CACHE/uv-venv"
    "$EMR_CACHE/uv-venv/bin/pip" install --quiet --disable-pip-version-check "uv==$UV_VERSION"
    ln -sf "$EMR_CACHE/uv-venv/bin/uv" "$EMR_BIN/uv"
  fi
  UV="$EMR_BIN/uv"
else
  UV=uv
fi

"$UV" sync --frozen --python python3 --quiet

go_tool() { # name module version
  local name=$1 module=$2 version=$3 stamp="$EMR_BIN/.$1.version"
  if [ -x "$EMR_BIN/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version" ]; then return; fi
  log "building $name $version with the Go toolchain (first time only)"
  GOBIN="$EMR_BIN" GOFLAGS=-mod=mod go install "$module@$version"
  echo "$version" > "$stamp"
}

# FerretDB's own binary refuses to start unless build/version/version.txt names its version (its
# release builds generate that file); `go install` leaves it empty, so build from the module source.
ferretdb_stamp="$EMR_BIN/.ferretdb.version"
if [ ! -x "$EMR_BIN/ferretdb" ] || [ "$(cat "$ferretdb_stamp" 2>/dev/null)" != "$FERRETDB_VERSION" ]; then
  log "building ferretdb $FERRETDB_VERSION with the Go toolchain (first time only, a few minutes)"
  src_dir=$(go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  build_dir=$(mktemp -d)
  cp -r "$src_dir/." "$build_dir"
  chmod -R u+w "$build_dir"
  echo "$FERRETDB_VERSION" > "$build_dir/build/version/version.txt"
  (cd "$build_dir" && go build -trimpath -o "$EMR_BIN/ferretdb" ./cmd/ferretdb)
  rm -rf "$build_dir"
  echo "$FERRETDB_VERSION" > "$ferretdb_stamp"
fi
go_tool grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl "$GRPCURL_VERSION"

BUF="$EMR_CACHE/npm/node_modules/.bin/buf"
if [ ! -x "$BUF" ] || [ "$("$BUF" --version 2>/dev/null)" != "$BUF_VERSION" ]; then
  log "installing buf $BUF_VERSION from npm"
  mkdir -p "$EMR_CACHE/npm"
  npm install --silent --no-audit --no-fund --prefix "$EMR_CACHE/npm" "@bufbuild/buf@$BUF_VERSION" >/dev/null
fi
ln -sf "$BUF" "$EMR_BIN/buf"

# Kubernetes delivery (charts/, Dockerfile, tests/deploy): helm, and podman/runc/debootstrap for
# building and running the images without Docker or a cluster (Debian packages).
go_tool helm helm.sh/helm/v4/cmd/helm "$HELM_VERSION"
missing_packages=()
for tool in podman runc debootstrap; do
  command -v "$tool" >/dev/null || missing_packages+=("$tool")
done
if [ ${#missing_packages[@]} -gt 0 ]; then
  log "installing ${missing_packages[*]} from Debian"
  as_root=(); [ "$(id -u)" -eq 0 ] || as_root=(sudo)
  "${as_root[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq "${missing_packages[@]}" >/dev/null
fi

# promtool (alert rule tests) and prometheus (the real-scrape test) come from Debian's package.
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  log "installing Debian's prometheus package (promtool, prometheus) with apt-get"
  as_root=(); [ "$(id -u)" -eq 0 ] || as_root=(sudo)
  "${as_root[@]}" apt-get install -y --no-install-recommends prometheus >/dev/null \
    || { "${as_root[@]}" apt-get update >/dev/null && "${as_root[@]}" apt-get install -y --no-install-recommends prometheus >/dev/null; }
fi
