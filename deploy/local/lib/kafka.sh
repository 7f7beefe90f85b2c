# shellcheck shell=bash
# Kafka of deploy/local/stack.sh (one KRaft process, broker and controller) and of
# cluster.sh (a node of several), run from the jars of deploy/local/kafka/pom.xml.
# Sourced, never run.

KAFKA_MAIN=kafka.Kafka
KAFKA_JAVA=""
# The node the functions below work on. stack.sh keeps the defaults: component
# "kafka" with its security listeners (TLS on) and its own cluster id. cluster.sh
# sets them per node (kafka-N): its template, no TLS, one cluster id for all nodes.
KAFKA_COMP=kafka
KAFKA_TEMPLATE=server.properties.template
KAFKA_TLS=on
KAFKA_CLUSTER_ID_FILE=""   # empty: <node dir>/cluster.id

kafka_conf() {
  if [ "$KAFKA_COMP" = kafka ]; then
    printf 'port=%s controller_port=%s sasl_port=%s ssl_port=%s sasl_ssl_port=%s heap=%s auto_create=%s' \
      "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$KAFKA_SASL_PORT" "$KAFKA_SSL_PORT" "$KAFKA_SASL_SSL_PORT" \
      "$KAFKA_HEAP" "$KAFKA_AUTO_CREATE_TOPICS"
  else
    printf 'node_id=%s port=%s controller_port=%s heap=%s' \
      "$KAFKA_NODE_ID" "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$KAFKA_HEAP"
  fi
}
kafka_lib() { printf '%s/lib/kafka' "$CACHE_DIR"; }
kafka_log() { printf '%s/logs/server.log' "$(comp_dir "$KAFKA_COMP")"; }

# Kafka 4.x brokers and tools need Java 17 (class files are version 61).
find_kafka_java() {
  [ -n "$KAFKA_JAVA" ] && return 0
  local home
  home=$(find_java_home 17) ||
    die "no Java 17 or newer found (JAVA_HOME, PATH, /usr/lib/jvm): install one (e.g. apt-get install openjdk-17-jdk-headless) or set JAVA_HOME"
  KAFKA_JAVA=$home/bin/java
}

# Copies the runtime dependencies of deploy/local/kafka/pom.xml into the cache.
# mvn runs only when the lib dir is missing or the pom changed (its hash is kept in
# .pom.sha256). Never called for a running Kafka, whose jars must not change under it.
collect_kafka_classpath() {
  local pom lib stamp hash tmp log started
  pom="$SCRIPT_DIR/kafka/pom.xml"
  lib=$(kafka_lib)
  stamp="$lib/.pom.sha256"
  hash=$(sha256sum "$pom" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ]; then return 0; fi
  say "collecting the Kafka classpath with Maven (first run downloads from Maven Central)..."
  started=$(now)
  mkdir -p "$(dirname "$lib")"
  tmp="$lib.tmp.$$"
  log="$lib.mvn.log"
  rm -rf "$tmp"
  : >"$log"
  maven_copy_dependencies "$pom" "$tmp" "$log" "the Kafka classpath"
  echo "$hash" >"$tmp/.pom.sha256"
  rm -rf "$lib"
  mv "$tmp" "$lib"
  say "Kafka classpath ready ($(find "$lib" -name '*.jar' | wc -l | tr -d ' ') jars, $(( $(now) - started ))s)"
}

# Same GC flags as Kafka's own kafka-run-class.sh.
kafka_jvm_opts() {
  printf '%s\n' "-Xms$KAFKA_HEAP" "-Xmx$KAFKA_HEAP" -server -XX:+UseG1GC \
    -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -Djava.awt.headless=true \
    "-Dkafka.logs.dir=$(comp_dir "$KAFKA_COMP")/logs" \
    "-Dlog4j2.configurationFile=$SCRIPT_DIR/kafka/log4j2.properties"
}

# CLI tools are short-lived: small heap, C1 only, serial GC start fastest.
kafka_tool() {
  find_kafka_java
  "$KAFKA_JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$SCRIPT_DIR/kafka/tools-log4j2.properties" \
    -cp "$(kafka_lib)/*" "$@"
}

# The main class of a Kafka CLI tool by its short name (the name of its kafka-*.sh
# script); any other name is taken as a main class.
kafka_cli_class() {
  case "$1" in
    topics) echo org.apache.kafka.tools.TopicCommand ;;
    console-producer) echo org.apache.kafka.tools.ConsoleProducer ;;
    console-consumer) echo org.apache.kafka.tools.consumer.ConsoleConsumer ;;
    consumer-groups) echo org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
    api-versions) echo org.apache.kafka.tools.BrokerApiVersionsCommand ;;
    metadata-quorum) echo org.apache.kafka.tools.MetadataQuorumCommand ;;
    configs) echo org.apache.kafka.tools.ConfigCommand ;;
    *) echo "$1" ;;
  esac
}

# kafka_cli TOOL [ARGS...]: runs a CLI tool by its short name or main class.
kafka_cli() {
  [ -d "$(kafka_lib)" ] || die "no Kafka classpath yet; run '$0 up' first"
  local tool=$1; shift
  kafka_tool "$(kafka_cli_class "$tool")" "$@"
}

