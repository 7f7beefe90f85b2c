#!/usr/bin/env bash
# `make chaos`: the chaos soak (citypop-chaos) on the multi-node cluster
# (deploy/local/cluster.sh: 3 brokers, 2 engine nodes). The cluster is started if it
# is not running and then stopped here, whatever the outcome; one found running is
# used and left running.
#
# Settings (environment):
#   CHAOS_DURATION  how long the load runs (default 20m; test.sh runs 3m)
#   CHAOS_SEED      the seed of the fault schedule and the workload (default: drawn
#                   from the clock, printed; the same seed replays the same schedule)
#   CHAOS_ARGS      more flags for citypop-chaos (see `citypop-chaos --help`)
#   CHAOS_PROFILE   debug (default) or release: which build of the services runs
# plus the cluster's own (CITYPOP_CLUSTER_PORT_BASE, CITYPOP_ENGINE, ...).
# The report goes to bench/results/chaos-<time>.md and .json (and chaos-latest.*).
set -euo pipefail
cd "$(dirname "$0")/../.."
cluster=deploy/local/cluster.sh
profile=${CHAOS_PROFILE:-debug}

started=""
cleanup() {
  if [[ -n "$started" ]]; then "$cluster" down || true; fi
}
trap cleanup EXIT

if [[ $profile == release ]]; then
  cargo build --release --workspace --bins --locked
else
  cargo build --workspace --bins --locked
fi
if "$cluster" status >/dev/null 2>&1; then
  endpoints=$("$cluster" env)
else
  started=yes
  endpoints=$("$cluster" up)
fi
# NAME=value lines: KAFKA_BOOTSTRAP_SERVERS (3 brokers), ELASTICSEARCH_URL(S), ...
while IFS='=' read -r name value; do export "$name=$value"; done <<<"$endpoints"
echo "==> chaos soak on $ENGINE_NAME $ENGINE_VERSION: $ELASTICSEARCH_URLS, Kafka at $KAFKA_BOOTSTRAP_SERVERS"
# shellcheck disable=SC2086 # CHAOS_ARGS is a list of flags
"target/$profile/citypop-chaos" --bin-dir "target/$profile" --cluster-script "$cluster" \
  --duration "${CHAOS_DURATION:-20m}" ${CHAOS_SEED:+--seed "$CHAOS_SEED"} ${CHAOS_ARGS:-}
