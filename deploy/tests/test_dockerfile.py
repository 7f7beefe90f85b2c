"""deploy/docker/Dockerfile, read without building it (no Docker engine here):
multi-stage with cargo-chef, and final images that are minimal, non-root and need
no writable path. hadolint checks the rest (deploy/lint.sh)."""

import re

import pytest

from conftest import ROOT

DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
BINARIES = {"producer-api": "citypop-producer-api", "indexer": "citypop-indexer"}


def stages():
    """{stage name: (base, [instruction lines])}, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    result, current = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if match:
            current = match.group(2) or f"stage{len(result)}"
            result[current] = (match.group(1), [])
        elif current:
            result[current][1].append(line)
    return result


def instructions(stage, keyword):
    return [line[len(keyword):].strip() for line in stages()[stage][1] if line.upper().startswith(keyword + " ")]


def test_builds_dependencies_in_their_own_layer():
    builder = stages()["builder"][1]
    cook = next(i for i, line in enumerate(builder) if "cargo chef cook" in line)
    copy_all = next(i for i, line in enumerate(builder) if line.startswith("COPY . ."))
    build = next(i for i, line in enumerate(builder) if "cargo build --release" in line)
    assert cook < copy_all < build, "cargo chef cook must run before the sources are copied"
    for package in BINARIES.values():
        assert f"-p {package}" in builder[cook] and f"-p {package}" in builder[build]
    assert any("cargo chef prepare" in line for line in stages()["planner"][1])


def test_builder_has_what_rdkafka_needs():
    installs = " ".join(instructions("chef", "RUN"))
    for package in ("cmake", "pkg-config", "zlib1g-dev", "libcurl4-openssl-dev", "build-essential"):
        assert package in installs, f"the builder lacks {package}"


def test_builder_and_runtime_share_a_debian_release():
    text = DOCKERFILE.read_text(encoding="utf-8")
    release = re.search(r"ARG DEBIAN_RELEASE=(\w+)", text).group(1)
    runtime = re.search(r"ARG RUNTIME_BASE=(\S+)", text).group(1)
    assert (release, runtime) == ("bookworm", "gcr.io/distroless/cc-debian12"), "glibc and zlib must match"


def test_runtime_is_minimal_and_non_root():
    base, _ = stages()["runtime"]
    assert base == "${RUNTIME_BASE}"
    assert instructions("runtime", "USER") == ["10001:10001"]
    copies = instructions("runtime", "COPY")
    assert copies == ["--from=builder /out/lib/ /"], f"the runtime stage copies more than the libraries: {copies}"


@pytest.mark.parametrize("binary", BINARIES)
def test_service_images(binary):
    base, lines = stages()[binary]
    assert base == "runtime", f"{binary} must build on the runtime stage"
    assert instructions(binary, "COPY") == [f"--from=builder /out/{binary}/{binary} /usr/local/bin/{binary}"]
    assert instructions(binary, "ENTRYPOINT") == [f'["/usr/local/bin/{binary}"]'], "exec form, so the binary gets SIGTERM"
    assert not instructions(binary, "USER") or instructions(binary, "USER") == ["10001:10001"]
    assert not instructions(binary, "VOLUME"), "a VOLUME would need a writable path"
    env = " ".join(instructions(binary, "ENV"))
    assert "0.0.0.0:" in env, f"{binary} must listen on all interfaces in a container"


def test_dockerignore_keeps_the_context_small():
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    for path in ("target", ".git", ".stack", ".tools"):
        assert path in ignored, f".dockerignore lacks {path}"
