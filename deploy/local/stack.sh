#!/usr/bin/env bash
# citypop local service stack: real Kafka and a real search engine, no Docker.
#
# There is no Docker engine on the development machines or in CI and only package
# registries are reachable, so both run as plain JVM processes from Maven Central:
#   - Kafka 4.x in KRaft mode, one combined broker+controller (lib/kafka.sh);
#   - Elasticsearch or OpenSearch, one node, from the integ-test-zip distribution
#     (lib/engine.sh), as an unprivileged user when run as root.
# Everything listens on 127.0.0.1 only; data, logs, pid files and downloads live
# under the git-ignored stack dir (<repo>/.stack by default). Configuration
# templates sit beside this script (kafka/, engine/).
#
# Usage: deploy/local/stack.sh up|down [--purge]|status|logs|env|kafka-cli|clean|help
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)

# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------
HOST=127.0.0.1   # loopback only: never reachable from another machine
ENGINE=${CITYPOP_ENGINE:-elasticsearch}
KAFKA_PORT=${CITYPOP_KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${CITYPOP_KAFKA_CONTROLLER_PORT:-9093}
# Further client listeners for the tests of Kafka security: SASL_PLAINTEXT, SSL and
# SASL_SSL. SASL is PLAIN with one user, defined in server.properties; loopback
# only, so the password below guards nothing but test data.
KAFKA_SASL_PORT=${CITYPOP_KAFKA_SASL_PORT:-9094}
KAFKA_SSL_PORT=${CITYPOP_KAFKA_SSL_PORT:-9095}
KAFKA_SASL_SSL_PORT=${CITYPOP_KAFKA_SASL_SSL_PORT:-9096}
# shellcheck disable=SC2034 # read by render (lib/common.sh) for the template
KAFKA_SASL_USER=citypop KAFKA_SASL_PASSWORD=citypop-secret
ENGINE_PORT=${CITYPOP_ENGINE_PORT:-9200}
ENGINE_TRANSPORT_PORT=${CITYPOP_ENGINE_TRANSPORT_PORT:-9300}
ENGINE_SECURITY=${CITYPOP_ENGINE_SECURITY:-off}
# on: OpenSearch 3+ gets its pull-based ingestion plugin (ingestion-kafka), which
# the benchmark's P7 compares citypop's indexer with (lib/pull_ingestion.sh).
PULL_INGESTION=${CITYPOP_OPENSEARCH_PULL_INGESTION:-off}
STACK_DIR=${CITYPOP_STACK_DIR:-$REPO_ROOT/.stack}
CACHE_DIR=""   # set by init_stack_dir / resolve_stack_dir
KAFKA_HEAP=${CITYPOP_KAFKA_HEAP:-512m}
ENGINE_HEAP=${CITYPOP_ENGINE_HEAP:-512m}
# Off by default, as on most managed clusters: an auto-created topic would get one
# partition and no compaction and silently break the event contract, so citypop
# must create its topics itself (and tests their own).
KAFKA_AUTO_CREATE_TOPICS=${CITYPOP_KAFKA_AUTO_CREATE_TOPICS:-false}
START_TIMEOUT=${CITYPOP_STACK_TIMEOUT:-180}     # seconds, per `up`
STOP_TIMEOUT=${CITYPOP_STACK_STOP_TIMEOUT:-30}  # seconds before SIGKILL

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

usage() {
  cat <<EOF
Usage: deploy/local/stack.sh COMMAND

Runs Kafka (KRaft, single node) and Elasticsearch or OpenSearch (one node, from
the integ-test-zip distribution) as local JVM processes on 127.0.0.1, from Maven
Central. No Docker.

Commands:
  up              start what is not running, wait until ready, print endpoints
                  (stdout: NAME=value lines: KAFKA_BOOTSTRAP_SERVERS, ...,
                  ELASTICSEARCH_URL, ENGINE_NAME, ENGINE_VERSION)
  down [--purge]  stop the stack's own processes (by pid file); --purge also
                  deletes all data, logs and certificates (keeps the downloads)
  status          show each component; exit 0 only if Kafka and the engine are ready
  logs [kafka|engine] [-f] [-n N]
                  show the last N (default 40) lines of the logs, or follow them
  env             print the endpoint lines of the running stack (like 'up')
  kafka-cli TOOL [ARGS...]
                  run a Kafka CLI tool from the stack's classpath; TOOL is one of
                  topics, console-producer, console-consumer, consumer-groups,
                  api-versions, metadata-quorum, configs, or a main class name
  clean           stop everything and delete the whole stack dir
  help            this text

Settings (environment variables, with defaults):
  CITYPOP_ENGINE=elasticsearch        or opensearch
  CITYPOP_ENGINE_VERSION              default 9.5.4 for elasticsearch, 3.8.0 for
                                      opensearch; any version published as an
                                      integ-test-zip (tested: 9.5.4, 8.19.21, 3.8.0, 2.19.6)
  CITYPOP_ENGINE_SECURITY=off         on (elasticsearch only): HTTPS with the stack's
                                      CA, file-realm users and roles (README)
  CITYPOP_OPENSEARCH_PULL_INGESTION=off
                                      on (OpenSearch 3+ only): install the engine's
                                      pull-based ingestion plugin, ingestion-kafka,
                                      assembled from Maven Central (bench P7)
  CITYPOP_KAFKA_PORT=9092             Kafka client listener (PLAINTEXT)
  CITYPOP_KAFKA_CONTROLLER_PORT=9093  KRaft controller listener
  CITYPOP_KAFKA_SASL_PORT=9094        SASL_PLAINTEXT listener (mechanism PLAIN, user
                                      citypop, password citypop-secret)
  CITYPOP_KAFKA_SSL_PORT=9095         SSL listener (certificate from the stack's CA,
                                      <stack dir>/tls/ca.pem)
  CITYPOP_KAFKA_SASL_SSL_PORT=9096    SASL_SSL listener (both of the above)
  CITYPOP_ENGINE_PORT=9200            engine HTTP port
  CITYPOP_ENGINE_TRANSPORT_PORT=9300  engine transport port
  CITYPOP_STACK_DIR=<repo>/.stack     data, logs, pid files, certificates
  CITYPOP_STACK_CACHE_DIR=<stack dir>/cache
                                      downloaded jars and engine zips
  CITYPOP_KAFKA_HEAP=512m             Kafka JVM heap (-Xms/-Xmx)
  CITYPOP_ENGINE_HEAP=512m            engine JVM heap (-Xms/-Xmx)
  CITYPOP_KAFKA_AUTO_CREATE_TOPICS=false
  CITYPOP_STACK_TIMEOUT=180           seconds 'up' waits for readiness
  CITYPOP_STACK_STOP_TIMEOUT=30       seconds 'down' waits before SIGKILL
  JAVA_HOME                           JDK for Kafka (17+); else 'java' on PATH,
                                      else the newest under /usr/lib/jvm
  CITYPOP_ENGINE_JAVA_HOME            JDK for the engine (21+ for Elasticsearch 9
                                      and OpenSearch 3, 17+ before); else as above

Requirements: java 17+ (and 21+ for the default engines), mvn, curl, unzip,
openssl. The first 'up' downloads about 150 MB of jars and zips into the cache;
later runs reuse them. When run as root, the engine runs as the system user
$ENGINE_OS_USER, created on first use.
Example: eval "\$(deploy/local/stack.sh up)"; export KAFKA_BOOTSTRAP_SERVERS ELASTICSEARCH_URL
EOF
}

# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------
require_tools() {
  local tool
  for tool in mvn curl unzip openssl; do
    command -v "$tool" >/dev/null 2>&1 ||
      die "$tool not found: install it (e.g. apt-get install maven curl unzip openssl)"
  done
  find_kafka_java
  find_engine_java
}

KAFKA_PORTS=("$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$KAFKA_SASL_PORT" "$KAFKA_SSL_PORT" "$KAFKA_SASL_SSL_PORT")
ENGINE_PORTS=("$ENGINE_PORT" "$ENGINE_TRANSPORT_PORT")
ALL_PORTS=("${KAFKA_PORTS[@]}" "${ENGINE_PORTS[@]}")

check_settings() {
  case "$ENGINE" in elasticsearch|opensearch) ;; *) die "CITYPOP_ENGINE must be elasticsearch or opensearch, not '$ENGINE'" ;; esac
  case "$ENGINE_VERSION" in [0-9]*.[0-9]*.[0-9]*) ;; *) die "CITYPOP_ENGINE_VERSION must look like 9.5.4, not '$ENGINE_VERSION'" ;; esac
  case "$ENGINE_SECURITY" in
    off) ;;
    on) [ "$ENGINE" = elasticsearch ] ||
          die "CITYPOP_ENGINE_SECURITY=on needs Elasticsearch: OpenSearch's integ-test-zip has no security plugin" ;;
    *) die "CITYPOP_ENGINE_SECURITY must be on or off, not '$ENGINE_SECURITY'" ;;
  esac
  check_pull_ingestion_setting
  local p
  for p in "${ALL_PORTS[@]}"; do
    case "$p" in ''|*[!0-9]*) die "ports must be numbers, got '$p'" ;; esac
  done
  if [ "$(printf '%s\n' "${ALL_PORTS[@]}" | sort -u | wc -l)" -ne "${#ALL_PORTS[@]}" ]; then
    die "the ports must all differ: ${ALL_PORTS[*]}"
  fi
  case "$KAFKA_AUTO_CREATE_TOPICS" in true|false) ;; *) die "CITYPOP_KAFKA_AUTO_CREATE_TOPICS must be true or false" ;; esac
}

