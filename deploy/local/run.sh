#!/usr/bin/env bash
# `make run`: the whole pipeline on this machine. Starts the stack (unless it is
# already up), builds and starts indexer and producer-api in the foreground, and on
# Ctrl-C stops both and the stack it started. With CITYPOP_MONITORING=prometheus, a
# Prometheus beside them (lib/monitoring.sh) scrapes both and evaluates the chart's alerts.
# With CITYPOP_TRACING=jaeger, a Jaeger (all-in-one, in memory, its default ports 4317,
# 4318 and 16686) receives both services' traces, every write sampled unless
# CITYPOP_TRACE_SAMPLING_RATIO says otherwise.
set -euo pipefail
cd "$(dirname "$0")/../.."
stack=deploy/local/stack.sh
monitoring=${CITYPOP_MONITORING:-off}
case $monitoring in
  off | prometheus) ;;
  *) echo "run: CITYPOP_MONITORING must be off or prometheus, not '$monitoring'" >&2; exit 2 ;;
esac
tracing=${CITYPOP_TRACING:-off}
case $tracing in
  off | jaeger) ;;
  *) echo "run: CITYPOP_TRACING must be off or jaeger, not '$tracing'" >&2; exit 2 ;;
esac
fail() { echo "run: $*" >&2; exit 1; }
step() { echo "==> $*"; }
# shellcheck source=deploy/tools.sh
. deploy/tools.sh
# shellcheck source=deploy/local/lib/monitoring.sh
. deploy/local/lib/monitoring.sh

started_stack=""
pids=()
cleanup() {
  trap - INT TERM EXIT
  # Ctrl-C may also have ended whatever reads our output; stopping must go on.
  trap '' PIPE
  echo
  echo "==> stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ -n "$started_stack" ]]; then "$stack" down || true; fi
}
trap cleanup INT TERM EXIT

if ! "$stack" status >/dev/null 2>&1; then
  "$stack" up
  started_stack=yes
fi
cargo build --workspace --bins --locked --release

export CITYPOP_KAFKA_BOOTSTRAP_SERVERS="${CITYPOP_KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:${CITYPOP_KAFKA_PORT:-9092}}"
export CITYPOP_ELASTICSEARCH_URL="${CITYPOP_ELASTICSEARCH_URL:-http://127.0.0.1:${CITYPOP_ENGINE_PORT:-9200}}"
# One local node cannot hold replicas; without this the index stays yellow.
export CITYPOP_INDEX_REPLICAS="${CITYPOP_INDEX_REPLICAS:-0}"
tracing_line=""
if [[ $tracing == jaeger ]]; then
  install_jaeger
  jaeger_dir="${CITYPOP_STACK_DIR:-.stack}/jaeger"
  mkdir -p "$jaeger_dir"
  "$jaeger" >"$jaeger_dir/jaeger.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 60); do
    if curl -fs http://127.0.0.1:16686/api/services >/dev/null 2>&1; then break; fi
    kill -0 "${pids[-1]}" 2>/dev/null || fail "jaeger exited; see $jaeger_dir/jaeger.log"
    sleep 0.5
  done
  export CITYPOP_OTLP_ENDPOINT="${CITYPOP_OTLP_ENDPOINT:-http://127.0.0.1:4317}"
  export CITYPOP_OTLP_PROTOCOL="${CITYPOP_OTLP_PROTOCOL:-grpc}"
  export CITYPOP_TRACE_SAMPLING_RATIO="${CITYPOP_TRACE_SAMPLING_RATIO:-1.0}"
  # Built from the Go module proxy, Jaeger's web UI is a placeholder page: the query
  # API is what works.
  tracing_line="  jaeger         http://127.0.0.1:16686   (query API: http://127.0.0.1:16686/api/traces?service=citypop-producer-api; the web UI is a placeholder in this build)"$'\n'
fi
api_listen="${CITYPOP_LISTEN:-127.0.0.1:8080}"
health_listen="${CITYPOP_HEALTH_LISTEN:-127.0.0.1:8081}"

target/release/indexer --health-listen "$health_listen" &
pids+=($!)
# producer-api is ready once the indexer has created the topic; it starts at once
# and reports readiness on /readyz.
target/release/producer-api --listen "$api_listen" &
pids+=($!)

for _ in $(seq 1 120); do
  if curl -fs "http://$api_listen/readyz" >/dev/null 2>&1; then break; fi
  sleep 0.5
done
monitoring_line=""
if [[ $monitoring == prometheus ]]; then
  monitoring_start "$api_listen" "$health_listen" "${CITYPOP_STACK_DIR:-.stack}/prometheus"
  pids+=("$monitoring_pid")
  monitoring_line="  prometheus     http://$MONITORING_LISTEN   (alerts: http://$MONITORING_LISTEN/api/v1/alerts)"$'\n'
fi
cat <<TXT

citypop is running (Ctrl-C stops everything):
  producer-api   http://$api_listen   (readiness: http://$api_listen/readyz)
  indexer        http://$health_listen/readyz, http://$health_listen/metrics
  kafka          $CITYPOP_KAFKA_BOOTSTRAP_SERVERS
  engine         $CITYPOP_ELASTICSEARCH_URL
$monitoring_line$tracing_line
Try:
  curl -i -XPOST http://$api_listen/city -H 'content-type: application/json' -d '{"name":"Paris","population":2102650}'
  curl http://$api_listen/city/paris

TXT
wait -n "${pids[@]}" || true
