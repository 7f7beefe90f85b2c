#!/usr/bin/env bash
# Tests of deploy/local/cluster.sh, against a real 3-broker Kafka and 2-node engine
# cluster of its own: up forms both clusters with the promised durability settings;
# acks=all writes to a replication-factor-3 topic survive the loss of a broker (min
# ISR 2) and the broker rejoins; an engine node stopped, continued, killed and
# started rejoins; down stops everything and frees the ports. Runs in a cluster dir
# and on ports of its own (28xxx), so a cluster or stack already running is never
# touched; reuses the downloads of <repo>/.stack/cache.
set -euo pipefail
cd "$(dirname "$0")/../../.."
cluster=$PWD/deploy/local/cluster.sh

dir=$(mktemp -d /tmp/citypop-cluster-test.XXXXXX)
# The engine's own user must be able to enter it (mktemp makes it private).
chmod 755 "$dir"
export CITYPOP_CLUSTER_DIR=$dir/cluster CITYPOP_CLUSTER_PORT_BASE=28000
export CITYPOP_STACK_CACHE_DIR=${CITYPOP_STACK_CACHE_DIR:-$PWD/.stack/cache}
unset CITYPOP_CLUSTER_KAFKA_PORTS CITYPOP_CLUSTER_KAFKA_CONTROLLER_PORTS CITYPOP_CLUSTER_ENGINE_PORTS \
  CITYPOP_CLUSTER_ENGINE_TRANSPORT_PORTS CITYPOP_ENGINE CITYPOP_ENGINE_VERSION
bootstrap=127.0.0.1:28092,127.0.0.1:28192,127.0.0.1:28292
ports="28092 28192 28292 28093 28193 28293 28200 28201 28300 28301"
topic="cluster-test"

