#!/usr/bin/env bash
# `make bench`: release builds, the stack (started if needed, stopped after if
# started here), then citypop-bench with BENCH_ARGS (see `citypop-bench --help`).
# With CITYPOP_ENGINE=opensearch (3.x) the stack runs with the engine's pull-based
# ingestion plugin, so that the bench's P7 can compare the indexer with it.
set -euo pipefail
cd "$(dirname "$0")/../.."
stack=deploy/local/stack.sh

started=""
cleanup() {
  if [[ -n "$started" ]]; then "$stack" down || true; fi
}
trap cleanup EXIT

cargo build --release --workspace --bins --locked
# P7 compares the indexer with OpenSearch 3's own pull-based ingestion, whose
# plugin the stack installs only when asked (its default OpenSearch is 3.8.0).
version=${CITYPOP_ENGINE_VERSION:-3}
if [[ ${CITYPOP_ENGINE:-} == opensearch && ${version%%.*} -ge 3 ]]; then
  export CITYPOP_OPENSEARCH_PULL_INGESTION=${CITYPOP_OPENSEARCH_PULL_INGESTION:-on}
fi
status=$("$stack" status 2>&1) && ready=yes || ready=""
if [[ -z $ready ]]; then
  if grep -q 'but pull-based ingestion' <<<"$status" && ! grep -q '(security' <<<"$status"; then
    # The engine asked for, only without (or with) the plugin: restart it as asked
    # and leave it running, as it was found. Any other difference stops `up` below.
    echo "bench: restarting the stack with CITYPOP_OPENSEARCH_PULL_INGESTION=$CITYPOP_OPENSEARCH_PULL_INGESTION" >&2
    "$stack" down
    "$stack" up
  else
    "$stack" up
    started=yes
  fi
fi
# NAME=value lines (Kafka's listeners, the engine's URL, ENGINE_NAME, ...), as
# deploy/local/test.sh reads them: the same stack settings reach the same ports.
while IFS='=' read -r name value; do export "$name=$value"; done < <("$stack" env)
# With the plugin, P7 joins the default measures (unless BENCH_ARGS chooses them).
measures=()
if [[ ${CITYPOP_OPENSEARCH_PULL_INGESTION:-off} == on && " ${BENCH_ARGS:-}" != *" --measures"* ]]; then
  measures=(--measures "P1,P2,P3,P4,P5,P6,P7")
fi
# shellcheck disable=SC2086 # BENCH_ARGS is a list of flags
target/release/citypop-bench --bin-dir target/release "${measures[@]}" ${BENCH_ARGS:-}
