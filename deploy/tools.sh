# Tools the deploy checks and the local monitoring build for themselves, sourced by
# deploy/lint.sh and deploy/local/run.sh (from the repository root; the caller defines
# fail and step).
#
#   helm and the Python venv  under .tools/ (git-ignored; override with CITYPOP_TOOLS_DIR)
#   promtool, prometheus      built once per version with `go install` under
#                             ~/.cache/citypop/tools/ (override with CITYPOP_CACHE_DIR),
#                             outside the clone, so a fresh clone does not rebuild them
# shellcheck shell=bash

helm_version=v3.22.0
# Prometheus 3.16's Go module is tagged v0.316.0; promtool and prometheus come from it.
prometheus_version=v0.316.0

tools=${CITYPOP_TOOLS_DIR:-$PWD/.tools}
cache=${CITYPOP_CACHE_DIR:-$HOME/.cache/citypop}
promtool=$cache/tools/promtool-$prometheus_version/promtool
prometheus=$cache/tools/prometheus-$prometheus_version/prometheus
# Jaeger v2's Go module is tagged v1.x (cmd/jaeger is the v2 all-in-one).
jaeger_version=v1.75.0
jaeger=$cache/tools/jaeger-$jaeger_version/jaeger

install_python_tools() {
  local venv=$tools/venv requirements=deploy/requirements.txt stamp
  stamp=$(sha256sum "$requirements" | cut -d' ' -f1)
  if [[ -x $venv/bin/python && -f $venv/.requirements && $(<"$venv/.requirements") == "$stamp" ]]; then
    return
  fi
  step "installing Python tools into $venv"
  if [[ ! -x $venv/bin/python ]]; then
    if ! python3 -m venv "$venv" 2>/dev/null; then
      # Debian's own python3 ships venv separately.
      rm -rf "$venv"
      if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null \
          || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null; }
        python3 -m venv "$venv"
      else
        fail "python3 -m venv failed: install python3-venv (Debian/Ubuntu) and retry"
      fi
    fi
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
  echo "$stamp" >"$venv/.requirements"
}

install_helm() {
  local helm=$tools/bin/helm
  if [[ -x $helm && $("$helm" version --template '{{.Version}}' 2>/dev/null) == "$helm_version" ]]; then
    return
  fi
  command -v go >/dev/null || fail "go is needed to install helm ($helm_version)"
  step "building helm $helm_version with go install (once; a few minutes)"
  mkdir -p "$tools/bin"
  # The same -X flags as helm's own Makefile: its version, and the Kubernetes version
  # `helm template` assumes without --kube-version.
  GOBIN=$tools/bin GOFLAGS=-buildvcs=false go install \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version \
      -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=37 \
      -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=37" \
    "helm.sh/helm/v3/cmd/helm@$helm_version"
}

# install_go_tool <binary path> <command>: the Prometheus module's command, once.
install_go_tool() {
  [[ -x $1 ]] && return
  command -v go >/dev/null || fail "go is needed to install $2 ($prometheus_version)"
  step "building $2 $prometheus_version with go install (once; a few minutes)"
  # nice: a Go build takes every core, and CI machines are shared.
  GOBIN=$(dirname "$1") GOFLAGS=-buildvcs=false nice go install \
    "github.com/prometheus/prometheus/cmd/$2@$prometheus_version"
}

# Jaeger, for the tracing e2e test, the bench's --tracing on and CITYPOP_TRACING=jaeger.
# `go install jaeger@version` refuses the module (its go.mod has replace directives),
# so a throw-away tools module resolves it and `go build` builds the command from it.
# Built from the module proxy, its web UI is a placeholder page; the query API works.
install_jaeger() {
  [[ -x $jaeger ]] && return
  command -v go >/dev/null || fail "go is needed to install jaeger ($jaeger_version)"
  step "building jaeger $jaeger_version with go build (once; about 4 minutes)"
  local dir work
  dir=$(dirname "$jaeger")
  work=$(mktemp -d)
  mkdir -p "$dir"
  (
    cd "$work" &&
      go mod init citypop-tools/jaeger >/dev/null 2>&1 &&
      GOFLAGS=-buildvcs=false go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$jaeger_version" &&
      GOFLAGS=-buildvcs=false nice go build -o "$work/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger
  ) || { rm -rf "$work"; fail "building jaeger $jaeger_version failed"; }
  # Moved into place only when complete, so an interrupted build is redone.
  mv "$work/jaeger" "$jaeger"
  rm -rf "$work"
}

install_promtool() { install_go_tool "$promtool" promtool; }
install_prometheus() { install_go_tool "$prometheus" prometheus; }

# render_rules <file>: the chart's alert rules, rendered with the production values
# (release and namespace "citypop"), as a rule file Prometheus and promtool load.
render_rules() {
  install_python_tools
  install_helm
  "$tools/bin/helm" template citypop deploy/helm/citypop --namespace citypop \
    -f deploy/helm/citypop/ci/production-values.yaml --show-only templates/prometheusrule.yaml |
    "$tools/venv/bin/python" deploy/prometheus/rules.py extract >"$1"
}
