#!/usr/bin/env bash
# Tests of deploy/local/stack.sh itself, against a real Kafka and engine of its own:
# `up` twice is idempotent, `status` tells the truth, `down` stops only what the
# stack started. Runs in a stack dir and on ports of its own (29xxx), so a stack
# already running (the developer's, or make test's) is never touched; reuses the
# downloads of <repo>/.stack/cache. `make test` runs it.
set -euo pipefail
cd "$(dirname "$0")/../../.."
stack=$PWD/deploy/local/stack.sh

dir=$(mktemp -d /tmp/citypop-stack-test.XXXXXX)
# The engine's own user must be able to enter it (mktemp makes it private).
chmod 755 "$dir"
export CITYPOP_STACK_DIR=$dir/stack
export CITYPOP_STACK_CACHE_DIR=${CITYPOP_STACK_CACHE_DIR:-$PWD/.stack/cache}
export CITYPOP_KAFKA_PORT=29092 CITYPOP_KAFKA_CONTROLLER_PORT=29093 CITYPOP_KAFKA_SASL_PORT=29094 \
  CITYPOP_KAFKA_SSL_PORT=29095 CITYPOP_KAFKA_SASL_SSL_PORT=29096 CITYPOP_ENGINE_PORT=29200 \
  CITYPOP_ENGINE_TRANSPORT_PORT=29300 CITYPOP_STACK_STOP_TIMEOUT=60
unset CITYPOP_ENGINE_SECURITY CITYPOP_OPENSEARCH_PULL_INGESTION

decoy=""
legacy=""
cleanup() {
  "$stack" down >/dev/null 2>&1 || true
  if [ -n "$decoy" ]; then kill "$decoy" 2>/dev/null || true; fi
  if [ -n "$legacy" ]; then kill "$legacy" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

# shellcheck source=deploy/local/tests/checks.sh
. deploy/local/tests/checks.sh
# Processes that carry this stack's marker (stack.sh tags every JVM it starts).
ours() { grep -l -- "-Dcitypop.stack=[a-z]*@$CITYPOP_STACK_DIR" /proc/[0-9]*/cmdline 2>/dev/null | wc -l; }

echo "==> stack script test (stack dir $CITYPOP_STACK_DIR)"
status=0; out=$("$stack" status 2>&1) || status=$?
check "status of a stack never started fails" test "$status" -ne 0
check "status of a stack never started says stopped" contains "$out" "kafka: *stopped"
check "status says the engine is stopped" contains "$out" "engine: *stopped"

first=$("$stack" up 2>"$dir/up1.err")
check "up prints Kafka's endpoint" contains "$first" "^KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:29092$"
check "up prints the TLS endpoint and its CA" contains "$first" "^KAFKA_SSL_CA_LOCATION=$CITYPOP_STACK_DIR/tls/ca.pem$"
check "up prints the engine's endpoint" contains "$first" "^ELASTICSEARCH_URL=http://127.0.0.1:29200$"
kafka_pid=$(cat "$CITYPOP_STACK_DIR/kafka/kafka.pid")
engine_pid=$(tr -dc 0-9 <"$CITYPOP_STACK_DIR/engine/engine.pid")
status=0; out=$("$stack" status 2>&1) || status=$?
check "status of a running stack succeeds" test "$status" -eq 0
check "status says Kafka is ready" contains "$out" "kafka: *running, ready *127.0.0.1:29092 (pid $kafka_pid)"
check "status names the engine and its version" contains "$out" "engine: *running, ready *http://127.0.0.1:29200 elasticsearch [0-9.]* (pid $engine_pid"
check "the engine answers on its port" curl -fs -o /dev/null "http://127.0.0.1:29200/_cluster/health"

second=$("$stack" up 2>"$dir/up2.err")
check "a second up prints the same endpoints" test "$first" = "$second"
check "a second up starts nothing" contains "$(cat "$dir/up2.err")" "Kafka already running (pid $kafka_pid)"
check "a second up keeps the engine" contains "$(cat "$dir/up2.err")" "already running (pid $engine_pid)"
check "Kafka is the same process" test "$(cat "$CITYPOP_STACK_DIR/kafka/kafka.pid")" = "$kafka_pid"
check "only two processes carry this stack's marker" test "$(ours)" -eq 2

status=0; CITYPOP_ENGINE=opensearch "$stack" up >/dev/null 2>"$dir/up3.err" || status=$?
check "up asking for another engine than the running one is refused" test "$status" -ne 0
check "and says why" contains "$(cat "$dir/up3.err")" "already running with"
check "and leaves the engine running" alive "$engine_pid"
status=0; CITYPOP_OPENSEARCH_PULL_INGESTION=on "$stack" up >/dev/null 2>"$dir/up4.err" || status=$?
check "pull ingestion on Elasticsearch is refused" test "$status" -ne 0
check "and says it needs OpenSearch 3" contains "$(cat "$dir/up4.err")" "needs OpenSearch 3"
status=0; out=$(CITYPOP_ENGINE=opensearch "$stack" status 2>&1) || status=$?
check "status asked about another engine than the running one fails" test "$status" -ne 0

# A process of someone else: down must leave it alone, even when a stale pid file
# names it (a pid reused after a crash).
sleep 600 &
decoy=$!
"$stack" down 2>"$dir/down.err"
check "down stops Kafka" dead "$kafka_pid"
check "down stops the engine" dead "$engine_pid"
check "nothing of this stack runs after down" test "$(ours)" -eq 0
check "down leaves other processes alone" alive "$decoy"
echo "$decoy" >"$CITYPOP_STACK_DIR/kafka/kafka.pid"
echo "$decoy" >"$CITYPOP_STACK_DIR/engine/engine.pid"
status=0; out=$("$stack" status 2>&1) || status=$?
check "status after down fails" test "$status" -ne 0
check "status does not take a reused pid for Kafka" contains "$out" "kafka: *stopped"
check "status does not take a reused pid for the engine" contains "$out" "engine: *stopped"
"$stack" down 2>"$dir/down2.err"
check "down with pid files naming another process leaves it alone" alive "$decoy"
check "and says nothing runs" contains "$(cat "$dir/down2.err")" "nothing running"

# An engine left running by the stack.sh of before (its pid file and marker): `up`
# refuses to start beside it and `down` stops it.
mkdir -p "$CITYPOP_STACK_DIR/elasticsearch"
# Started from a subshell, so that init, not this script, reaps it once killed.
(python3 -c 'import time; time.sleep(600)' "-Dcitypop.stack=elasticsearch@$CITYPOP_STACK_DIR" &
  echo $! >"$CITYPOP_STACK_DIR/elasticsearch/elasticsearch.pid")
legacy=$(cat "$CITYPOP_STACK_DIR/elasticsearch/elasticsearch.pid")
status=0; "$stack" up >/dev/null 2>"$dir/up4.err" || status=$?
check "up refuses to start beside an engine of the earlier stack.sh" test "$status" -ne 0
check "and says why" contains "$(cat "$dir/up4.err")" "started by an earlier stack.sh"
"$stack" down 2>/dev/null
check "down stops an engine of the earlier stack.sh" dead "$legacy"

echo "$passed passed, $failed failed (stack script test)"
[ "$failed" -eq 0 ]
