#!/usr/bin/env bash
# citypop local multi-node cluster: 3 Kafka brokers and 2 engine nodes on loopback,
# no Docker, plus the process-control verbs fault injection needs (kill -9 and
# restart a node, SIGSTOP/SIGCONT it).
#
# The processes are the ones stack.sh runs (lib/kafka.sh, lib/engine.sh), started
# once per node with ports, data and logs of their own:
#   - Kafka 4.x in KRaft mode, three nodes each broker and controller, one static
#     quorum of three (survives the loss of any one node);
#   - Elasticsearch or OpenSearch, two master-eligible nodes forming one cluster.
# Everything lives under the git-ignored cluster dir (<repo>/.cluster by default);
# downloads come from stack.sh's cache (<repo>/.stack/cache), never twice.
#
# Usage: deploy/local/cluster.sh help
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
SAY_PREFIX=cluster

# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------
HOST=127.0.0.1   # loopback only: never reachable from another machine
KAFKA_NODES=3    # the template's replication factor 3 and min ISR 2 assume three
ENGINE_NODES=2
ENGINE=${CITYPOP_ENGINE:-elasticsearch}
PORT_BASE=${CITYPOP_CLUSTER_PORT_BASE:-19000}
# Node N (1-based) listens on base+92+100(N-1) (clients) and base+93+100(N-1)
# (controller); engine node N on base+200+(N-1) (HTTP) and base+300+(N-1)
# (transport). Apart from stack.sh's 9092-9096/9200/9300 and stack_test.sh's 29xxx.
KAFKA_PORT_LIST=${CITYPOP_CLUSTER_KAFKA_PORTS:-$((PORT_BASE + 92)),$((PORT_BASE + 192)),$((PORT_BASE + 292))}
KAFKA_CONTROLLER_PORT_LIST=${CITYPOP_CLUSTER_KAFKA_CONTROLLER_PORTS:-$((PORT_BASE + 93)),$((PORT_BASE + 193)),$((PORT_BASE + 293))}
ENGINE_PORT_LIST=${CITYPOP_CLUSTER_ENGINE_PORTS:-$((PORT_BASE + 200)),$((PORT_BASE + 201))}
ENGINE_TRANSPORT_PORT_LIST=${CITYPOP_CLUSTER_ENGINE_TRANSPORT_PORTS:-$((PORT_BASE + 300)),$((PORT_BASE + 301))}
STACK_DIR=${CITYPOP_CLUSTER_DIR:-$REPO_ROOT/.cluster}
# The single-node stack's download cache: the same jars and zips, fetched once.
export CITYPOP_STACK_CACHE_DIR=${CITYPOP_STACK_CACHE_DIR:-$REPO_ROOT/.stack/cache}
CACHE_DIR=""
# Small heaps: the cluster, 2 producer-api and 3 indexers must fit in 6 GiB.
CLUSTER_KAFKA_HEAP=${CITYPOP_CLUSTER_KAFKA_HEAP:-320m}
CLUSTER_ENGINE_HEAP=${CITYPOP_CLUSTER_ENGINE_HEAP:-512m}
START_TIMEOUT=${CITYPOP_CLUSTER_TIMEOUT:-240}        # seconds, per up or start
STOP_TIMEOUT=${CITYPOP_CLUSTER_STOP_TIMEOUT:-30}     # seconds before SIGKILL
# Settings of lib/engine.sh and lib/kafka.sh that the cluster fixes.
# shellcheck disable=SC2034
ENGINE_SECURITY=off PULL_INGESTION=off KAFKA_AUTO_CREATE_TOPICS=false

# shellcheck source=SCRIPTDIR/lib/common.sh
. "$SCRIPT_DIR/lib/common.sh"
# shellcheck source=SCRIPTDIR/lib/tls.sh
. "$SCRIPT_DIR/lib/tls.sh"
# shellcheck source=SCRIPTDIR/lib/kafka.sh
. "$SCRIPT_DIR/lib/kafka.sh"
# shellcheck source=SCRIPTDIR/lib/engine.sh
. "$SCRIPT_DIR/lib/engine.sh"
# shellcheck source=SCRIPTDIR/lib/pull_ingestion.sh
. "$SCRIPT_DIR/lib/pull_ingestion.sh"

