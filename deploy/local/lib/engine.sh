# shellcheck shell=bash
# shellcheck disable=SC2153 # ENGINE, ENGINE_VERSION, ...: settings of stack.sh
# The search engine of deploy/local/stack.sh (one node) and cluster.sh (a node of
# several): Elasticsearch or OpenSearch from the integ-test-zip distribution Maven
# Central publishes (the real server with its core modules), unzipped under
# <stack dir>/<engine>-<version> and started with its own bin/ script. Sourced,
# never run.

ENGINE_JAVA_HOME=""
# The node the functions below work on. stack.sh keeps the defaults: component
# "engine", whose config, data and logs live in the unzipped home. cluster.sh sets
# them per node (engine-N), each node with a config, data and logs dir of its own
# beside one shared home.
ENGINE_COMP=engine
CLUSTER_NAME=citypop-local
# shellcheck disable=SC2034 # read by render for the templates
ENGINE_NODE_NAME=citypop-local-1 ENGINE_DISCOVERY="discovery.type: single-node"
# The health statuses that count as ready. A node of a cluster is ready as soon as it
# has joined one (any status): an index left red by another node's fault must not
# keep a restarted node from counting as up.
ENGINE_READY_STATUSES="green yellow"
# Elasticsearch refuses to run as root; when the stack runs as root (CI does), the
# engine runs as this system user, which owns its data and logs.
ENGINE_OS_USER=citypop-engine
# The file-realm users of CITYPOP_ENGINE_SECURITY=on (loopback only; these
# passwords guard nothing but test data). Roles: deploy/local/engine/roles.yml.
ENGINE_ADMIN_USER=citypop-admin
ENGINE_ADMIN_PASSWORD=citypop-admin-secret
ENGINE_USERS="citypop-admin:citypop-admin-secret:superuser
citypop-indexer:citypop-indexer-secret:citypop_indexer
citypop-reader:citypop-reader-secret:citypop_reader
citypop-initial-only:citypop-initial-only-secret:citypop_initial_index_only"

# The newest release of each line that Maven Central publishes as an integ-test-zip
# and that passed the end-to-end tests here.
engine_default_version() {
  case "$1" in
    elasticsearch) echo 9.5.4 ;;
    opensearch) echo 3.8.0 ;;
  esac
}

# Elasticsearch 9 and OpenSearch 3 need Java 21; the earlier lines run on 17.
engine_java_min() {
  case "$1:${2%%.*}" in
    elasticsearch:[0-8]|opensearch:[0-2]) echo 17 ;;
    *) echo 21 ;;
  esac
}

engine_artifact() {
  case "$1" in
    elasticsearch) echo "org.elasticsearch.distribution.integ-test-zip:elasticsearch:$2:zip" ;;
    opensearch) echo "org.opensearch.distribution.integ-test-zip:opensearch:$2:zip" ;;
  esac
}

engine_conf() {
  printf 'engine=%s version=%s port=%s transport_port=%s security=%s heap=%s' \
    "$ENGINE" "$ENGINE_VERSION" "$ENGINE_PORT" "$ENGINE_TRANSPORT_PORT" "$ENGINE_SECURITY" "$ENGINE_HEAP"
  # Only when on, so that a stack started before this setting existed still matches.
  if [ "$PULL_INGESTION" = on ]; then printf ' pull_ingestion=on'; fi
}
engine_home() { printf '%s/%s-%s' "$(engine_base)" "$1" "$2"; }
engine_zip() { printf '%s/dist/%s-%s.zip' "$CACHE_DIR" "$1" "$2"; }
# Where the node's config/, data/ and logs/ live: the home itself for stack.sh's
# one node (as before nodes existed, so that its data survives an update), else
# the node's own run dir.
engine_node_dir() {
  if [ "$ENGINE_COMP" = engine ]; then engine_home "$1" "$2"; else comp_dir "$ENGINE_COMP"; fi
}
# The server log of the running (or last started) engine.
engine_log() {
  local conf engine version
  conf=$(running_conf "$ENGINE_COMP")
  engine=$(conf_value "$conf" engine); engine=${engine:-$ENGINE}
  version=$(conf_value "$conf" version); version=${version:-$ENGINE_VERSION}
  printf '%s/logs/%s.log' "$(engine_node_dir "$engine" "$version")" "$CLUSTER_NAME"
}

