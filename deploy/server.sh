#!/usr/bin/env bash
# Start the Prefect server with its UI told where the API really is. `prefect server start --port/--host` alone
# leaves the UI calling http://127.0.0.1:4200/api ("Can't connect to Server API" on another port or machine).
#   deploy/server.sh                                  # UI and API on http://127.0.0.1:4200
#   deploy/server.sh --port 4300                      # another port
#   deploy/server.sh --host 0.0.0.0 [--public-host head-node.cluster]   # reachable from other machines
# Then, in every shell that runs flows or workers: export PREFECT_API_URL=<the API address printed below>.
set -euo pipefail
host=127.0.0.1
port=4200
public=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --host) host="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --public-host) public="$2"; shift 2 ;;
    *) echo "unknown option $1 (use --host, --port, --public-host)" >&2; exit 2 ;;
  esac
done
if [[ -z "$public" ]]; then
  if [[ "$host" == "0.0.0.0" ]]; then public="$(hostname -f)"; else public="$host"; fi
fi
export PREFECT_SERVER_API_HOST="$host" PREFECT_SERVER_API_PORT="$port"
export PREFECT_UI_API_URL="http://${public}:${port}/api"   # what the browser calls
echo "UI http://${public}:${port}   API ${PREFECT_UI_API_URL}"
echo "in every shell that runs flows or workers: export PREFECT_API_URL=${PREFECT_UI_API_URL}"
exec prefect server start --host "$host" --port "$port"