cleanup() {
  "$cluster" down >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

started=$(date +%s)
# shellcheck source=deploy/local/tests/checks.sh
. deploy/local/tests/checks.sh
port_closed() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
all_ports_closed() { local p; for p in $ports; do port_closed "$p" || return 1; done; }
# Processes that carry this cluster's marker (cluster.sh tags every JVM it starts).
ours() { grep -l -- "-Dcitypop.stack=[a-z]*-[0-9]@$CITYPOP_CLUSTER_DIR" /proc/[0-9]*/cmdline 2>/dev/null | wc -l; }
kcli() { "$cluster" kafka-cli "$@"; }
describe() { kcli topics --bootstrap-server "$bootstrap" --describe --topic "$topic" 2>/dev/null; }
leader() { describe | sed -n 's/.*Leader: \([0-9]*\).*/\1/p' | head -n 1; }
isr_size() { describe | sed -n 's/.*Isr: \([0-9,]*\).*/\1/p' | head -n 1 | tr ',' '\n' | grep -c .; }
# produce VALUE...: one record each, acks=all; the producer fails rather than retry
# for two minutes when no in-sync quorum answers.
produce() {
  printf '%s\n' "$@" | kcli console-producer --bootstrap-server "$bootstrap" --topic "$topic" \
    --command-property acks=all --command-property delivery.timeout.ms=30000 \
    --command-property request.timeout.ms=10000 2>&1
}
# The values in the topic, in order (waits for COUNT of them, at most 30 s).
consume() {
  kcli console-consumer --bootstrap-server "$bootstrap" --topic "$topic" --from-beginning \
    --max-messages "$1" --timeout-ms 30000 2>/dev/null | tr '\n' ' '
}
# until SECONDS COMMAND...: retries COMMAND every 2 s until it succeeds or time is up.
until_ok() {
  local deadline=$(( $(date +%s) + $1 ))
  shift
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 2
  done
}
phase() { echo "==> $1 (at $(( $(date +%s) - started ))s)"; }
isr_is() { [ "$(isr_size)" = "$1" ]; }
engine_nodes_are() {
  curl -s -m 15 "http://127.0.0.1:$1/_cluster/health?wait_for_nodes=$2&timeout=10s" | grep -q '"timed_out":false'
}

echo "==> cluster script test (cluster dir $CITYPOP_CLUSTER_DIR)"
# Every setting the script reads is described in its help and in README.
help=$("$cluster" help)
while read -r setting; do
  check "help describes $setting" contains "$help" "$setting"
  check "README describes $setting" grep -q "\`$setting\`" README.md
done < <(grep -o 'CITYPOP_[A-Z_]*' "$cluster" | sort -u)
status=0; out=$("$cluster" status 2>&1) || status=$?
check "status of a cluster never started fails" test "$status" -ne 0
check "and says the nodes are stopped" contains "$out" "kafka 1 *stopped"

phase "up"
env=$("$cluster" up 2>"$dir/up.err") || { cat "$dir/up.err"; exit 1; }
check "up prints the three brokers" contains "$env" "^KAFKA_BOOTSTRAP_SERVERS=$bootstrap$"
check "up prints the first engine node" contains "$env" "^ELASTICSEARCH_URL=http://127.0.0.1:28200$"
check "up prints both engine nodes" contains "$env" "^ELASTICSEARCH_URLS=http://127.0.0.1:28200,http://127.0.0.1:28201$"
check "up prints the engine's name" contains "$env" "^ENGINE_NAME=elasticsearch$"
check "up prints the cluster dir" contains "$env" "^CLUSTER_DIR=$CITYPOP_CLUSTER_DIR$"
check "five processes carry the cluster's marker" test "$(ours)" -eq 5
status=0; out=$("$cluster" status 2>&1) || status=$?
check "status of a running cluster succeeds" test "$status" -eq 0
check "status names the engine's master" contains "$out" "engine master: citypop-cluster-[12]"
check "env prints what up printed" test "$("$cluster" env 2>/dev/null)" = "$env"
check "the engine cluster has two nodes" engine_nodes_are 28201 2
brokers=$(kcli api-versions --bootstrap-server 127.0.0.1:28192 2>/dev/null | grep -c '(id: [123] rack' || true)
check "every broker is in the metadata" test "$brokers" -eq 3
configs=$(kcli configs --bootstrap-server 127.0.0.1:28092 --entity-type brokers --entity-name 2 --describe --all 2>/dev/null)
check "brokers require two in-sync replicas" contains "$configs" "min.insync.replicas=2 "
check "brokers never elect an unclean leader" contains "$configs" "unclean.leader.election.enable=false "
check "brokers never auto-create topics" contains "$configs" "auto.create.topics.enable=false "

phase "a topic with three replicas"
# No --replication-factor: the brokers' default must be 3.
kcli topics --bootstrap-server "$bootstrap" --create --topic "$topic" --partitions 1 >/dev/null 2>&1
check "a new topic gets replication factor 3" contains "$(describe)" "ReplicationFactor: 3"
check "with all three replicas in sync" isr_is 3
out=$(produce one two)
check "an acks=all write with three brokers reports no error" lacks "$out" "ERROR"
check "and is read back" test "$(consume 2)" = "one two "

phase "a broker killed and started"
# Kill the partition's leader: the worst broker to lose.
victim=$(leader)
victim_pid=$("$cluster" pid kafka "$victim")
"$cluster" kill kafka "$victim" 2>/dev/null
check "kill kafka $victim kills the broker" dead "$victim_pid"
status=0; "$cluster" pid kafka "$victim" >/dev/null 2>&1 || status=$?
check "pid of a killed broker fails" test "$status" -ne 0
status=0; "$cluster" kill kafka "$victim" 2>/dev/null || status=$?
check "killing it again is a no-op" test "$status" -eq 0
out=$(produce three)
check "an acks=all write with a broker down reports no error (min ISR 2)" lacks "$out" "ERROR"
check "and is read back" test "$(consume 3)" = "one two three "
check "the partition has a new leader" test "$(leader)" != "$victim"
status=0; out=$("$cluster" status 2>&1) || status=$?
check "status with a broker down fails" test "$status" -ne 0
check "and says which" contains "$out" "kafka $victim *stopped"

"$cluster" start kafka "$victim" 2>"$dir/start.err" || cat "$dir/start.err"
check "start kafka $victim brings the broker back" test -n "$("$cluster" pid kafka "$victim" 2>/dev/null)"
check "it rejoins the in-sync replicas" until_ok 60 isr_is 3
check "starting a running broker is a no-op" "$cluster" start kafka "$victim" 2>/dev/null
check "nothing was lost" test "$(consume 3)" = "one two three "

phase "an engine node stopped, continued, killed and started"
engine_pid=$("$cluster" pid engine 2)
"$cluster" stop engine 2 2>/dev/null
check "stop engine 2 stops the process (SIGSTOP)" test "$(awk '{print $3}' "/proc/$engine_pid/stat")" = T
status=0; out=$("$cluster" status 2>&1) || status=$?
check "status with a stopped engine node fails" test "$status" -ne 0
check "and says it is stopped" contains "$out" "engine 2 *SIGSTOPped"
status=0; "$cluster" start engine 2 2>"$dir/start2.err" || status=$?
check "start refuses a stopped node" test "$status" -ne 0
check "and says to cont it" contains "$(cat "$dir/start2.err")" "cont engine 2"
status=0; "$cluster" up >/dev/null 2>"$dir/up2.err" || status=$?
check "up refuses to wait for a stopped node" test "$status" -ne 0
check "and says to cont it" contains "$(cat "$dir/up2.err")" "cont engine 2"
"$cluster" cont engine 2 2>/dev/null
check "cont engine 2 resumes it" test "$(awk '{print $3}' "/proc/$engine_pid/stat")" != T
check "the engine cluster has two nodes again" engine_nodes_are 28200 2

"$cluster" kill engine 2 2>/dev/null
check "kill engine 2 kills the node" dead "$engine_pid"
"$cluster" start engine 2 2>"$dir/start3.err" || cat "$dir/start3.err"
check "start engine 2 brings it back" alive "$("$cluster" pid engine 2 2>/dev/null || echo 0)"
check "and it rejoins the cluster" engine_nodes_are 28200 2

phase "down"
"$cluster" down 2>"$dir/down.err"
check "nothing of the cluster runs after down" test "$(ours)" -eq 0
check "down frees every port" all_ports_closed
status=0; out=$("$cluster" status 2>&1) || status=$?
check "status after down fails" test "$status" -ne 0
"$cluster" down --purge 2>/dev/null
check "down --purge deletes the nodes' data" test ! -e "$CITYPOP_CLUSTER_DIR/kafka-1"

echo "$passed passed, $failed failed (cluster script test, $(( $(date +%s) - started ))s)"
[ "$failed" -eq 0 ]