# The distribution, downloaded once into the cache with Maven (so a mirror in the
# user's settings.xml applies), then unzipped once per version.
install_engine() {
  local zip home tmp log artifact
  zip=$(engine_zip "$ENGINE" "$ENGINE_VERSION")
  home=$(engine_home "$ENGINE" "$ENGINE_VERSION")
  if [ ! -s "$zip" ]; then
    artifact=$(engine_artifact "$ENGINE" "$ENGINE_VERSION")
    say "downloading $artifact from Maven Central (about 130 MB, once)..."
    mkdir -p "$(dirname "$zip")"
    log="$zip.mvn.log"
    mvn -q -B org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy -Dartifact="$artifact" \
      -Dmdep.stripVersion=false -DoutputDirectory="$(dirname "$zip")" >"$log" 2>&1 || {
        tail -n 20 "$log" >&2
        die "mvn could not download $artifact (is $ENGINE $ENGINE_VERSION published as an integ-test-zip?); full output: $log"
      }
    [ -s "$zip" ] || die "mvn did not leave $zip behind; see $log"
  fi
  [ -x "$home/bin/$ENGINE" ] && return 0
  command -v unzip >/dev/null 2>&1 || die "unzip not found: install unzip (it unpacks the engine)"
  tmp="$home.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  unzip -q "$zip" -d "$tmp" || die "could not unzip $zip"
  rm -rf "$home"
  mv "$tmp/$ENGINE-$ENGINE_VERSION" "$home" || die "$zip does not hold $ENGINE-$ENGINE_VERSION/"
  rm -rf "$tmp"
}

find_engine_java() {
  local min
  min=$(engine_java_min "$ENGINE" "$ENGINE_VERSION")
  ENGINE_JAVA_HOME=$(find_java_home "$min" "${CITYPOP_ENGINE_JAVA_HOME:-}") ||
    die "$ENGINE $ENGINE_VERSION needs Java $min or newer and none was found (JAVA_HOME, PATH, /usr/lib/jvm/*): install one (e.g. a Temurin $min+ JDK) or set CITYPOP_ENGINE_JAVA_HOME"
}

as_root() { [ "$(id -u)" = 0 ]; }

# Runs a command as the engine's user: ourselves, or ENGINE_OS_USER when root.
as_engine_user() {
  if as_root; then runuser -u "$ENGINE_OS_USER" -- "$@"; else "$@"; fi
}

# When root: the system user exists, and the engine's files live where it can enter:
# the stack dir, or, when that sits below a directory closed to other users (a clone
# under /root), a directory of the stack's own under /var/tmp.
choose_engine_base() {
  as_root || return 0
  if ! id "$ENGINE_OS_USER" >/dev/null 2>&1; then
    say "creating the system user $ENGINE_OS_USER to run $ENGINE (it refuses to run as root)"
    useradd -r -M -d /nonexistent -s /usr/sbin/nologin "$ENGINE_OS_USER" ||
      die "could not create the user $ENGINE_OS_USER"
  fi
  [ -s "$STACK_DIR/engine.base" ] && return 0
  runuser -u "$ENGINE_OS_USER" -- test -x "$STACK_DIR" && return 0
  local base
  base=/var/tmp/citypop-engine-$(printf '%s' "$STACK_DIR" | sha256sum | cut -c1-12)
  mkdir -p "$base"
  chmod 755 "$base"
  echo "$base" >"$STACK_DIR/engine.base"
  say "$ENGINE_OS_USER cannot enter $STACK_DIR: the engine's files go to $base"
}

# When root: the engine's user owns its home and the node's run dir.
prepare_engine_user() {
  as_root || return 0
  chown -R "$ENGINE_OS_USER:" "$1" "$(comp_dir "$ENGINE_COMP")"
  runuser -u "$ENGINE_OS_USER" -- test -w "$2/config" ||
    die "$ENGINE_OS_USER cannot write $2/config"
}