ENGINE_VERSION=${CITYPOP_ENGINE_VERSION:-$(engine_default_version "$ENGINE")}
# shellcheck disable=SC2034 # read by lib/kafka.sh and lib/engine.sh
KAFKA_TEMPLATE=cluster-server.properties.template KAFKA_TLS=off
CLUSTER_NAME=citypop-cluster
ENGINE_READY_STATUSES="green yellow red"

IFS=, read -r -a KAFKA_PORTS <<<"$KAFKA_PORT_LIST"
IFS=, read -r -a KAFKA_CONTROLLER_PORTS <<<"$KAFKA_CONTROLLER_PORT_LIST"
IFS=, read -r -a ENGINE_PORTS <<<"$ENGINE_PORT_LIST"
IFS=, read -r -a ENGINE_TRANSPORT_PORTS <<<"$ENGINE_TRANSPORT_PORT_LIST"

usage() {
  cat <<EOF
Usage: deploy/local/cluster.sh COMMAND

A multi-node cluster on 127.0.0.1 for fault-injection runs (the soak, make chaos):
3 Kafka nodes in KRaft mode, each both broker and controller, forming one quorum
(replication factor 3, min.insync.replicas=2, no unclean leader election, topics
never auto-created), and 2 nodes of $ENGINE $ENGINE_VERSION forming one cluster.
Same processes and downloads as stack.sh; separate ports and data. No Docker.

Commands:
  up              start the nodes that are not running, wait until all brokers are
                  in the metadata, the quorum has a leader and the engine cluster
                  has 2 nodes; print the endpoints (stdout, NAME=value lines):
                    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3
                    ELASTICSEARCH_URL=http://127.0.0.1:<node 1>
                    ELASTICSEARCH_URLS=http://127.0.0.1:<node 1>,http://127.0.0.1:<node 2>
                    ENGINE_NAME, ENGINE_VERSION, CLUSTER_DIR
  down [--purge]  stop every node (SIGCONT first if stopped, then SIGTERM, SIGKILL
                  after the stop timeout); --purge also deletes their data and logs
  status          each node's state, the engine's master and voting nodes; exit 0
                  only if every node runs and is ready
  env             print the endpoint lines (like up) of a cluster that was started
  logs kafka N|engine N [-f] [-n LINES]
                  the last LINES (default 40) lines of a node's logs, or follow them
  kafka-cli TOOL [ARGS...]
                  a Kafka CLI tool (topics, console-producer, console-consumer,
                  consumer-groups, api-versions, metadata-quorum, configs, or a
                  main class), e.g. topics --bootstrap-server 127.0.0.1:${KAFKA_PORTS[0]} --list

Fault verbs (N is 1-based: kafka 1-$KAFKA_NODES, engine 1-$ENGINE_NODES; all fast and
safe to repeat):
  kill kafka N|engine N   SIGKILL the node (data stays); no-op if it is not running
  start kafka N|engine N  start a node that is not running, with its data, and wait
                          until it is back (Kafka: the broker is in the metadata
                          again; engine: the node has joined the cluster); fails
                          after CITYPOP_CLUSTER_TIMEOUT with its log's tail
  stop kafka N|engine N   SIGSTOP the node (it hangs: no answers, no heartbeats)
  cont kafka N|engine N   SIGCONT a stopped node
  pid kafka N|engine N    print the node's pid; exit 1 if it is not running

Settings (environment variables, with defaults):
  CITYPOP_CLUSTER_DIR=<repo>/.cluster      data, logs, pid files of every node
  CITYPOP_CLUSTER_PORT_BASE=19000          moves every port below at once
  CITYPOP_CLUSTER_KAFKA_PORTS=$KAFKA_PORT_LIST
                                           client listeners (PLAINTEXT), node 1,2,3
  CITYPOP_CLUSTER_KAFKA_CONTROLLER_PORTS=$KAFKA_CONTROLLER_PORT_LIST
                                           KRaft controller listeners
  CITYPOP_CLUSTER_ENGINE_PORTS=$ENGINE_PORT_LIST
                                           engine HTTP, node 1,2
  CITYPOP_CLUSTER_ENGINE_TRANSPORT_PORTS=$ENGINE_TRANSPORT_PORT_LIST
                                           engine transport
  CITYPOP_CLUSTER_KAFKA_HEAP=320m          heap (-Xms/-Xmx) of each Kafka node
  CITYPOP_CLUSTER_ENGINE_HEAP=512m         heap of each engine node
  CITYPOP_CLUSTER_TIMEOUT=240              seconds up or start waits for readiness
  CITYPOP_CLUSTER_STOP_TIMEOUT=30          seconds down waits before SIGKILL
  CITYPOP_ENGINE=elasticsearch             or opensearch
  CITYPOP_ENGINE_VERSION                   as for stack.sh (9.5.4 / 3.8.0)
  CITYPOP_STACK_CACHE_DIR=<repo>/.stack/cache
                                           downloads, shared with stack.sh
  JAVA_HOME, CITYPOP_ENGINE_JAVA_HOME      as for stack.sh
The cluster has no TLS or SASL listeners and no engine security: stack.sh has them.

Memory: the 5 JVMs at the default heaps hold about 2.2 GiB resident after up and
2.5 GiB after a light load (status shows each node's RSS), which leaves room for
2 producer-api and 3 indexers within 6 GiB.

Notes for fault injection:
  - A broker killed or stopped leaves 2 of 3 replicas: acks=all writes go on
    (min.insync.replicas=2) once the controller has fenced it, after the 9 s
    broker session timeout; until then writes to the partitions it leads or
    follows wait. With 2 brokers gone writes fail (NOT_ENOUGH_REPLICAS) and the
    quorum has no majority until one returns.
  - The engine cluster has 2 master-eligible nodes, but a voting configuration
    keeps an odd number of them: only one node votes (status shows which), and
    it is the elected master. Killing or stopping that node makes the engine
    cluster unavailable (writes fail, indexers retry) until it is back; the other
    node alone is not a quorum. That is expected, not a defect. Stopping or
    killing the other node leaves the cluster up; a stopped node is dropped from
    the cluster after about 30 s of failed follower checks.
  - Indices that must survive the loss of an engine node need 1 replica (the
    indexer's --index-replicas); with 0 replicas their shards on the lost node
    are unavailable (status red) until it returns.
Example: eval "\$(deploy/local/cluster.sh up)"; export KAFKA_BOOTSTRAP_SERVERS ELASTICSEARCH_URL
EOF
}

# ---------------------------------------------------------------------------
# Nodes
# ---------------------------------------------------------------------------
# select_kafka N / select_engine N: point lib/kafka.sh or lib/engine.sh at node N.
# shellcheck disable=SC2034 # read by lib/kafka.sh and lib/engine.sh
select_kafka() {
  local n=$1 i voters=""
  KAFKA_COMP=kafka-$n
  KAFKA_NODE_ID=$n
  KAFKA_PORT=${KAFKA_PORTS[n - 1]}
  KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORTS[n - 1]}
  KAFKA_HEAP=$CLUSTER_KAFKA_HEAP
  KAFKA_CLUSTER_ID_FILE=$STACK_DIR/kafka.cluster.id
  for i in $(seq 1 "$KAFKA_NODES"); do
    voters="$voters${voters:+,}$i@$HOST:${KAFKA_CONTROLLER_PORTS[i - 1]}"
  done
  KAFKA_QUORUM_VOTERS=$voters
}

# shellcheck disable=SC2034 # read by lib/engine.sh
select_engine() {
  local n=$1 i seeds="" masters=""
  ENGINE_COMP=engine-$n
  ENGINE_PORT=${ENGINE_PORTS[n - 1]}
  ENGINE_TRANSPORT_PORT=${ENGINE_TRANSPORT_PORTS[n - 1]}
  ENGINE_HEAP=$CLUSTER_ENGINE_HEAP
  ENGINE_NODE_NAME=$CLUSTER_NAME-$n
  for i in $(seq 1 "$ENGINE_NODES"); do
    seeds="$seeds${seeds:+, }\"$HOST:${ENGINE_TRANSPORT_PORTS[i - 1]}\""
    masters="$masters${masters:+, }\"$CLUSTER_NAME-$i\""
  done
  ENGINE_DISCOVERY="discovery.seed_hosts: [$seeds]"
  # Only to bootstrap a new cluster: a node with data of its own already belongs
  # to one, and the engine warns about the setting left in place after that.
  if [ -z "$(ls -A "$(comp_dir "$ENGINE_COMP")/data" 2>/dev/null)" ]; then
    ENGINE_DISCOVERY="$ENGINE_DISCOVERY
cluster.initial_master_nodes: [$masters]"
  fi
}

# kind N -> checked node number; dies with the usage otherwise.
node_arg() {
  local kind=${1:-} n=${2:-} max
  case "$kind" in
    kafka) max=$KAFKA_NODES ;;
    engine) max=$ENGINE_NODES ;;
    *) die "expected 'kafka N' or 'engine N', got '$kind${n:+ $n}'" ;;
  esac
  case "$n" in
    ''|*[!0-9]*) die "expected a node number 1-$max after '$kind', got '$n'" ;;
  esac
  [ "$n" -ge 1 ] && [ "$n" -le "$max" ] || die "$kind node $n does not exist (1-$max)"
  echo "$n"
}

