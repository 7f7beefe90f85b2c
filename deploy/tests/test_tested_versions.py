"""The deploy artefacts name the engine versions `make test` runs, and README's
"Engines and versions tested" table lists exactly those: the local stack's defaults
(deploy/local/lib/engine.sh) and the passes of deploy/local/test.sh."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def stack_defaults():
    """{engine: version} from engine_default_version in lib/engine.sh."""
    text = (ROOT / "deploy/local/lib/engine.sh").read_text()
    body = text[text.index("engine_default_version() {"):]
    body = body[: body.index("\n}")]
    return dict(re.findall(r"(elasticsearch|opensearch)\) echo ([0-9.]+) ;;", body))


def make_test_versions():
    """(engine, version) of every pass of test.sh, defaults resolved."""
    text = (ROOT / "deploy/local/test.sh").read_text()
    passes = text[text.index("passes=(\n"):]
    passes = passes[: passes.index("\n  )")]
    defaults = stack_defaults()
    found = set()
    for engine, version, _scope in re.findall(r'"(elasticsearch|opensearch) (\S+) (\w+)"', passes):
        found.add((engine, defaults[engine] if version == "default" else version))
    return found


def test_the_stack_has_a_default_for_each_engine():
    assert set(stack_defaults()) == {"elasticsearch", "opensearch"}


def test_make_test_runs_both_engines_two_lines_each():
    versions = make_test_versions()
    for engine in ("elasticsearch", "opensearch"):
        majors = {v.split(".")[0] for e, v in versions if e == engine}
        assert len(majors) == 2, f"{engine}: {versions}"


def test_readme_lists_exactly_what_make_test_runs():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Engines and versions tested"):]
    table = table[: table.index("\n\n", table.index("| component"))]
    listed = {
        (engine.lower(), version)
        for engine, version in re.findall(r"^\| (Elasticsearch|OpenSearch) \| ([0-9.]+) \|", table, re.M)
    }
    assert listed == make_test_versions()


def test_compose_defaults_to_the_tested_versions():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    defaults = stack_defaults()
    for service, engine in (("elasticsearch", "elasticsearch"), ("opensearch", "opensearch")):
        image = compose["services"][service]["image"]
        default = re.search(r":-([0-9.]+)\}$", image).group(1)
        assert default == defaults[engine], image


def test_eck_runs_the_tested_elasticsearch():
    documents = list(yaml.safe_load_all((ROOT / "deploy/examples/eck-elasticsearch.yaml").read_text()))
    (elasticsearch,) = [d for d in documents if d and d.get("kind") == "Elasticsearch"]
    assert elasticsearch["spec"]["version"] == stack_defaults()["elasticsearch"]