# write_engine_config HOME NODE_DIR: the node's config dir, its yml rendered from
# the template. A node apart from the home starts from a copy of the home's config
# (jvm.options, log4j2.properties), since the engine writes its keystore there.
# The template's @NAME@ placeholders are these locals, read by render.
# shellcheck disable=SC2034
write_engine_config() {
  local home=$1 node=$2 ENGINE_DATA ENGINE_LOGS ENGINE_SECURITY_SETTINGS
  ENGINE_DATA=$node/data
  ENGINE_LOGS=$node/logs
  mkdir -p "$ENGINE_DATA" "$ENGINE_LOGS"
  if [ ! -d "$node/config" ]; then cp -R "$home/config" "$node/config"; fi
  if [ "$ENGINE" = opensearch ]; then
    render "$SCRIPT_DIR/engine/opensearch.yml.template" "$node/config/opensearch.yml"
    return 0
  fi
  if [ "$ENGINE_SECURITY" = on ]; then
    ENGINE_SECURITY_SETTINGS=$(<"$SCRIPT_DIR/engine/elasticsearch-security.yml")
    ensure_cert engine
    cp "$(tls_dir)/ca.pem" "$(tls_dir)/engine.pem" "$(tls_dir)/engine.key" "$SCRIPT_DIR/engine/roles.yml" "$node/config/"
  else
    ENGINE_SECURITY_SETTINGS="xpack.security.enabled: false"
  fi
  render "$SCRIPT_DIR/engine/elasticsearch.yml.template" "$node/config/elasticsearch.yml"
}

# The file-realm users, added once (each elasticsearch-users run starts a JVM).
# Arguments: HOME NODE_DIR.
ensure_engine_users() {
  local home=$1 node=$2 name password role
  while IFS=: read -r name password role; do
    grep -q "^$name:" "$node/config/users" 2>/dev/null && continue
    as_engine_user env ES_JAVA_HOME="$ENGINE_JAVA_HOME" ES_PATH_CONF="$node/config" \
      "$home/bin/elasticsearch-users" useradd "$name" -p "$password" -r "$role" >/dev/null ||
      die "elasticsearch-users could not add $name"
  done <<<"$ENGINE_USERS"
}

start_engine() {
  local home run opts node comp=$ENGINE_COMP
  find_engine_java
  choose_engine_base
  home=$(engine_home "$ENGINE" "$ENGINE_VERSION")
  node=$(engine_node_dir "$ENGINE" "$ENGINE_VERSION")
  run=$(comp_dir "$comp")
  install_engine
  mkdir -p "$run"
  write_engine_config "$home" "$node"
  if [ "$ENGINE" = opensearch ]; then apply_pull_ingestion "$home"; fi
  prepare_engine_user "$home" "$node"
  if [ "$ENGINE_SECURITY" = on ]; then ensure_engine_users "$home" "$node"; fi
  say "starting $ENGINE $ENGINE_VERSION$(node_label "$ENGINE_COMP") on $(engine_scheme)://$HOST:$ENGINE_PORT (transport $ENGINE_TRANSPORT_PORT, heap $ENGINE_HEAP, Java from $ENGINE_JAVA_HOME)"
  opts="-Xms$ENGINE_HEAP -Xmx$ENGINE_HEAP $(marker "$comp")"
  rm -f "$(pid_file "$comp")"
  mark_log "$(engine_log)"
  [ -f "$(out_file "$comp")" ] && mv -f "$(out_file "$comp")" "$(out_file "$comp").prev"
  # -d: the engine daemonizes and writes its own pid file; its launcher runs in the
  # background here so that Kafka and the engine start at the same time.
  (
    cd "$home" || exit 1
    if [ "$ENGINE" = opensearch ]; then
      nohup setsid "$SCRIPT_DIR/lib/run-as.sh" "$ENGINE_OS_USER" env OPENSEARCH_JAVA_HOME="$ENGINE_JAVA_HOME" \
        OPENSEARCH_JAVA_OPTS="$opts" OPENSEARCH_PATH_CONF="$node/config" \
        "$home/bin/opensearch" -d -p "$(pid_file "$comp")" >"$(out_file "$comp")" 2>&1 </dev/null &
    else
      nohup setsid "$SCRIPT_DIR/lib/run-as.sh" "$ENGINE_OS_USER" env ES_JAVA_HOME="$ENGINE_JAVA_HOME" \
        ES_JAVA_OPTS="$opts" ES_PATH_CONF="$node/config" \
        "$home/bin/elasticsearch" -d -p "$(pid_file "$comp")" >"$(out_file "$comp")" 2>&1 </dev/null &
    fi
    echo $! >"$run/launcher.pid"
  )
  write_running_conf "$comp" "$(engine_conf)"
}

