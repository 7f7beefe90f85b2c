"""The Helm chart, rendered with the production-like values, holds what a production
install needs: Pod Security "restricted", probes, disruption budgets, network
policies, monitoring and alerts. Each test names what is missing when it fails."""

import re

import pytest

from conftest import PRODUCTION_VALUES, RELEASE, Manifests, helm_template, render

PRODUCER = f"{RELEASE}-producer-api"
INDEXER = f"{RELEASE}-indexer"

# Settings each service reads (README.md "Settings").
COMMON_ENV = {
    "CITYPOP_KAFKA_BOOTSTRAP_SERVERS", "CITYPOP_TOPIC", "CITYPOP_ELASTICSEARCH_URL",
    "CITYPOP_INDEX_ALIAS", "CITYPOP_ELASTICSEARCH_TIMEOUT", "CITYPOP_LOG", "CITYPOP_LOG_FORMAT",
    "CITYPOP_OTLP_PROTOCOL", "CITYPOP_TRACE_SAMPLING_RATIO",
}
SECRET_ENV = {
    "CITYPOP_ELASTICSEARCH_USERNAME", "CITYPOP_ELASTICSEARCH_PASSWORD", "CITYPOP_ELASTICSEARCH_API_KEY",
    "CITYPOP_KAFKA_SASL_USERNAME", "CITYPOP_KAFKA_SASL_PASSWORD",
}
PRODUCER_ENV = COMMON_ENV | SECRET_ENV | {
    "CITYPOP_LISTEN", "CITYPOP_PUBLISH_TIMEOUT", "CITYPOP_API_KEYS",
    "CITYPOP_PRODUCER_LINGER", "CITYPOP_PRODUCER_BATCH_BYTES", "CITYPOP_PRODUCER_COMPRESSION",
    "CITYPOP_READ_BATCH_WINDOW", "CITYPOP_READ_BATCH_MAX_IDS", "CITYPOP_CACHE_CONTROL",
    "CITYPOP_READ_CACHE_TTL", "CITYPOP_READ_CACHE_MAX_ENTRIES",
}
INDEXER_ENV = COMMON_ENV | SECRET_ENV | {
    "CITYPOP_HEALTH_LISTEN", "CITYPOP_CONSUMER_GROUP", "CITYPOP_DLQ_TOPIC",
    "CITYPOP_TOPIC_PARTITIONS", "CITYPOP_TOPIC_REPLICATION_FACTOR", "CITYPOP_INDEX_SHARDS",
    "CITYPOP_INDEX_REPLICAS", "CITYPOP_BATCH_MAX_EVENTS", "CITYPOP_BATCH_MAX_BYTES",
    "CITYPOP_BATCH_LINGER", "CITYPOP_BULK_MAX_DOCUMENTS", "CITYPOP_BULK_CONCURRENCY",
    "CITYPOP_RETRY_MIN_DELAY", "CITYPOP_RETRY_MAX_DELAY",
    "CITYPOP_RETRY_MAX_ATTEMPTS", "CITYPOP_COMMIT_INTERVAL", "CITYPOP_SHUTDOWN_GRACE",
}

REQUIRED_ALERTS = {
    # The seed's alerts.
    "CitypopHighErrorRate", "CitypopHighLatency", "CitypopEngineDown", "CitypopPodRestarts",
    # The pipeline's.
    "CitypopConsumerLagHigh", "CitypopDeadLetters", "CitypopIndexerNotReady",
    "CitypopPartitionUnread",
}

KNOWN_METRICS = {
    "http_requests_total", "http_request_duration_seconds_bucket",
    "citypop_publish_duration_seconds_bucket", "citypop_publish_failures_total",
    "citypop_indexer_events_consumed_total", "citypop_indexer_documents_indexed_total",
    "citypop_indexer_retries_total", "citypop_indexer_dead_letters_total",
    "citypop_indexer_bulk_documents_bucket", "citypop_indexer_bulk_duration_seconds_bucket",
    "citypop_indexer_end_to_end_latency_seconds_bucket", "citypop_indexer_consumer_lag",
    "citypop_indexer_committed_offset", "citypop_indexer_ready", "citypop_indexer_topic_recreated",
    "citypop_indexer_partitions_unfetched",
    # From Prometheus itself and kube-state-metrics.
    "up", "kube_pod_container_status_restarts_total",
}


def containers(pod_spec):
    return pod_spec.get("initContainers", []) + pod_spec["containers"]


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