# The state letter of a process (R, S, T for stopped, ...), empty if gone.
proc_state() { sed -n 's/^[0-9]* (.*) \([A-Za-z]\) .*/\1/p' "/proc/$1/stat" 2>/dev/null || true; }

all_comps() {
  local i
  for i in $(seq 1 "$KAFKA_NODES"); do echo "kafka-$i"; done
  for i in $(seq 1 "$ENGINE_NODES"); do echo "engine-$i"; done
}

# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------
check_settings() {
  case "$ENGINE" in elasticsearch|opensearch) ;; *) die "CITYPOP_ENGINE must be elasticsearch or opensearch, not '$ENGINE'" ;; esac
  case "$ENGINE_VERSION" in [0-9]*.[0-9]*.[0-9]*) ;; *) die "CITYPOP_ENGINE_VERSION must look like 9.5.4, not '$ENGINE_VERSION'" ;; esac
  [ "${#KAFKA_PORTS[@]}" -eq "$KAFKA_NODES" ] && [ "${#KAFKA_CONTROLLER_PORTS[@]}" -eq "$KAFKA_NODES" ] ||
    die "CITYPOP_CLUSTER_KAFKA_PORTS and CITYPOP_CLUSTER_KAFKA_CONTROLLER_PORTS need $KAFKA_NODES ports each"
  [ "${#ENGINE_PORTS[@]}" -eq "$ENGINE_NODES" ] && [ "${#ENGINE_TRANSPORT_PORTS[@]}" -eq "$ENGINE_NODES" ] ||
    die "CITYPOP_CLUSTER_ENGINE_PORTS and CITYPOP_CLUSTER_ENGINE_TRANSPORT_PORTS need $ENGINE_NODES ports each"
  local all=("${KAFKA_PORTS[@]}" "${KAFKA_CONTROLLER_PORTS[@]}" "${ENGINE_PORTS[@]}" "${ENGINE_TRANSPORT_PORTS[@]}") p
  for p in "${all[@]}"; do
    case "$p" in ''|*[!0-9]*) die "ports must be numbers, got '$p'" ;; esac
  done
  if [ "$(printf '%s\n' "${all[@]}" | sort -u | wc -l)" -ne "${#all[@]}" ]; then
    die "the ports must all differ: ${all[*]}"
  fi
}

