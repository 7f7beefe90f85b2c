# CITYPOP_MONITORING=prometheus for `make run`: a Prometheus beside the services, the
# way a cluster's would see them. Sourced by deploy/local/run.sh from the repository
# root, after deploy/tools.sh.
#
# It scrapes producer-api and the indexer every 5 s as the jobs the chart's
# ServiceMonitors produce (job citypop-producer-api and citypop-indexer, namespace
# citypop), so the chart's alert rules, rendered with the production values and loaded
# here, and the Grafana dashboard's queries apply unchanged. Data lives under
# <stack dir>/prometheus and is dropped at each start.
# shellcheck shell=bash
# shellcheck disable=SC2154 # promtool, prometheus, render_rules: from deploy/tools.sh

MONITORING_LISTEN=${CITYPOP_PROMETHEUS_LISTEN:-127.0.0.1:9090}

# monitoring_start <producer-api host:port> <indexer host:port> <dir>; prints nothing,
# sets monitoring_pid.
monitoring_start() {
  local api=$1 indexer=$2 dir=$3
  install_prometheus
  rm -rf "$dir"
  mkdir -p "$dir/data"
  render_rules "$dir/citypop-rules.yml"
  cat >"$dir/prometheus.yml" <<YAML
global:
  scrape_interval: 5s
  evaluation_interval: 5s
rule_files:
  - citypop-rules.yml
scrape_configs:
  - job_name: citypop-producer-api
    static_configs:
      - targets: ["$api"]
        labels: {namespace: citypop, pod: citypop-producer-api-local}
  - job_name: citypop-indexer
    static_configs:
      - targets: ["$indexer"]
        labels: {namespace: citypop, pod: citypop-indexer-local}
YAML
  "$promtool" check config "$dir/prometheus.yml" >/dev/null
  "$prometheus" --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
    --web.listen-address="$MONITORING_LISTEN" >"$dir/prometheus.log" 2>&1 &
  monitoring_pid=$!
  local _
  for _ in $(seq 1 60); do
    if curl -fs "http://$MONITORING_LISTEN/-/ready" >/dev/null 2>&1; then return; fi
    kill -0 "$monitoring_pid" 2>/dev/null || fail "prometheus exited; see $dir/prometheus.log"
    sleep 0.5
  done
  fail "prometheus not ready at http://$MONITORING_LISTEN after 30 s; see $dir/prometheus.log"
}