# --- Pod Security "restricted" ----------------------------------------------------


def test_every_pod_meets_pod_security_restricted(production):
    pods = list(production.pod_specs())
    names = {name for name, _, _ in pods}
    assert {f"Deployment/{PRODUCER}", f"Deployment/{INDEXER}", f"Job/{RELEASE}-bootstrap",
            f"CronJob/{RELEASE}-snapshot"} <= names, f"workloads missing, rendered: {sorted(names)}"
    for name, _, pod in pods:
        pod_sc = pod.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, f"{name}: pod securityContext.runAsNonRoot"
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: pod seccompProfile"
        assert pod_sc.get("runAsUser", 0) != 0, f"{name}: runs as root"
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), f"{name}: host namespaces"
        assert pod.get("automountServiceAccountToken") is False, f"{name}: mounts a ServiceAccount token it does not need"
        for volume in pod.get("volumes", []):
            assert "hostPath" not in volume, f"{name}: hostPath volume {volume['name']}"
        for c in containers(pod):
            where = f"{name} container {c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
            assert sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem"
            assert sc.get("privileged", False) is False, f"{where}: privileged"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities.drop [ALL]"
            assert not sc.get("capabilities", {}).get("add"), f"{where}: adds capabilities"
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, f"{where}: runAsNonRoot"
            assert sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type") == "RuntimeDefault", f"{where}: seccomp"
            resources = c.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resource in resources.get(kind, {}), f"{where}: resources.{kind}.{resource}"


def test_development_defaults_are_restricted_too(development):
    for name, _, pod in development.pod_specs():
        for c in containers(pod):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name


