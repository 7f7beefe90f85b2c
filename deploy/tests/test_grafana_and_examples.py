"""The Grafana dashboard covers both services' metrics; the Strimzi and ECK examples
are the HA clusters the production values point at."""

import json
import re
from urllib.parse import urlparse

import pytest

from conftest import ROOT, load_yaml_all

DASHBOARD = ROOT / "deploy" / "grafana" / "citypop-dashboard.json"
EXAMPLES = ROOT / "deploy" / "examples"

# Where each service registers its metrics, and the prefix its registry adds.
METRIC_SOURCES = {
    ROOT / "producer-api" / "src" / "metrics.rs": "",
    ROOT / "indexer" / "src" / "metrics.rs": "citypop_indexer_",
}


def registered_metrics():
    """Every metric name the services register, as the exposition spells it, less the
    `_total` the encoder adds to counters."""
    names = []
    for source, prefix in METRIC_SOURCES.items():
        names += [prefix + name for name in re.findall(r'\.register\(\s*"([a-z_]+)"', source.read_text(encoding="utf-8"))]
    return names


@pytest.fixture(scope="module")
def dashboard():
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def test_every_registered_metric_is_found():
    names = registered_metrics()
    # The parse found both services' registrations, not a lucky subset.
    assert {"http_requests", "citypop_publish_failures", "citypop_indexer_events_consumed",
            "citypop_indexer_partitions_unfetched"} <= set(names), names
    assert len(names) == len(set(names)), names


def test_dashboard_covers_every_metric(dashboard):
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    missing = [
        metric for metric in registered_metrics()
        if not any(re.search(rf"\b{metric}(_total|_bucket|_count|_sum)?\{{", e) for e in exprs)
    ]
    assert not missing, f"no panel shows {missing}"


def test_dashboard_is_well_formed(dashboard):
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "producer_job", "indexer_job"} <= variables
    for panel in dashboard["panels"]:
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, f"{panel['title']}: wider than the grid"
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", f"{panel['title']}: fixed data source"
            for target in panel["targets"]:
                assert target["expr"].count("(") == target["expr"].count(")"), f"{panel['title']}: {target['expr']}"


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


@pytest.fixture(scope="module")
def strimzi():
    return load_yaml_all(EXAMPLES / "strimzi-kafka.yaml")


@pytest.fixture(scope="module")
def eck():
    return load_yaml_all(EXAMPLES / "eck-elasticsearch.yaml")


def test_strimzi_is_highly_available(strimzi):
    (kafka,) = by_kind(strimzi, "Kafka")
    pools = {p["metadata"]["name"]: p["spec"] for p in by_kind(strimzi, "KafkaNodePool")}
    brokers = sum(p["replicas"] for p in pools.values() if "broker" in p["roles"])
    controllers = sum(p["replicas"] for p in pools.values() if "controller" in p["roles"])
    assert brokers == 3 and controllers == 3
    for pool in by_kind(strimzi, "KafkaNodePool"):
        assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    config = kafka["spec"]["kafka"]["config"]
    assert config["min.insync.replicas"] == 2 and config["default.replication.factor"] == 3
    assert config["auto.create.topics.enable"] is False


def test_strimzi_topics_match_the_chart(strimzi, production_values):
    topics = {t["spec"].get("topicName", t["metadata"]["name"]): t["spec"] for t in by_kind(strimzi, "KafkaTopic")}
    main = topics[production_values["kafka"]["topic"]["name"]]
    assert main["partitions"] == production_values["kafka"]["topic"]["partitions"]
    assert main["config"]["cleanup.policy"] == "compact"
    assert f"{production_values['kafka']['topic']['name']}.dlq" in topics
    (user,) = by_kind(strimzi, "KafkaUser")
    topic_acls = {a["resource"]["name"] for a in user["spec"]["authorization"]["acls"] if a["resource"]["type"] == "topic"}
    assert set(topics) <= topic_acls


def test_production_values_point_at_the_examples(strimzi, eck, production_values):
    (kafka,) = by_kind(strimzi, "Kafka")
    (elasticsearch,) = by_kind(eck, "Elasticsearch")
    kafka_name, es_name = kafka["metadata"]["name"], elasticsearch["metadata"]["name"]
    host, port = production_values["kafka"]["bootstrapServers"].split(":")
    assert host.startswith(f"{kafka_name}-kafka-bootstrap.")
    assert int(port) in [l["port"] for l in kafka["spec"]["kafka"]["listeners"]]
    assert production_values["kafka"]["tls"]["caSecret"]["name"] == f"{kafka_name}-cluster-ca-cert"
    assert production_values["kafka"]["sasl"]["mechanism"] == "SCRAM-SHA-512"
    url = urlparse(production_values["engine"]["url"])
    assert url.scheme == "https" and url.hostname.startswith(f"{es_name}-es-http.") and url.port == 9200
    assert production_values["engine"]["tls"]["caSecret"]["name"] == f"{es_name}-es-http-certs-public"


def test_eck_is_highly_available(eck):
    (elasticsearch,) = by_kind(eck, "Elasticsearch")
    assert elasticsearch["spec"]["version"].startswith("9.")
    sets = {s["name"]: s for s in elasticsearch["spec"]["nodeSets"]}
    masters = sum(s["count"] for s in sets.values() if "master" in s["config"]["node.roles"])
    data = sum(s["count"] for s in sets.values() if "data" in s["config"]["node.roles"])
    assert masters == 3 and data >= 3
    assert all(s["config"]["node.roles"] != ["master", "data"] for s in sets.values()), "dedicated masters"
    (roles,) = [s for s in by_kind(eck, "Secret") if s["metadata"]["name"] == "citypop-es-roles"]
    assert "citypop_writer" in roles["stringData"]["roles.yml"]
