#!/usr/bin/env bash
# `make test`: lint, unit tests, the stack script's own test, then the end-to-end
# tests against real Kafka and a real engine, once per pass of the engine matrix:
#
#   elasticsearch 9.5.4   full suite
#   opensearch    3.8.0   full suite, with the engine's pull-based ingestion plugin
#                         (CITYPOP_OPENSEARCH_PULL_INGESTION=on) and a smoke run of the
#                         benchmark's P7, citypop's indexer against that plugin
#   elasticsearch 8.19.21 full suite
#   opensearch    2.19.6  full suite
#   elasticsearch 9.5.4   security: the engine security tests, with HTTPS, file-realm
#                         users and roles (CITYPOP_ENGINE_SECURITY=on)
#
# After the first full pass, schemathesis fuzzes producer-api from its OpenAPI
# document (deploy/local/fuzz.sh) and the benchmark tool makes a smoke run. After
# the last pass, the chaos soak's short configuration (deploy/local/chaos.sh, 3
# minutes of load, CITYPOP_CHAOS_DURATION) runs on the multi-node cluster of the
# default engine, which it starts and stops itself.
#
# With CITYPOP_ENGINE set (and CITYPOP_ENGINE_VERSION, else that engine's default),
# only that engine's full pass runs. A stack that was already running with the
# engine a pass asks for is used and left running; one started here is stopped here,
# whatever the outcome.
set -euo pipefail
cd "$(dirname "$0")/../.."
stack=deploy/local/stack.sh

if [[ -n ${CITYPOP_ENGINE:-} ]]; then
  passes=("$CITYPOP_ENGINE ${CITYPOP_ENGINE_VERSION:-default} full")
else
  passes=(
    "elasticsearch default full"
    "opensearch default full"
    "elasticsearch 8.19.21 full"
    "opensearch 2.19.6 full"
    "elasticsearch default security"
  )
fi

started=""
# Every runner's summary lines, for the total printed at the end.
results=$(mktemp)
timings=$(mktemp)
cleanup() {
  if [[ -n "$started" ]]; then "$stack" down || true; fi
  rm -f "$results" "$timings"
}
trap cleanup EXIT

make --no-print-directory lint
make --no-print-directory lint-deploy | tee -a "$results"
echo "==> unit tests"
cargo test --workspace --locked --lib --bins 2>&1 | tee -a "$results"
echo "==> building the services for the end-to-end tests"
cargo build --workspace --bins --locked
cargo test -p citypop-tests --locked --no-run
# The monitoring test's Prometheus and the chart's alert rules (deploy/tools.sh).
fail() { echo "test: $*" >&2; exit 1; }
step() { echo "==> $*"; }
# shellcheck source=deploy/tools.sh
. deploy/tools.sh
install_prometheus
# The tracing test's Jaeger.
install_jaeger
export CITYPOP_JAEGER=$jaeger
mkdir -p "$tools"
render_rules "$tools/citypop-rules.yml"
export CITYPOP_PROMETHEUS=$prometheus CITYPOP_PROMETHEUS_RULES=$tools/citypop-rules.yml
deploy/local/tests/stack_test.sh 2>&1 | tee -a "$results"

