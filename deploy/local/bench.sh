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
# NAME=value lines (Kafka's listeners, the engine's URL, ENGINE_NAME, ...), as
# deploy/local/test.sh reads them: the same stack settings reach the same ports.
while IFS='=' read -r name value; do export "$name=$value"; done < <("$stack" env)
# shellcheck disable=SC2086 # BENCH_ARGS is a list of flags
target/release/citypop-bench --bin-dir target/release ${BENCH_ARGS:-}