def test_images_run_as_the_uid_the_dockerfile_sets(production):
    for name in (PRODUCER, INDEXER):
        pod = production.one("Deployment", name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == 10001, name
        assert pod["securityContext"]["runAsGroup"] == 10001, name


# --- Deployments, probes, settings -----------------------------------------------


@pytest.mark.parametrize("name,port,number", [(PRODUCER, "http", 8080), (INDEXER, "metrics", 8081)])
def test_probes(production, name, port, number):
    (container,) = production.one("Deployment", name)["spec"]["template"]["spec"]["containers"]
    assert {"name": port, "containerPort": number, "protocol": "TCP"} in container["ports"], f"{name}: port {port}"
    expected = {"startupProbe": "/livez", "livenessProbe": "/livez", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        assert probe in container, f"{name}: no {probe}"
        assert container[probe]["httpGet"] == {"path": path, "port": port}, f"{name}: {probe} must GET {path} on {port}"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30, f"{name}: startupProbe allows under 30 s"


def test_services_get_their_settings(production):
    for name, expected in ((PRODUCER, PRODUCER_ENV), (INDEXER, INDEXER_ENV)):
        (container,) = production.one("Deployment", name)["spec"]["template"]["spec"]["containers"]
        env = env_of(container)
        assert expected <= env.keys(), f"{name}: missing {sorted(expected - env.keys())}"
        for variable, entry in env.items():
            if "PASSWORD" in variable or variable in ("CITYPOP_API_KEYS", "CITYPOP_ELASTICSEARCH_API_KEY"):
                assert "value" not in entry, f"{name}: {variable} in plain text"
                assert entry["valueFrom"]["secretKeyRef"]["name"] == "citypop-credentials", f"{name}: {variable} not from the existing Secret"
    producer_env = env_of(production.one("Deployment", PRODUCER)["spec"]["template"]["spec"]["containers"][0])
    assert producer_env["CITYPOP_LISTEN"]["value"].startswith("0.0.0.0:"), "producer-api must listen on all interfaces"
    indexer_env = env_of(production.one("Deployment", INDEXER)["spec"]["template"]["spec"]["containers"][0])
    assert indexer_env["CITYPOP_HEALTH_LISTEN"]["value"].startswith("0.0.0.0:"), "indexer health must listen on all interfaces"
    assert indexer_env["CITYPOP_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"


def test_existing_secret_means_no_chart_secret(production):
    assert not [s for s in production.kind("Secret")], "production values use secrets.existingSecret: the chart must create no Secret"


def test_indexer_replicas_within_partitions(production):
    deployment = production.one("Deployment", INDEXER)
    env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
    partitions = int(env["CITYPOP_TOPIC_PARTITIONS"]["value"])
    assert 2 <= deployment["spec"]["replicas"] <= partitions


def test_indexer_gets_time_to_commit_on_shutdown(production):
    pod = production.one("Deployment", INDEXER)["spec"]["template"]["spec"]
    grace = env_of(pod["containers"][0])["CITYPOP_SHUTDOWN_GRACE"]["value"]
    assert grace.endswith("s") and pod["terminationGracePeriodSeconds"] > int(grace[:-1])


@pytest.mark.parametrize("name", [PRODUCER, INDEXER])
def test_spread_over_nodes_and_zones(production, name):
    pod = production.one("Deployment", name)["spec"]["template"]
    constraints = {c["topologyKey"]: c for c in pod["spec"].get("topologySpreadConstraints", [])}
    assert {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= constraints.keys(), f"{name}: topology spread"
    assert constraints["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    for c in constraints.values():
        assert selects(c["labelSelector"], pod["metadata"]["labels"]), f"{name}: spread selector misses its pods"


def test_services_select_their_pods(production):
    for name, port in ((PRODUCER, "http"), (INDEXER, "metrics")):
        service = production.one("Service", name)
        labels = production.one("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items()), f"{name}: Service selects no pod"
        assert [p["targetPort"] for p in service["spec"]["ports"]] == [port]


# --- Availability -------------------------------------------------------------------


@pytest.mark.parametrize("name", [PRODUCER, INDEXER])
def test_pod_disruption_budget(production, name):
    pdb = production.one("PodDisruptionBudget", name)
    labels = production.one("Deployment", name)["spec"]["template"]["metadata"]["labels"]
    assert selects(pdb["spec"]["selector"], labels), f"{name}: PDB selects no pod"
    assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"], f"{name}: PDB without a budget"


def test_producer_api_autoscales(production):
    hpa = production.one("HorizontalPodAutoscaler", PRODUCER)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": PRODUCER}
    assert hpa["spec"]["minReplicas"] >= 2
    assert "replicas" not in production.one("Deployment", PRODUCER)["spec"], "the HPA owns the replica count"


def test_ingress_with_tls_and_only_the_api(production):
    ingress = production.one("Ingress", PRODUCER)
    assert "cert-manager.io/cluster-issuer" in ingress["metadata"]["annotations"]
    (rule,) = ingress["spec"]["rules"]
    assert ingress["spec"]["tls"] == [{"hosts": [rule["host"]], "secretName": "citypop-example-com-tls"}]
    paths = [p["path"] for p in rule["http"]["paths"]]
    assert "/city" in paths and "/" not in paths, f"the Ingress must route the API only, not /metrics: {paths}"
    for p in rule["http"]["paths"]:
        assert p["backend"]["service"] == {"name": PRODUCER, "port": {"name": "http"}}


# --- Network policies ----------------------------------------------------------------


def test_every_pod_is_under_a_network_policy(production):
    policies = production.kind("NetworkPolicy")
    for name, labels, _ in production.pod_specs():
        matching = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
        assert matching, f"{name}: no NetworkPolicy selects it"
        for p in matching:
            assert set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}, f"{p['metadata']['name']}: policyTypes"


def peers_and_ports(rules, direction):
    for rule in rules:
        yield rule.get(direction, []), {(p["port"], p.get("protocol", "TCP")) for p in rule.get("ports", [])}


@pytest.mark.parametrize("name", [PRODUCER, INDEXER])
def test_network_policy_egress(production, name):
    policy = production.one("NetworkPolicy", name)
    egress = list(peers_and_ports(policy["spec"]["egress"], "to"))
    for peers, ports in egress:
        assert ports, f"{name}: an egress rule without ports allows everything"
    all_ports = set().union(*(ports for _, ports in egress))
    assert {(53, "UDP"), (53, "TCP"), (9093, "TCP"), (9200, "TCP")} <= all_ports, f"{name}: egress ports {all_ports}"
    for peers, ports in egress:
        if (9093, "TCP") in ports:
            assert peers and peers[0]["podSelector"]["matchLabels"]["strimzi.io/cluster"] == "citypop"
        if (9200, "TCP") in ports:
            assert peers and "elasticsearch.k8s.elastic.co/cluster-name" in peers[0]["podSelector"]["matchLabels"]


def test_network_policy_ingress(production, production_values):
    controller = production_values["networkPolicy"]["ingressController"]
    prometheus = production_values["networkPolicy"]["prometheus"]

    def sources(name):
        found = []
        for peers, ports in peers_and_ports(production.one("NetworkPolicy", name)["spec"]["ingress"], "from"):
            assert peers, f"{name}: an ingress rule from anywhere"
            found += [(p["namespaceSelector"], p["podSelector"], frozenset(ports)) for p in peers]
        return found

    producer = sources(PRODUCER)
    assert (controller["namespaceSelector"], controller["podSelector"], frozenset({("http", "TCP")})) in producer
    assert (prometheus["namespaceSelector"], prometheus["podSelector"], frozenset({("http", "TCP")})) in producer
    assert len(producer) == 2, f"producer-api admits more than the ingress controller and Prometheus: {producer}"
    assert sources(INDEXER) == [(prometheus["namespaceSelector"], prometheus["podSelector"], frozenset({("metrics", "TCP")}))]
    for job in (f"{RELEASE}-bootstrap", f"{RELEASE}-snapshot"):
        assert production.one("NetworkPolicy", job)["spec"]["ingress"] == [], f"{job} must accept no connection"


# --- Monitoring ------------------------------------------------------------------------


@pytest.mark.parametrize("name,port", [(PRODUCER, "http"), (INDEXER, "metrics")])
def test_service_monitor(production, name, port):
    monitor = production.one("ServiceMonitor", name)
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert selects(monitor["spec"]["selector"], production.one("Service", name)["metadata"]["labels"])
    assert monitor["spec"]["endpoints"][0]["port"] == port
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def alert_rules(manifests):
    (rule,) = manifests.kind("PrometheusRule")
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}


def test_alert_rules(production):
    rules = alert_rules(production)
    missing = REQUIRED_ALERTS - rules.keys()
    assert not missing, f"alerts missing: {sorted(missing)}"
    for name, rule in rules.items():
        expr = rule["expr"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, f"{name}: severity"
        assert rule["annotations"].get("summary") and rule["annotations"].get("description"), f"{name}: annotations"
        for opening, closing in ("()", "{}", "[]"):
            assert expr.count(opening) == expr.count(closing), f"{name}: unbalanced {opening}{closing} in {expr}"
        metrics = set(re.findall(r"\b([a-z_:][a-z0-9_:]*)\{", expr))
        assert metrics, f"{name}: selects no metric"
        assert metrics <= KNOWN_METRICS, f"{name}: unknown metrics {sorted(metrics - KNOWN_METRICS)}"
        assert 'namespace="citypop"' in expr, f"{name}: not scoped to the release's namespace"


def test_alert_thresholds_come_from_values():
    rules = alert_rules(Manifests(render(
        PRODUCTION_VALUES,
        settings=["metrics.prometheusRule.thresholds.consumerLag=12345"],
    )))
    assert "> 12345" in rules["CitypopConsumerLagHigh"]["expr"]


# --- Hooks and jobs ---------------------------------------------------------------------


def test_bootstrap_hook_creates_topics(production):
    job = production.one("Job", f"{RELEASE}-bootstrap")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("apache/kafka:")
    script = container["args"][0]
    assert "kafka-topics.sh" in script and "--if-not-exists" in script and "cleanup.policy=compact" in script
    env = env_of(container)
    assert env["PARTITIONS"]["value"] == "12" and env["DLQ_TOPIC"]["value"] == "city-updates.dlq"
    assert env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "citypop-credentials"


def test_snapshot_cronjob(production):
    cronjob = production.one("CronJob", f"{RELEASE}-snapshot")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    assert env["REPOSITORY"]["value"] == "citypop-backups"
    assert '"type":"s3"' in env["REPOSITORY_BODY"]["value"]
    assert env["ENGINE_URL"]["value"].startswith("https://")


# --- Values the chart refuses ---------------------------------------------------------------


@pytest.mark.parametrize("settings,message", [
    (["indexer.replicaCount=13"], "exceeds kafka.topic.partitions"),
    (["kafka.sasl.mechanism=PLAIN"], "kafka.securityProtocol"),
    (["kafka.topics=1"], "additional properties"),
    (["engine.timeout=30 seconds"], "engine/timeout"),
])
def test_chart_refuses_contradictory_values(settings, message):
    result = helm_template(settings=settings, check=False)
    assert result.returncode != 0, f"helm template accepted {settings}"
    assert message in result.stderr, result.stderr


def test_development_defaults(development):
    kinds = {d["kind"] for d in development.docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "Secret", "ServiceAccount"} <= kinds
    # Optional objects that need CRDs or cluster knowledge stay off by default.
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "NetworkPolicy", "Ingress", "Job", "CronJob", "ScaledObject"}