# ports_free COMP: the ports of a node about to start are free (a JVM would die on a
# busy one); checked for all nodes before starting any, so a conflict never leaves
# half a cluster behind.
ports_free() {
  local comp=$1 n=${1##*-} p ports
  case "$comp" in
    kafka-*) ports="${KAFKA_PORTS[n - 1]} ${KAFKA_CONTROLLER_PORTS[n - 1]}" ;;
    engine-*) ports="${ENGINE_PORTS[n - 1]} ${ENGINE_TRANSPORT_PORTS[n - 1]}" ;;
  esac
  for p in $ports; do
    if port_open "$p"; then
      die "port $p on $HOST (for $comp) is already in use by another process; stop it or move the cluster's ports (CITYPOP_CLUSTER_PORT_BASE)"
    fi
  done
}

# A Kafka node is ready when its own metadata lists it: registered with the quorum,
# caught up and unfenced.
kafka_node_registered() { kafka_broker_ids "$1" | grep -qx "$KAFKA_NODE_ID"; }

# The whole quorum: every broker in the metadata, and a leader among 3 voters.
wait_kafka_cluster() {
  local deadline=$1 ids quorum leader voters want
  want=$(seq 1 "$KAFKA_NODES" | tr '\n' ' ')
  while :; do
    ids=$(kafka_broker_ids "${KAFKA_PORTS[0]}" | tr '\n' ' ' || true)
    if [ "$ids" = "$want" ]; then
      quorum=$(kafka_tool "$(kafka_cli_class metadata-quorum)" --bootstrap-server "$HOST:${KAFKA_PORTS[0]}" \
        --command-config "$SCRIPT_DIR/kafka/cli.properties" describe --status 2>/dev/null || true)
      leader=$(sed -n 's/^LeaderId: *\([0-9][0-9]*\)$/\1/p' <<<"$quorum")
      voters=$(grep '^CurrentVoters:' <<<"$quorum" | grep -o '"id": *[0-9]*' | wc -l | tr -d ' ')
      if [ -n "$leader" ] && [ "$voters" -eq "$KAFKA_NODES" ]; then
        say "Kafka quorum ready: brokers ${ids% }, controller leader $leader"
        return 0
      fi
    fi
    if [ "$(now)" -ge "$deadline" ]; then
      die "the Kafka cluster did not form in ${START_TIMEOUT}s (brokers in the metadata: ${ids:-none}; quorum: ${quorum:-no answer}); see: $0 logs kafka 1"
    fi
    sleep 2
  done
}

