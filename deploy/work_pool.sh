#!/usr/bin/env bash
# Create the `u2seg-process` work pool (type process) and start a worker that runs its flow runs as
# subprocesses of this checkout. Needs PREFECT_API_URL pointing at a running server (docs/operations.md).
#   deploy/work_pool.sh [--limit N]     # N = flow runs at once on this machine (default 1)
set -euo pipefail
cd "$(dirname "$0")/.."
export U2SEG_REPO="${U2SEG_REPO:-$(pwd)}"
: "${PREFECT_API_URL:?set PREFECT_API_URL, e.g. http://127.0.0.1:4200/api (see docs/operations.md)}"
limit=1
if [[ "${1:-}" == "--limit" ]]; then limit="$2"; fi
prefect work-pool inspect u2seg-process >/dev/null 2>&1 || prefect work-pool create u2seg-process --type process
exec prefect worker start --pool u2seg-process --type process --limit "$limit"
