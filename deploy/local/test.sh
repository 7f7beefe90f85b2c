#!/usr/bin/env bash
# `make test`: lint, unit tests, then the end-to-end tests against real Kafka and a
# real engine. With CITYPOP_ENGINE set, the end-to-end tests run against that engine;
# unset, they run against Elasticsearch and then OpenSearch (the compatibility pass).
# A stack that was already running is used and left running; one started here is
# stopped here, whatever the outcome.
set -euo pipefail
cd "$(dirname "$0")/../.."
stack=deploy/local/stack.sh

engines=${CITYPOP_ENGINE:-"elasticsearch opensearch"}
started=""
# Every runner's summary lines, for the total printed at the end.
results=$(mktemp)
cleanup() {
  if [[ -n "$started" ]]; then
    CITYPOP_ENGINE="$started" "$stack" down || true
  fi
  rm -f "$results"
}
trap cleanup EXIT

make --no-print-directory lint
make --no-print-directory lint-deploy | tee -a "$results"
echo "==> unit tests"
cargo test --workspace --locked --lib --bins 2>&1 | tee -a "$results"
echo "==> building the services for the end-to-end tests"
cargo build --workspace --bins --locked
cargo test -p citypop-tests --locked --no-run

for engine in $engines; do
  export CITYPOP_ENGINE="$engine"
  if "$stack" status >/dev/null 2>&1; then
    echo "==> using the running $engine stack"
  else
    "$stack" up
    started="$engine"
  fi
  export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:${CITYPOP_KAFKA_PORT:-9092}"
  # The stack's second listener, SASL_PLAINTEXT with PLAIN: the tests of Kafka auth.
  export KAFKA_SASL_BOOTSTRAP_SERVERS="127.0.0.1:${CITYPOP_KAFKA_SASL_PORT:-9094}"
  export ELASTICSEARCH_URL="http://127.0.0.1:${CITYPOP_ENGINE_PORT:-9200}"
  echo "==> end-to-end tests against Kafka at $KAFKA_BOOTSTRAP_SERVERS and $engine at $ELASTICSEARCH_URL"
  cargo test -p citypop-tests --locked --test e2e -- --test-threads="${CITYPOP_TEST_THREADS:-4}" 2>&1 | tee -a "$results"
  if [[ -z "${fuzzed:-}" ]]; then
    # schemathesis against producer-api's OpenAPI document (installs itself).
    echo "==> fuzzing producer-api from its OpenAPI document against $engine"
    deploy/local/fuzz.sh
    fuzzed=yes
  fi
  if [[ -z "${bench_smoked:-}" ]]; then
    # Keeps the benchmark tool working; a smoke run's numbers mean nothing.
    echo "==> benchmark smoke run against $engine"
    target/debug/citypop-bench --smoke --bin-dir target/debug --out "$(mktemp -d)"
    bench_smoked=yes
  fi
  if [[ -n "$started" ]]; then
    "$stack" down
    started=""
  fi
done

# One closing line over every runner: cargo's "N passed; M failed" and pytest's.
awk '
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
  /^[0-9]+ passed/ { p += $1; if (match($0, /[0-9]+ failed/)) f += substr($0, RSTART, RLENGTH) + 0 }
  END { printf "tests: %d passed, %d failed\n", p, f }
' "$results"