wait_engine_cluster() {
  local deadline=$1 body
  while :; do
    body=$(curl_engine "${ENGINE_PORTS[0]}" off "/_cluster/health?wait_for_nodes=$ENGINE_NODES&timeout=5s")
    case "$body" in
      *'"timed_out":false'*)
        say "$ENGINE cluster ready: $ENGINE_NODES nodes, status $(sed -n 's/.*"status":"\([a-z]*\)".*/\1/p' <<<"$body")"
        return 0 ;;
    esac
    if [ "$(now)" -ge "$deadline" ]; then
      die "the $ENGINE cluster did not reach $ENGINE_NODES nodes in ${START_TIMEOUT}s (health: ${body:-no answer}); see: $0 logs engine 1"
    fi
    sleep 1
  done
}

# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------
print_endpoints() {
  local i conf kafka="" urls=""
  for i in $(seq 1 "$KAFKA_NODES"); do
    conf=$(running_conf "kafka-$i")
    kafka="$kafka${kafka:+,}$HOST:$(conf_value "$conf" port)"
  done
  for i in $(seq 1 "$ENGINE_NODES"); do
    conf=$(running_conf "engine-$i")
    urls="$urls${urls:+,}http://$HOST:$(conf_value "$conf" port)"
  done
  conf=$(running_conf engine-1)
  echo "KAFKA_BOOTSTRAP_SERVERS=$kafka"
  echo "ELASTICSEARCH_URL=${urls%%,*}"
  echo "ELASTICSEARCH_URLS=$urls"
  echo "ENGINE_NAME=$(conf_value "$conf" engine)"
  echo "ENGINE_VERSION=$(conf_value "$conf" version)"
  echo "CLUSTER_DIR=$STACK_DIR"
}

