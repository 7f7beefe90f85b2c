"""docker-compose.yml, checked without a Docker engine: against the Compose
Specification's JSON schema, then for what `docker compose up --build` relies on
(profiles that swap the engine, healthchecks behind every `service_healthy`, the
images' hardening)."""

import json
import os
import pathlib

import jsonschema
import pytest

from conftest import ROOT, load_yaml

COMPOSE_FILE = ROOT / "docker-compose.yml"
ENGINES = ("elasticsearch", "opensearch")


@pytest.fixture(scope="module")
def compose():
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def default_profiles():
    """COMPOSE_PROFILES from .env: what a plain `docker compose up` activates."""
    for line in (ROOT / ".env").read_text(encoding="utf-8").splitlines():
        if line.startswith("COMPOSE_PROFILES="):
            return set(line.split("=", 1)[1].split(","))
    pytest.fail(".env sets no COMPOSE_PROFILES: `docker compose up` would start no engine")


def active_services(compose, profiles):
    """The services Compose runs with these profiles active (the spec's rule: a
    service without profiles always runs; one with profiles runs if any is active)."""
    return {
        name: service
        for name, service in compose["services"].items()
        if not service.get("profiles") or set(service["profiles"]) & profiles
    }


def test_matches_the_compose_specification(compose):
    path = os.environ.get("CITYPOP_COMPOSE_SCHEMA") or str(ROOT.parent / "shared" / "schemas" / "compose-spec.json")
    if not pathlib.Path(path).is_file():
        pytest.fail(f"the Compose Specification schema is missing: {path}")
    with open(path, encoding="utf-8") as f:
        schema = json.load(f)
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_schema_check_catches_mistakes(compose):
    """The schema check above would fail on a misspelt key (it is not vacuous)."""
    path = os.environ.get("CITYPOP_COMPOSE_SCHEMA") or str(ROOT.parent / "shared" / "schemas" / "compose-spec.json")
    with open(path, encoding="utf-8") as f:
        schema = json.load(f)
    broken = json.loads(json.dumps(compose))
    broken["services"]["indexer"]["depends_on"]["kafka"]["condtion"] = "service_healthy"
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


def test_default_is_elasticsearch(default_profiles):
    assert default_profiles == {"elasticsearch"}


@pytest.mark.parametrize("engine", ENGINES)
def test_each_profile_runs_exactly_one_engine(compose, engine):
    services = active_services(compose, {engine})
    assert {"kafka", "indexer", "producer-api", engine} == services.keys(), f"--profile {engine} runs {sorted(services)}"
    with_alias = [n for n, s in services.items() if "engine" in (s.get("networks") or {}).get("default", {}).get("aliases", [])]
    assert with_alias == [engine], f"--profile {engine}: services answering as 'engine': {with_alias}"


@pytest.mark.parametrize("engine", ENGINES)
def test_dependencies_resolve_under_each_profile(compose, engine):
    services = active_services(compose, {engine})
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert isinstance(condition, dict) and "condition" in condition, f"{name} -> {dependency}: no condition"
            if dependency not in services:
                assert condition.get("required") is False, f"{name} needs {dependency}, which --profile {engine} does not run"
                continue
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency} to be healthy, but it has no healthcheck"
        if name in ("indexer", "producer-api"):
            conditions = service["depends_on"]
            assert conditions["kafka"]["condition"] == "service_healthy"
            assert conditions[engine]["condition"] == "service_healthy"


def test_infrastructure_has_healthchecks(compose):
    for name in ("kafka", *ENGINES):
        check = compose["services"][name].get("healthcheck")
        assert check and check["test"], f"{name}: no healthcheck"


def test_services_run_hardened(compose):
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text(encoding="utf-8")
    for name, listen in (("producer-api", "CITYPOP_LISTEN"), ("indexer", "CITYPOP_HEALTH_LISTEN")):
        service = compose["services"][name]
        assert service["read_only"] is True, f"{name}: read_only"
        assert service["user"] == "10001:10001", f"{name}: user"
        assert service["cap_drop"] == ["ALL"], f"{name}: cap_drop"
        assert "no-new-privileges:true" in service["security_opt"], f"{name}: no-new-privileges"
        build = service["build"]
        assert build["dockerfile"] == "deploy/docker/Dockerfile" and build["context"] == "."
        assert f"AS {build['target']}" in dockerfile, f"{name}: Dockerfile has no stage {build['target']}"
        assert service["environment"][listen].startswith("0.0.0.0:"), f"{name}: {listen}"
        assert service["environment"]["CITYPOP_ELASTICSEARCH_URL"] == "http://engine:9200"


def test_ports_stay_on_localhost(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is published on every interface"


def test_kafka_does_not_auto_create_topics(compose):
    env = compose["services"]["kafka"]["environment"]
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "INTERNAL://kafka:19092" in env["KAFKA_ADVERTISED_LISTENERS"]
    for name in ("indexer", "producer-api"):
        assert compose["services"][name]["environment"]["CITYPOP_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:19092"


def test_tracing_profile_runs_jaeger(compose):
    services = active_services(compose, {"elasticsearch", "tracing"})
    jaeger = services["jaeger"]
    assert jaeger["image"].split(":")[0] == "jaegertracing/jaeger"
    assert jaeger["profiles"] == ["tracing"]
    for name in ("indexer", "producer-api"):
        assert "CITYPOP_OTLP_ENDPOINT" in compose["services"][name]["environment"], name
