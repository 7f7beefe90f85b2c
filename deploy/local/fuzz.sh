#!/usr/bin/env bash
# Fuzzes producer-api from its own OpenAPI document with schemathesis (a fuzzer no
# one here wrote): examples, coverage, fuzzing and stateful phases, at least 2,000
# generated requests, against a real indexer and producer-api on the running stack
# (KAFKA_BOOTSTRAP_SERVERS, ELASTICSEARCH_URL; `make test` exports both).
#
# Checks (deploy/local/schemathesis.toml): no 5xx but the documented 503s, status
# codes, content types, headers and bodies as documented (so problem+json on every
# error), and every request the document allows is accepted; the file says which
# checks are off and why (deletes are asynchronous, among others).
#
# Installs schemathesis (deploy/local/fuzz-requirements.txt) under .tools/fuzz-venv,
# or CITYPOP_TOOLS_DIR, once per version.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
tools=${CITYPOP_TOOLS_DIR:-$root/.tools}
venv=$tools/fuzz-venv
requirements=deploy/local/fuzz-requirements.txt
examples=${CITYPOP_FUZZ_EXAMPLES:-500}
# The fewest generated requests that make a run count.
min_requests=2000
bin_dir=${CITYPOP_BIN_DIR:-target/debug}

: "${KAFKA_BOOTSTRAP_SERVERS:?set KAFKA_BOOTSTRAP_SERVERS (make stack-up starts Kafka at 127.0.0.1:9092)}"
: "${ELASTICSEARCH_URL:?set ELASTICSEARCH_URL (make stack-up starts the engine at http://127.0.0.1:9200)}"

stamp=$(sha256sum "$requirements" | cut -d' ' -f1)
if [[ ! -x $venv/bin/st || ! -f $venv/.requirements || $(<"$venv/.requirements") != "$stamp" ]]; then
  echo "==> installing schemathesis into $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
  echo "$stamp" >"$venv/.requirements"
fi

run=$(mktemp -d)
names="citypop-fuzz-$(date +%s)-$$"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() {
  local url=$1 what=$2 log=$3
  for _ in $(seq 1 900); do
    curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "fuzz: $what did not become ready at $url; its log:" >&2
  tail -40 "$log" >&2
  exit 1
}

common=(
  CITYPOP_KAFKA_BOOTSTRAP_SERVERS="$KAFKA_BOOTSTRAP_SERVERS"
  CITYPOP_ELASTICSEARCH_URL="$ELASTICSEARCH_URL"
  CITYPOP_TOPIC="$names" CITYPOP_INDEX_ALIAS="$names" CITYPOP_LOG=warn
)
health_port=$(free_port)
env "${common[@]}" CITYPOP_CONSUMER_GROUP="$names" CITYPOP_INDEX_REPLICAS=0 \
  CITYPOP_HEALTH_LISTEN="127.0.0.1:$health_port" "$bin_dir/indexer" >"$run/indexer.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$health_port/readyz" indexer "$run/indexer.log"
api_port=$(free_port)
env "${common[@]}" CITYPOP_LISTEN="127.0.0.1:$api_port" "$bin_dir/producer-api" >"$run/api.log" 2>&1 &
pids+=($!)
api=http://127.0.0.1:$api_port
wait_for "$api/readyz/writes" producer-api "$run/api.log"
wait_for "$api/readyz/reads" producer-api "$run/api.log"

echo "==> schemathesis against $api/openapi.json ($examples examples per operation)"
status=0
"$venv/bin/st" --config-file deploy/local/schemathesis.toml run "$api/openapi.json" \
  --phases examples,coverage,fuzzing,stateful \
  --max-examples "$examples" \
  --generation-database none \
  --report ndjson --report-ndjson-path "$run/events.ndjson" || status=$?

if (( status != 0 )); then
  echo "fuzz: schemathesis found failures (above); the API's log:" >&2
  tail -20 "$run/api.log" >&2
  exit "$status"
fi
# The run must be big enough to mean something.
requests=$(grep -o '"response"' "$run/events.ndjson" 2>/dev/null | wc -l || true)
echo "fuzz: $requests requests checked"
if (( requests < min_requests )); then
  echo "fuzz: only $requests requests, fewer than $min_requests: raise CITYPOP_FUZZ_EXAMPLES" >&2
  exit 1
fi