cmd_up() {
  check_settings
  init_stack_dir
  require_tools
  acquire_lock
  local started deadline i comp pid to_start=()
  started=$(now)
  deadline=$(( started + START_TIMEOUT ))
  for i in $(seq 1 "$KAFKA_NODES"); do
    select_kafka "$i"
    if [ -n "$(running_pid "$KAFKA_COMP")" ]; then check_running_matches "$KAFKA_COMP" "$(kafka_conf)"; else to_start+=("$KAFKA_COMP"); fi
  done
  for i in $(seq 1 "$ENGINE_NODES"); do
    select_engine "$i"
    if [ -n "$(running_pid "$ENGINE_COMP")" ]; then check_running_matches "$ENGINE_COMP" "$(engine_conf)"; else to_start+=("$ENGINE_COMP"); fi
  done
  for comp in "${to_start[@]}"; do ports_free "$comp"; done
  # A stopped node would only make the wait below time out.
  for comp in $(all_comps); do
    pid=$(running_pid "$comp")
    if [ -n "$pid" ] && [ "$(proc_state "$pid")" = T ]; then
      die "${comp%-*} ${comp##*-} (pid $pid) is SIGSTOPped: resume it with: $0 cont ${comp%-*} ${comp##*-}"
    fi
  done
  [ ${#to_start[@]} -eq 0 ] || collect_kafka_classpath

  # Start every node before waiting for any: their startups overlap, and neither
  # quorum forms before a majority of its nodes runs.
  for comp in "${to_start[@]}"; do
    case "$comp" in
      kafka-*) select_kafka "${comp#kafka-}"; start_kafka ;;
      engine-*) select_engine "${comp#engine-}"; start_engine ;;
    esac
  done
  for i in $(seq 1 "$KAFKA_NODES"); do select_kafka "$i"; wait_kafka "$deadline" kafka_node_registered; done
  wait_kafka_cluster "$deadline"
  for i in $(seq 1 "$ENGINE_NODES"); do select_engine "$i"; wait_engine "$deadline"; done
  wait_engine_cluster "$deadline"
  say "cluster up in $(( $(now) - started ))s (started ${#to_start[@]} of $(( KAFKA_NODES + ENGINE_NODES )) nodes)"
  print_endpoints
}

require_tools() {
  local tool
  for tool in mvn curl unzip; do
    command -v "$tool" >/dev/null 2>&1 ||
      die "$tool not found: install it (e.g. apt-get install maven curl unzip)"
  done
  find_kafka_java
  find_engine_java
}

# shellcheck disable=SC2046 # one word a component
cmd_down() { down_components "$@" -- $(all_comps); }

# Deletes every node's data and logs and the Kafka cluster id; keeps the unzipped
# engine (and the downloads, which live in stack.sh's cache).
purge_data() {
  [ -f "$STACK_DIR/.citypop-stack" ] || die "$STACK_DIR has no .citypop-stack marker; not deleting it"
  local comp
  for comp in $(all_comps); do rm -rf "$(comp_dir "$comp")"; done
  rm -f "$STACK_DIR/kafka.cluster.id"
  say "deleted the nodes' data and logs under $STACK_DIR"
}