engine_scheme() { if [ "$ENGINE_SECURITY" = on ]; then echo https; else echo http; fi; }

# curl_engine PORT SECURITY PATH: a GET to the engine, with the CA and the admin user
# when its security is on. Prints the body; nothing when it does not answer.
curl_engine() {
  local port=$1 security=$2 path=$3
  if [ "$security" = on ]; then
    curl -s -m 5 --cacert "$(tls_dir)/ca.pem" -u "$ENGINE_ADMIN_USER:$ENGINE_ADMIN_PASSWORD" \
      "https://$HOST:$port$path" 2>/dev/null || true
  else
    curl -s -m 5 "http://$HOST:$port$path" 2>/dev/null || true
  fi
}

# Prints green/yellow/red, or nothing when the engine does not answer.
engine_health() {
  curl_engine "$1" "$2" '/_cluster/health?wait_for_status=yellow&timeout=2s' |
    sed -n 's/.*"status":"\([a-z]*\)".*/\1/p'
}

# The OS pid of the node answering on the port (empty if no answer), to make sure
# it is our process and not some other engine listening there.
engine_pid_at() {
  curl_engine "$1" "$2" '/_nodes/_local/process?filter_path=nodes.*.process.id' |
    sed -n 's/.*"id":\([0-9][0-9]*\).*/\1/p'
}

wait_engine() {
  local deadline=$1 comp=$ENGINE_COMP conf port security pid health answering launcher
  conf=$(running_conf "$comp")
  port=$(conf_value "$conf" port); security=$(conf_value "$conf" security)
  launcher=$(cat "$(comp_dir "$comp")/launcher.pid" 2>/dev/null || true)
  while :; do
    pid=$(running_pid "$comp")
    # Alive: the launcher still runs, or the JVM it forked (OpenSearch's -d returns
    # before the JVM writes its pid file).
    if [ -z "$pid" ] && ! { [ -n "$launcher" ] && kill -0 "$launcher" 2>/dev/null; } &&
       [ -z "$(marked_pids "$comp")" ]; then
      show_log_tail "$(out_file "$comp")" "$(engine_log)"
      die "$ENGINE$(node_label "$comp") exited during startup (logs above; more with: $0 logs ${comp/-/ })"
    fi
    health=""
    [ -n "$pid" ] && health=$(engine_health "$port" "$security")
    if [ -n "$health" ] && [[ " $ENGINE_READY_STATUSES " == *" $health "* ]]; then
      answering=$(engine_pid_at "$port" "$security")
      if [ "$answering" = "$pid" ]; then
        say "$ENGINE $ENGINE_VERSION$(node_label "$comp") ready on $(engine_scheme)://$HOST:$port (status $health, pid $pid)"
        check_pull_ingestion_loaded "$port"
        return 0
      elif [ -n "$answering" ]; then
        die "the engine answering on $HOST:$port is process $answering, not ours ($pid); is another engine running there?"
      fi
    fi
    if [ "$(now)" -ge "$deadline" ]; then
      show_log_tail "$(out_file "$comp")" "$(engine_log)"
      die "$ENGINE$(node_label "$comp") (pid ${pid:-none yet}) not ready after ${START_TIMEOUT}s (health: ${health:-no answer}); it is left running, '$0 down' stops it"
    fi
    sleep 1
  done
}

engine_endpoints() {
  local conf security
  conf=$(running_conf engine)
  security=$(conf_value "$conf" security)
  echo "ENGINE_NAME=$(conf_value "$conf" engine)"
  echo "ENGINE_VERSION=$(conf_value "$conf" version)"
  if [ "$security" = on ]; then
    echo "ELASTICSEARCH_URL=https://$HOST:$(conf_value "$conf" port)"
    echo "ELASTICSEARCH_CA_FILE=$(tls_dir)/ca.pem"
    echo "ELASTICSEARCH_USERNAME=$ENGINE_ADMIN_USER"
    echo "ELASTICSEARCH_PASSWORD=$ENGINE_ADMIN_PASSWORD"
  else
    echo "ELASTICSEARCH_URL=http://$HOST:$(conf_value "$conf" port)"
  fi
}
