# shellcheck shell=bash
# shellcheck disable=SC2153 # ENGINE, ENGINE_VERSION, ...: settings of stack.sh
# OpenSearch's pull-based ingestion (the ingestion-kafka plugin) for
# deploy/local/stack.sh, on with CITYPOP_OPENSEARCH_PULL_INGESTION=on. Maven Central
# publishes the plugin's jar but no plugin zip an integ-test-zip could install, so
# the stack collects the jars with Maven (cached per OpenSearch version) and writes
# the plugin directory itself. The benchmark's P7 compares citypop's indexer with it.
# Sourced, never run.

PULL_INGESTION_PLUGIN=ingestion-kafka

pull_ingestion_lib() { printf '%s/plugins/%s-%s' "$CACHE_DIR" "$PULL_INGESTION_PLUGIN" "$1"; }

# The plugin exists from OpenSearch 3.0 on.
check_pull_ingestion_setting() {
  case "$PULL_INGESTION" in
    off) ;;
    on) [ "$ENGINE" = opensearch ] && [ "${ENGINE_VERSION%%.*}" -ge 3 ] ||
          die "CITYPOP_OPENSEARCH_PULL_INGESTION=on needs OpenSearch 3 or newer, not $ENGINE $ENGINE_VERSION" ;;
    *) die "CITYPOP_OPENSEARCH_PULL_INGESTION must be on or off, not '$PULL_INGESTION'" ;;
  esac
}

# The plugin's jars and those of its Kafka client, collected once per version into
# the cache: the plugin's pom names kafka-clients, snappy-java and slf4j-api (and
# excludes their dependencies); kafka-clients' own pom adds the other codecs.
collect_pull_ingestion_jars() {
  local version=$1 lib tmp log clients present started
  lib=$(pull_ingestion_lib "$version")
  [ -f "$lib/.complete" ] && return 0
  say "collecting the $PULL_INGESTION_PLUGIN plugin $version with Maven (once)..."
  started=$(now)
  mkdir -p "$(dirname "$lib")"
  tmp="$lib.tmp.$$"
  log="$lib.mvn.log"
  rm -rf "$tmp"
  : >"$log"
  maven_copy_dependencies "$SCRIPT_DIR/engine/ingestion-kafka/pom.xml" "$tmp" "$log" \
    "org.opensearch.plugin:$PULL_INGESTION_PLUGIN:$version (is it on Maven Central?)" \
    -Dopensearch.version="$version"
  clients=$(find "$tmp" -name 'kafka-clients-*.jar' -printf '%f\n' | sed 's/^kafka-clients-\(.*\)\.jar$/\1/')
  [ -n "$clients" ] || die "the $PULL_INGESTION_PLUGIN $version pom names no kafka-clients; see $log"
  present=$(find "$tmp" -name '*.jar' -printf '%f\n' | jar_artifact | paste -sd, -)
  maven_copy_dependencies "$SCRIPT_DIR/engine/ingestion-kafka/codecs.xml" "$tmp" "$log" \
    "the dependencies of kafka-clients $clients" \
    -Dkafka.clients.version="$clients" -DexcludeArtifactIds="$present"
  touch "$tmp/.complete"
  rm -rf "$lib"
  mv "$tmp" "$lib"
  say "$PULL_INGESTION_PLUGIN $version collected (kafka-clients $clients, $(( $(now) - started ))s)"
}

# kafka-clients-3.9.2.jar -> kafka-clients (one name a line).
jar_artifact() { sed 's/-[0-9][^-]*\(-[A-Za-z0-9]*\)\{0,1\}\.jar$//'; }

# Writes <home>/plugins/ingestion-kafka/ when the setting is on and removes it when
# off: the engine's home is shared by every start of this version in the stack dir.
# The JVM reads plugins only at start, so this runs before it.
apply_pull_ingestion() {
  local home=$1 dir lib jar name PULL_INGESTION_JAVA
  dir=$home/plugins/$PULL_INGESTION_PLUGIN
  rm -rf "$dir"
  [ "$PULL_INGESTION" = on ] || return 0
  collect_pull_ingestion_jars "$ENGINE_VERSION"
  lib=$(pull_ingestion_lib "$ENGINE_VERSION")
  mkdir -p "$dir"
  for jar in "$lib"/*.jar; do
    name=$(basename "$jar" | jar_artifact)
    # A second copy of a jar the server has is refused as jar hell (zstd-jni in 3.8.0).
    if find "$home/lib" -maxdepth 1 -name "$name-[0-9]*.jar" | grep -q .; then continue; fi
    cp "$jar" "$dir/"
  done
  # shellcheck disable=SC2034 # read by render
  PULL_INGESTION_JAVA=$(engine_java_min "$ENGINE" "$ENGINE_VERSION")
  render "$SCRIPT_DIR/engine/ingestion-kafka/plugin-descriptor.properties.template" "$dir/plugin-descriptor.properties"
  cp "$SCRIPT_DIR/engine/ingestion-kafka/plugin-security.policy" "$dir/"
}

# After start: the plugin is loaded (an engine that skipped it would serve every
# other test and fail only the benchmark, much later).
check_pull_ingestion_loaded() {
  local port=$1
  [ "$PULL_INGESTION" = on ] || return 0
  curl_engine "$port" off '/_cat/plugins?h=component' | grep -qx "$PULL_INGESTION_PLUGIN" ||
    die "$ENGINE started without the $PULL_INGESTION_PLUGIN plugin; see its log: $0 logs engine"
  say "pull-based ingestion: plugin $PULL_INGESTION_PLUGIN loaded"
}