cmd_status() {
  resolve_stack_dir
  local ok=0 i pid port state health body
  for i in $(seq 1 "$KAFKA_NODES"); do
    select_kafka "$i"
    pid=$(running_pid "$KAFKA_COMP"); port=$KAFKA_PORT; state=$(node_state "$pid")
    if [ "$state" = running ] && ! kafka_node_registered "$port"; then state="running, NOT in the metadata"; fi
    case "$state" in running) ;; *) ok=1 ;; esac
    printf '%-10s %-30s %s:%s%s\n' "kafka $i" "$state" "$HOST" "$port" "$(pid_rss "$pid")"
  done
  for i in $(seq 1 "$ENGINE_NODES"); do
    select_engine "$i"
    pid=$(running_pid "$ENGINE_COMP"); port=$ENGINE_PORT; state=$(node_state "$pid")
    if [ "$state" = running ]; then
      health=$(engine_health "$port" off)
      if [ -z "$health" ]; then state="running, NOT in a cluster"; else state="running, $health"; fi
    fi
    case "$state" in "running, green"|"running, yellow"|"running, red") ;; *) ok=1 ;; esac
    printf '%-10s %-30s http://%s:%s%s\n' "engine $i" "$state" "$HOST" "$port" "$(pid_rss "$pid")"
  done
  for i in $(seq 1 "$ENGINE_NODES"); do
    body=$(curl_engine "${ENGINE_PORTS[i - 1]}" off '/_cat/master?h=node')
    if [ -n "$body" ] && ! grep -q error <<<"$body"; then
      echo "engine master: $body; voting: $(engine_voters "${ENGINE_PORTS[i - 1]}")"
      break
    fi
  done
  echo "total RSS:  $(total_rss) MiB"
  echo "cluster dir: $STACK_DIR"
  return $ok
}

# stopped | running | SIGSTOPped, from a pid (empty: stopped).
node_state() {
  if [ -z "$1" ]; then echo stopped
  elif [ "$(proc_state "$1")" = T ]; then echo "SIGSTOPped (cont to resume)"
  else echo running
  fi
}

# " (pid P, RSS M MiB)" for a running pid, nothing otherwise.
pid_rss() {
  [ -n "$1" ] || return 0
  printf ' (pid %s, RSS %s MiB)' "$1" "$(( $(rss_kib "$1") / 1024 ))"
}

# Resident set size of a process in KiB (0 if gone).
rss_kib() { awk '/^VmRSS:/ { print $2; found = 1 } END { if (!found) print 0 }' "/proc/$1/status" 2>/dev/null || echo 0; }

total_rss() {
  local comp pid total=0
  for comp in $(all_comps); do
    pid=$(running_pid "$comp")
    [ -n "$pid" ] || continue
    total=$(( total + $(rss_kib "$pid") ))
  done
  echo $(( total / 1024 ))
}

# The names of the engine's voting nodes, from the cluster state alone (the master
# answers it without asking other nodes, so a stopped node does not delay it).
engine_voters() {
  local state ids id names=""
  state=$(curl_engine "$1" off '/_cluster/state/nodes,metadata?filter_path=nodes.*.name,metadata.cluster_coordination.last_committed_config')
  ids=$(grep -o '"last_committed_config":\[[^]]*\]' <<<"$state" | grep -o '"[A-Za-z0-9_-]\{20,\}"' | tr -d '"' || true)
  for id in $ids; do
    names="$names${names:+, }$(grep -o "\"$id\":{\"name\":\"[^\"]*\"" <<<"$state" | sed 's/.*"name":"\([^"]*\)"/\1/' || true)"
  done
  echo "${names:-unknown}"
}

cmd_env() {
  resolve_stack_dir
  [ -n "$(running_conf kafka-1)" ] || die "the cluster has not been started; start it with: $0 up"
  print_endpoints
}