for pass in "${passes[@]}"; do
  read -r engine version scope <<<"$pass"
  export CITYPOP_ENGINE=$engine
  if [[ $version == default ]]; then unset CITYPOP_ENGINE_VERSION; else export CITYPOP_ENGINE_VERSION=$version; fi
  if [[ $scope == security ]]; then export CITYPOP_ENGINE_SECURITY=on; else unset CITYPOP_ENGINE_SECURITY; fi
  # OpenSearch 3 (its default, 3.8.0, included) gets the plugin P7 compares with,
  # so CI proves the stack's assembly of it and the benchmark's path through it.
  if [[ $engine == opensearch && ( $version == default || ${version%%.*} -ge 3 ) ]]; then
    export CITYPOP_OPENSEARCH_PULL_INGESTION=on
  else
    unset CITYPOP_OPENSEARCH_PULL_INGESTION
  fi
  pass_started=$(date +%s)
  if "$stack" status >/dev/null 2>&1; then
    endpoints=$("$stack" env)
  else
    endpoints=$("$stack" up)
    started=yes
  fi
  # NAME=value lines: Kafka's listeners and its CA, the engine's URL (and with
  # security its CA and admin user), ENGINE_NAME and ENGINE_VERSION.
  unset ELASTICSEARCH_CA_FILE ELASTICSEARCH_USERNAME ELASTICSEARCH_PASSWORD
  while IFS='=' read -r name value; do export "$name=$value"; done <<<"$endpoints"
  label="$ENGINE_NAME $ENGINE_VERSION ($scope)"
  # The engine security tests need the secured engine; every other test the plain one.
  if [[ $scope == security ]]; then filter=(engine_security::); else filter=(--skip engine_security::); fi
  echo "==> end-to-end tests, $label: $ELASTICSEARCH_URL, Kafka at $KAFKA_BOOTSTRAP_SERVERS"
  cargo test -p citypop-tests --locked --test e2e -- --test-threads="${CITYPOP_TEST_THREADS:-4}" "${filter[@]}" 2>&1 |
    tee -a "$results" | tee >(grep '^test result:' | sed "s/^/$label: /" >>"$timings")
  if [[ -z "${fuzzed:-}" && $scope == full ]]; then
    # schemathesis against producer-api's OpenAPI document (installs itself).
    echo "==> fuzzing producer-api from its OpenAPI document against $label"
    deploy/local/fuzz.sh
    fuzzed=yes
  fi
  if [[ -z "${bench_smoked:-}" ]]; then
    # Keeps the benchmark tool working; a smoke run's numbers mean nothing.
    echo "==> benchmark smoke run against $label"
    target/debug/citypop-bench --smoke --measures P1,P2,P3,P4,P5,P6 --bin-dir target/debug --out "$(mktemp -d)"
    bench_smoked=yes
  fi
  if [[ ${CITYPOP_OPENSEARCH_PULL_INGESTION:-off} == on ]]; then
    echo "==> benchmark smoke run of P7 (indexer vs pull-based ingestion) against $label"
    target/debug/citypop-bench --smoke --measures P7 --bin-dir target/debug --out "$(mktemp -d)"
  fi
  if [[ -n "$started" ]]; then
    "$stack" down
    started=""
  fi
  echo "$label: pass took $(( $(date +%s) - pass_started ))s" >>"$timings"
done

# The soak meets every change with faults in combination. Its cluster needs about
# 4 GiB more: a single-node stack started here is down by now; one that was found
# running is only stopped if memory is short.
chaos_started=$(date +%s)
if (( $(awk '/^MemAvailable:/ {print $2}' /proc/meminfo) < 6 * 1024 * 1024 )) && "$stack" status >/dev/null 2>&1; then
  echo "==> stopping the single-node stack: the cluster needs the memory"
  "$stack" down
fi
echo "==> chaos soak, short configuration (${CITYPOP_CHAOS_DURATION:-3m}, seed ${CHAOS_SEED:-from the clock})"
unset CITYPOP_ENGINE CITYPOP_ENGINE_VERSION CITYPOP_ENGINE_SECURITY CITYPOP_OPENSEARCH_PULL_INGESTION
if CHAOS_DURATION=${CITYPOP_CHAOS_DURATION:-3m} deploy/local/chaos.sh; then
  echo "1 passed, 0 failed (chaos soak)" >>"$results"
else
  echo "0 passed, 1 failed (chaos soak)" >>"$results"
  chaos_failed=yes
fi
echo "chaos soak: took $(( $(date +%s) - chaos_started ))s" >>"$timings"

echo "==> passes"
cat "$timings"
# One closing line over every runner: cargo's "N passed; M failed", pytest's and the
# stack test's "N passed, M failed".
awk '
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
  /^[0-9]+ passed/ { p += $1; if (match($0, /[0-9]+ failed/)) f += substr($0, RSTART, RLENGTH) + 0 }
  END { printf "tests: %d passed, %d failed\n", p, f }
' "$results"
if [[ -n "${chaos_failed:-}" ]]; then fail "the chaos soak failed (its report is in bench/results/chaos-latest.md)"; fi