# Before starting anything: the ports of what is about to start must be free
# (a JVM would die on a busy port). Checking all first means a conflict never
# leaves half a stack behind. Arguments: the pids of Kafka and of the engine,
# empty for "about to start".
check_ports_free() {
  local kpid=$1 epid=$2 p
  if [ -z "$kpid" ]; then
    for p in "${KAFKA_PORTS[@]}"; do
      if port_open "$p"; then
        die "port $p on $HOST is already in use by another process; stop it or set the CITYPOP_KAFKA_*_PORT settings"
      fi
    done
  fi
  if [ -z "$epid" ]; then
    for p in "${ENGINE_PORTS[@]}"; do
      if port_open "$p"; then
        die "port $p on $HOST is already in use by another process; stop it or set CITYPOP_ENGINE_PORT / CITYPOP_ENGINE_TRANSPORT_PORT"
      fi
    done
  fi
  return 0
}

# The engines of the stack.sh before the integ-test-zips (codelibs runners), whose
# pid files were <stack dir>/<engine>/<engine>.pid: `down` stops them too, so a stack
# started before an update can still be stopped.
LEGACY_ENGINES="elasticsearch opensearch"

print_endpoints() {
  kafka_endpoints
  engine_endpoints
}

# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------
cmd_up() {
  check_settings
  init_stack_dir
  require_tools
  acquire_lock
  local started kpid epid
  started=$(now)
  local legacy
  for legacy in $LEGACY_ENGINES; do
    epid=$(running_pid "$legacy")
    if [ -n "$epid" ]; then
      die "$legacy started by an earlier stack.sh (a codelibs runner, pid $epid) is running; run '$0 down' first"
    fi
  done
  kpid=$(running_pid kafka)
  epid=$(running_pid engine)
  [ -n "$kpid" ] && check_running_matches kafka "$(kafka_conf)"
  [ -n "$epid" ] && check_running_matches engine "$(engine_conf)"
  check_ports_free "$kpid" "$epid"
  [ -n "$kpid" ] || collect_kafka_classpath

  # Start both before waiting for either: their startups overlap.
  if [ -n "$kpid" ]; then say "Kafka already running (pid $kpid)"; else start_kafka; fi
  if [ -n "$epid" ]; then say "$ENGINE $ENGINE_VERSION already running (pid $epid)"; else start_engine; fi

  wait_kafka $(( started + START_TIMEOUT ))
  wait_engine $(( started + START_TIMEOUT ))
  if [ -z "$kpid" ] || [ -z "$epid" ]; then say "stack up in $(( $(now) - started ))s"; fi
  print_endpoints
}