# Rewritten on every start so that changed settings apply; the data dir keeps the
# cluster id and node id it was formatted with.
# shellcheck disable=SC2034 # KAFKA_DIR, KAFKA_KEYSTORE: read by render
write_kafka_config() {
  local KAFKA_DIR KAFKA_KEYSTORE=""
  KAFKA_DIR=$(comp_dir "$KAFKA_COMP")
  if [ "$KAFKA_TLS" = on ]; then
    ensure_cert kafka
    # Kafka's PEM keystore is one file: the private key, then the certificate chain.
    KAFKA_KEYSTORE=$KAFKA_DIR/keystore.pem
    cat "$(tls_dir)/kafka.key" "$(tls_dir)/kafka.pem" "$(tls_dir)/ca.pem" >"$KAFKA_KEYSTORE"
    chmod 600 "$KAFKA_KEYSTORE"
  fi
  render "$SCRIPT_DIR/kafka/$KAFKA_TEMPLATE" "$KAFKA_DIR/server.properties"
}

format_kafka_storage() {
  local dir cluster_id id_file
  dir=$(comp_dir "$KAFKA_COMP")
  id_file=${KAFKA_CLUSTER_ID_FILE:-$dir/cluster.id}
  [ -f "$dir/data/meta.properties" ] && return 0
  if [ -s "$id_file" ]; then
    cluster_id=$(cat "$id_file")
  else
    cluster_id=$(kafka_tool kafka.tools.StorageTool random-uuid) || die "kafka StorageTool random-uuid failed"
    echo "$cluster_id" >"$id_file"
  fi
  say "formatting Kafka storage (cluster id $cluster_id)"
  # -g (--ignore-formatted): harmless if a previous attempt got half way.
  kafka_tool kafka.tools.StorageTool format -g -t "$cluster_id" -c "$dir/server.properties" \
    >"$dir/format.log" 2>&1 || { cat "$dir/format.log" >&2; die "formatting Kafka storage failed"; }
}

start_kafka() {
  local dir opts=() line comp=$KAFKA_COMP
  dir=$(comp_dir "$comp")
  mkdir -p "$dir/data" "$dir/logs"
  find_kafka_java
  write_kafka_config
  format_kafka_storage
  if [ "$KAFKA_TLS" = on ]; then
    say "starting Kafka on $HOST:$KAFKA_PORT (SASL $KAFKA_SASL_PORT, SSL $KAFKA_SSL_PORT, SASL_SSL $KAFKA_SASL_SSL_PORT, controller $KAFKA_CONTROLLER_PORT, heap $KAFKA_HEAP)"
  else
    say "starting Kafka$(node_label "$comp") on $HOST:$KAFKA_PORT (controller $KAFKA_CONTROLLER_PORT, heap $KAFKA_HEAP)"
  fi
  while IFS= read -r line; do opts+=("$line"); done < <(kafka_jvm_opts)
  mark_log "$(kafka_log)"
  launch "$(pid_file "$comp")" "$(out_file "$comp")" "$dir" "$KAFKA_JAVA" "${opts[@]}" "$(marker "$comp")" \
    -cp "$(kafka_lib)/*" "$KAFKA_MAIN" "$dir/server.properties"
  write_running_conf "$comp" "$(kafka_conf)"
}

# Ready = the broker answers a metadata request (list topics) through the real
# admin client, not merely an open port.
kafka_ready() {
  local port=$1
  port_open "$port" || return 1
  kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$HOST:$port" \
    --command-config "$SCRIPT_DIR/kafka/cli.properties" --list >/dev/null 2>&1
}

# wait_kafka DEADLINE [READY]: waits until the command READY PORT (default
# kafka_ready) succeeds for the node KAFKA_COMP.
wait_kafka() {
  local deadline=$1 ready=${2:-kafka_ready} comp=$KAFKA_COMP port pid
  port=$(conf_value "$(running_conf "$comp")" port); port=${port:-$KAFKA_PORT}
  while :; do
    pid=$(running_pid "$comp")
    if [ -z "$pid" ]; then
      show_log_tail "$(out_file "$comp")" "$(kafka_log)"
      die "Kafka$(node_label "$comp") exited during startup (logs above; more with: $0 logs ${comp/-/ })"
    fi
    if "$ready" "$port"; then
      say "Kafka$(node_label "$comp") ready on $HOST:$port (pid $pid)"
      return 0
    fi
    if [ "$(now)" -ge "$deadline" ]; then
      show_log_tail "$(out_file "$comp")" "$(kafka_log)"
      die "Kafka$(node_label "$comp") (pid $pid) not ready after ${START_TIMEOUT}s; it is left running, '$0 down' stops it"
    fi
    sleep 1
  done
}

# The ids of the brokers in the cluster's metadata (the unfenced ones: registered
# with the quorum and caught up), as the broker at PORT sees them, one a line.
kafka_broker_ids() {
  port_open "$1" || return 1
  kafka_tool org.apache.kafka.tools.BrokerApiVersionsCommand --bootstrap-server "$HOST:$1" \
    --command-config "$SCRIPT_DIR/kafka/cli.properties" 2>/dev/null |
    sed -n 's/^[^ ]* (id: \([0-9][0-9]*\) rack.*/\1/p' | sort -n
}

kafka_endpoints() {
  local conf
  conf=$(running_conf kafka)
  echo "KAFKA_BOOTSTRAP_SERVERS=$HOST:$(conf_value "$conf" port)"
  echo "KAFKA_SASL_BOOTSTRAP_SERVERS=$HOST:$(conf_value "$conf" sasl_port)"
  # A Kafka started before the TLS listeners existed has none: say nothing rather
  # than hand out a port nobody listens on.
  if [ -n "$(conf_value "$conf" ssl_port)" ]; then
    echo "KAFKA_SSL_BOOTSTRAP_SERVERS=$HOST:$(conf_value "$conf" ssl_port)"
    echo "KAFKA_SASL_SSL_BOOTSTRAP_SERVERS=$HOST:$(conf_value "$conf" sasl_ssl_port)"
    echo "KAFKA_SSL_CA_LOCATION=$(tls_dir)/ca.pem"
  fi
}