cmd_logs() {
  local kind="" n="" follow=false lines=40 candidates=()
  while [ $# -gt 0 ]; do
    case "$1" in
      -f|--follow) follow=true ;;
      -n) shift; lines=${1:?-n needs a number} ;;
      kafka|engine) kind=$1; shift; n=${1:-} ;;
      *) die "usage: $0 logs kafka N|engine N [-f] [-n LINES]" ;;
    esac
    shift
  done
  n=$(node_arg "$kind" "$n")
  resolve_stack_dir
  case "$kind" in
    kafka) select_kafka "$n"; candidates=("$(out_file "$KAFKA_COMP")" "$(kafka_log)") ;;
    engine) select_engine "$n"; candidates=("$(out_file "$ENGINE_COMP")" "$(engine_log)") ;;
  esac
  show_logs "$follow" "$lines" "$kind $n" "${candidates[@]}"
}

cmd_kafka_cli() {
  [ $# -gt 0 ] || die "usage: $0 kafka-cli TOOL [ARGS...] (e.g. topics --bootstrap-server $HOST:${KAFKA_PORTS[0]} --list)"
  resolve_stack_dir
  kafka_cli "$@"
}

# ---------------------------------------------------------------------------
# Fault verbs
# ---------------------------------------------------------------------------
# node_pid KIND N: the node's pid, or nothing.
node_pid() { resolve_stack_dir; running_pid "$1-$2"; }

cmd_pid() {
  local n pid
  n=$(node_arg "$@")
  pid=$(node_pid "$1" "$n")
  [ -n "$pid" ] || { say "$1 $n is not running"; return 1; }
  echo "$pid"
}

# signal_node SIGNAL KIND N
signal_node() {
  local sig=$1 kind=$2 n pid waited=0
  n=$(node_arg "$kind" "${3:-}")
  pid=$(node_pid "$kind" "$n")
  if [ -z "$pid" ]; then say "$kind $n is not running"; return 0; fi
  kill "-$sig" "$pid"
  case "$sig" in
    KILL)
      # Gone before we return, so that a start right after finds the ports free.
      while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 100 ]; do sleep 0.1; waited=$((waited + 1)); done
      kill -0 "$pid" 2>/dev/null && die "$kind $n (pid $pid) survived SIGKILL for 10 s"
      say "killed $kind $n (pid $pid)" ;;
    STOP) say "stopped $kind $n (pid $pid, SIGSTOP)" ;;
    CONT) say "continued $kind $n (pid $pid, SIGCONT)" ;;
  esac
}

cmd_start() {
  local kind=${1:-} n pid deadline
  n=$(node_arg "$kind" "${2:-}")
  check_settings
  init_stack_dir
  require_tools
  deadline=$(( $(now) + START_TIMEOUT ))
  # Locked while starting, not while waiting: the soak may start several nodes at once.
  acquire_lock
  [ -n "$(running_conf "$kind-$n")" ] ||
    die "$kind $n is not part of a running cluster (never started, or after down): run '$0 up'"
  pid=$(running_pid "$kind-$n")
  if [ -n "$pid" ] && [ "$(proc_state "$pid")" = T ]; then
    die "$kind $n (pid $pid) is SIGSTOPped: resume it with: $0 cont $kind $n"
  fi
  case "$kind" in
    kafka)
      select_kafka "$n"
      if [ -z "$pid" ]; then ports_free "$KAFKA_COMP"; start_kafka; fi
      release_lock
      wait_kafka "$deadline" kafka_node_registered ;;
    engine)
      select_engine "$n"
      if [ -z "$pid" ]; then ports_free "$ENGINE_COMP"; start_engine; fi
      release_lock
      wait_engine "$deadline" ;;
  esac
}

main() {
  local cmd=${1:-help}
  [ $# -gt 0 ] && shift
  case "$cmd" in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status ;;
    env) cmd_env ;;
    logs) cmd_logs "$@" ;;
    kafka-cli) cmd_kafka_cli "$@" ;;
    kill) signal_node KILL "$@" ;;
    stop) signal_node STOP "$@" ;;
    cont) signal_node CONT "$@" ;;
    start) cmd_start "$@" ;;
    pid) cmd_pid "$@" ;;
    help|-h|--help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
