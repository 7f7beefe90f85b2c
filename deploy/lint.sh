#!/usr/bin/env bash
# `make lint-deploy`: validates the deployment artifacts without Docker or a cluster.
#
#   - deploy/docker/Dockerfile       hadolint
#   - docker-compose.yml             the Compose Specification's JSON schema, plus checks
#                                    of profiles, healthchecks and depends_on (pytest)
#   - deploy/helm/citypop            helm lint --strict and helm template | kubernetes-validate
#                                    --strict, for the default values and every
#                                    ci/*-values.yaml, against two Kubernetes versions;
#                                    then assertions on the rendered production values (pytest)
#   - deploy/examples, deploy/grafana  parse and content checks (pytest)
#   - every shell script             shellcheck (the *.sh files and .ci/run)
#   - the chart's alert rules        promtool check rules on the rules rendered with
#                                    ci/production-values.yaml, and promtool test rules
#                                    with deploy/prometheus/rules-test.yml, which must
#                                    test every alert firing and quiet
#
# It installs its own tools, idempotently, under .tools/ (git-ignored, override with
# CITYPOP_TOOLS_DIR): helm from source with `go install`, and a Python venv with
# kubernetes-validate, jsonschema, PyYAML, pytest, hadolint and shellcheck
# (deploy/requirements.txt). promtool is built once per version with `go install`
# into ~/.cache/citypop/tools/ (override with CITYPOP_CACHE_DIR), outside the clone, so
# that a fresh clone does not rebuild it.
# The Compose schema is read from ../shared/schemas/compose-spec.json next to the
# repository (override with CITYPOP_COMPOSE_SCHEMA).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# Kubernetes versions the rendered manifests must be valid for: the chart's lowest
# (Chart.yaml kubeVersion) and the newest kubernetes-validate bundles.
read -r -a kube_versions <<<"${CITYPOP_KUBE_VERSIONS:-1.30.0 1.37.0}"
# Kinds from CRDs: kubernetes-validate has no schema for them and may only warn.
crd_kinds='ServiceMonitor|PrometheusRule|ScaledObject|Kafka|KafkaNodePool|KafkaTopic|KafkaUser|Elasticsearch'

chart=deploy/helm/citypop
compose_schema=${CITYPOP_COMPOSE_SCHEMA:-$(dirname "$root")/shared/schemas/compose-spec.json}

fail() { echo "lint-deploy: $*" >&2; exit 1; }
step() { echo "==> $*"; }

# shellcheck source=deploy/tools.sh
. deploy/tools.sh

[[ -f $compose_schema ]] || fail "the Compose Specification schema is missing: $compose_schema
(it lives in shared/schemas/ next to the repository; set CITYPOP_COMPOSE_SCHEMA to its path)"

install_python_tools
install_helm
install_promtool
export PATH=$tools/bin:$tools/venv/bin:$PATH
export CITYPOP_HELM=$tools/bin/helm CITYPOP_COMPOSE_SCHEMA=$compose_schema
export CITYPOP_KUBE_VERSION=${kube_versions[-1]}
# No __pycache__ in the work tree.
export PYTHONDONTWRITEBYTECODE=1

# --- Shell scripts --------------------------------------------------------------

step "shellcheck on every shell script"
mapfile -t scripts < <(git ls-files '*.sh' .ci/run)
# -x follows `source`d files, so stack.sh's helpers are checked with its settings.
shellcheck -x "${scripts[@]}"

# --- Dockerfile ---------------------------------------------------------------

step "hadolint deploy/docker/Dockerfile"
hadolint --failure-threshold warning deploy/docker/Dockerfile

# --- Helm ---------------------------------------------------------------------

values_files=("" "$chart"/ci/*-values.yaml)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# kubernetes-validate exits 0 when it has no schema for a kind; accept that only for
# the CRD kinds above, so that a misspelt core apiVersion cannot pass unnoticed.
validate() { # file label
  local out status=0
  for kube in "${kube_versions[@]}"; do
    out=$(kubernetes-validate --strict --quiet -k "$kube" "$1" 2>&1) || status=1
    if grep -Ev "^WARN .*Couldn't find schema for kind ($crd_kinds) with" <<<"$out" | grep -q .; then
      echo "$out" >&2
      status=1
    fi
    ((status == 0)) || fail "$2 is not valid for Kubernetes $kube"
  done
}

for values in "${values_files[@]}"; do
  label=${values:-"default values"}
  args=(--kube-version "$CITYPOP_KUBE_VERSION")
  [[ -n $values ]] && args+=(-f "$values")
  step "helm lint --strict ($label)"
  helm lint --strict --quiet "${args[@]}" "$chart"
  step "helm template | kubernetes-validate --strict, Kubernetes ${kube_versions[*]} ($label)"
  rendered=$work/$(basename "${values:-default}" .yaml).yaml
  helm template citypop "$chart" --namespace citypop "${args[@]}" >"$rendered"
  validate "$rendered" "$label"
done

step "kubernetes-validate --strict deploy/examples"
for example in deploy/examples/*.yaml; do
  validate "$example" "$example"
done

# --- Alert rules -----------------------------------------------------------------

step "promtool check rules and test rules (the chart's alerts, production values)"
# rules-test.yml names the rule file citypop-rules.yml, next to itself.
cp deploy/prometheus/rules-test.yml "$work/rules-test.yml"
python deploy/prometheus/rules.py extract <"$work/production-values.yaml" >"$work/citypop-rules.yml"
"$promtool" check rules "$work/citypop-rules.yml"
python deploy/prometheus/rules.py coverage "$work/citypop-rules.yml" "$work/rules-test.yml"
"$promtool" test rules "$work/rules-test.yml"

# --- Compose, chart assertions, examples, dashboard -----------------------------

step "pytest deploy/tests"
python -m pytest -q -p no:cacheprovider deploy/tests
