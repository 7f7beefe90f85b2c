#!/usr/bin/env bash
# `make bench`: release builds, the stack (started if needed, stopped after if
# started here), then citypop-bench with BENCH_ARGS (see `citypop-bench --help`).
set -euo pipefail
cd "$(dirname "$0")/../.."
stack=deploy/local/stack.sh

started=""
cleanup() {
  if [[ -n "$started" ]]; then "$stack" down || true; fi
}
trap cleanup EXIT

cargo build --release --workspace --bins --locked
if ! "$stack" status >/dev/null 2>&1; then
  "$stack" up
  started=yes
fi
export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:${CITYPOP_KAFKA_PORT:-9092}"
export ELASTICSEARCH_URL="http://127.0.0.1:${CITYPOP_ENGINE_PORT:-9200}"
# shellcheck disable=SC2086 # BENCH_ARGS is a list of flags
target/release/citypop-bench --bin-dir target/release ${BENCH_ARGS:-}