# shellcheck disable=SC2086 # LEGACY_ENGINES is a list of words
cmd_down() { down_components "$@" -- kafka engine $LEGACY_ENGINES; }

# Deletes data, logs and certificates of every component; keeps the downloads.
purge_data() {
  [ -f "$STACK_DIR/.citypop-stack" ] || die "$STACK_DIR has no .citypop-stack marker; not deleting it"
  local dir base
  base=$(engine_base)
  for dir in "$STACK_DIR"/kafka "$STACK_DIR"/tls "$base"/engine "$base"/elasticsearch-* "$base"/opensearch-*; do
    if [ -e "$dir" ]; then rm -rf "$dir"; fi
  done
  if [ "$base" != "$STACK_DIR" ]; then rm -rf "$base" "$STACK_DIR/engine.base"; fi
  say "deleted data and logs under $STACK_DIR (kept the downloads in $CACHE_DIR)"
}

cmd_clean() {
  cmd_down
  resolve_stack_dir
  [ -d "$STACK_DIR" ] || return 0
  [ -f "$STACK_DIR/.citypop-stack" ] || die "$STACK_DIR has no .citypop-stack marker; not deleting it"
  rm -rf "$LOCK_DIR"; trap - EXIT
  if [ "$(engine_base)" != "$STACK_DIR" ]; then rm -rf "$(engine_base)"; fi
  rm -rf "${STACK_DIR:?}"
  say "deleted $STACK_DIR"
}

