"""Shared helpers of the deployment checks: paths, and rendering the Helm chart.

`make lint-deploy` (deploy/lint.sh) runs these with its own helm and Python tools;
CITYPOP_HELM and CITYPOP_COMPOSE_SCHEMA tell them where those are.
"""

import os
import pathlib
import shutil
import subprocess

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "citypop"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"
RELEASE = "citypop"
NAMESPACE = "citypop"


def helm_binary() -> str:
    helm = os.environ.get("CITYPOP_HELM") or shutil.which("helm")
    if not helm:
        pytest.fail("helm not found: run these through `make lint-deploy`, or set CITYPOP_HELM")
    return helm


def helm_template(*values_files, settings=(), check=True):
    """Renders the chart; returns the CompletedProcess (stdout: the manifests)."""
    command = [
        helm_binary(), "template", RELEASE, str(CHART),
        "--namespace", NAMESPACE,
        "--kube-version", os.environ.get("CITYPOP_KUBE_VERSION", "1.37.0"),
    ]
    for values in values_files:
        command += ["-f", str(values)]
    for setting in settings:
        command += ["--set", setting]
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode != 0:
        pytest.fail(f"helm template failed:\n{result.stderr}")
    return result


def render(*values_files, settings=()):
    """Renders the chart into a list of manifests (dicts), hooks included."""
    output = helm_template(*values_files, settings=settings).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_yaml_all(path):
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


class Manifests:
    """A rendered release, with lookups by kind and name."""

    def __init__(self, docs):
        self.docs = docs

    def kind(self, kind):
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind, name):
        found = [d for d in self.kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
        return found[0]

    def pod_specs(self):
        """(description, pod labels, pod spec) of every workload."""
        for d in self.docs:
            name = f'{d["kind"]}/{d["metadata"]["name"]}'
            if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
                template = d["spec"]["template"]
            elif d["kind"] == "CronJob":
                template = d["spec"]["jobTemplate"]["spec"]["template"]
            else:
                continue
            yield name, template["metadata"].get("labels", {}), template["spec"]


@pytest.fixture(scope="session")
def production():
    return Manifests(render(PRODUCTION_VALUES))


@pytest.fixture(scope="session")
def development():
    return Manifests(render())


@pytest.fixture(scope="session")
def production_values():
    return load_yaml(PRODUCTION_VALUES)
