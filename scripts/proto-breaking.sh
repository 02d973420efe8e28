#!/usr/bin/env bash
# buf breaking: the contracts at HEAD must not break those of the previous commit.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.env
against="${BUF_BREAKING_AGAINST:-HEAD~1}"
if ! git rev-parse --verify --quiet "$against^{commit}" >/dev/null; then
  echo "proto-breaking: no commit $against to compare with (first commit or shallow clone); skipped"
  exit 0
fi
if [ -z "$(git ls-tree -d "$against" protos)" ]; then
  echo "proto-breaking: $against has no protos/; nothing to compare"
  exit 0
fi
"$EMR_BIN/buf" breaking protos --against ".git#ref=$(git rev-parse "$against"),subdir=protos"
echo "proto-breaking: protos/ is compatible with $against"