cmd_status() {
  resolve_stack_dir
  local ok=0 pid port conf health name security scheme pull
  pid=$(running_pid kafka)
  conf=$(running_conf kafka)
  port=$(conf_value "$conf" port); port=${port:-$KAFKA_PORT}
  if [ -z "$pid" ]; then
    echo "kafka:         stopped              $HOST:$port"; ok=1
  elif kafka_ready "$port"; then
    echo "kafka:         running, ready       $HOST:$port (pid $pid)"
  else
    echo "kafka:         running, NOT ready   $HOST:$port (pid $pid)"; ok=1
  fi
  pid=$(running_pid engine)
  conf=$(running_conf engine)
  if [ -z "$pid" ]; then
    printf 'engine:        stopped              %s %s\n' "$ENGINE" "$ENGINE_VERSION"; ok=1
  else
    port=$(conf_value "$conf" port); security=$(conf_value "$conf" security)
    name="$(conf_value "$conf" engine) $(conf_value "$conf" version)"
    scheme=http; [ "$security" = on ] && scheme=https
    health=$(engine_health "$port" "$security")
    case "$health" in
      green|yellow) printf 'engine:        running, ready       %s://%s:%s %s (pid %s, %s)\n' "$scheme" "$HOST" "$port" "$name" "$pid" "$health" ;;
      *) printf 'engine:        running, NOT ready   %s://%s:%s %s (pid %s, health: %s)\n' "$scheme" "$HOST" "$port" "$name" "$pid" "${health:-no answer}"; ok=1 ;;
    esac
    # A stack that runs another engine than the one asked for does not serve the caller.
    if [ "$name" != "$ENGINE $ENGINE_VERSION" ] || [ "$security" != "$ENGINE_SECURITY" ]; then
      echo "               but $ENGINE $ENGINE_VERSION (security $ENGINE_SECURITY) was asked for"; ok=1
    fi
    pull=$(conf_value "$conf" pull_ingestion)
    if [ "${pull:-off}" != "$PULL_INGESTION" ]; then
      echo "               but pull-based ingestion ${PULL_INGESTION} was asked for (it is ${pull:-off})"; ok=1
    fi
  fi
  echo "stack dir:     $STACK_DIR"
  return $ok
}

cmd_env() {
  resolve_stack_dir
  [ -n "$(running_pid kafka)" ] || die "Kafka is not running; start the stack with: $0 up"
  [ -n "$(running_pid engine)" ] || die "the engine is not running; start the stack with: $0 up"
  print_endpoints
}

cmd_logs() {
  local which=all follow=false n=40 candidates=()
  while [ $# -gt 0 ]; do
    case "$1" in
      -f|--follow) follow=true ;;
      -n) shift; n=${1:?-n needs a number} ;;
      kafka|engine|all) which=$1 ;;
      *) die "usage: $0 logs [kafka|engine] [-f] [-n N]" ;;
    esac
    shift
  done
  resolve_stack_dir
  case "$which" in
    kafka) candidates=("$(out_file kafka)" "$(kafka_log)") ;;
    engine) candidates=("$(out_file engine)" "$(engine_log)") ;;
    all) candidates=("$(out_file kafka)" "$(kafka_log)" "$(out_file engine)" "$(engine_log)") ;;
  esac
  show_logs "$follow" "$n" "$which" "${candidates[@]}"
}

cmd_kafka_cli() {
  [ $# -gt 0 ] || die "usage: $0 kafka-cli TOOL [ARGS...] (e.g. topics --bootstrap-server $HOST:$KAFKA_PORT --list)"
  resolve_stack_dir
  kafka_cli "$@"
}

main() {
  local cmd=${1:-help}
  [ $# -gt 0 ] && shift
  case "$cmd" in
    up) cmd_up "$@" ;;
    down|stop) cmd_down "$@" ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    env) cmd_env ;;
    kafka-cli) cmd_kafka_cli "$@" ;;
    clean) cmd_clean ;;
    help|-h|--help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
