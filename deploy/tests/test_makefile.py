"""The Makefile's targets do what README says, whatever the tree holds.

A target that is not .PHONY is skipped by make when a file or folder of its name
exists: `make bench` printed "'bench' is up to date" and did nothing, because
`bench/` holds the benchmark's source.
"""

import os
import re
import subprocess

import pytest

from conftest import ROOT

MAKEFILE = ROOT / "Makefile"


def targets():
    """The targets the Makefile defines (not variables, not pattern rules)."""
    names = []
    for line in MAKEFILE.read_text().splitlines():
        match = re.match(r"^([a-z][a-z0-9-]*):(?!=)", line)
        if match:
            names.append(match.group(1))
    return names


def phony():
    declared = set()
    for line in MAKEFILE.read_text().splitlines():
        if line.startswith(".PHONY:"):
            declared.update(line.split(":", 1)[1].split())
    return declared


def test_every_target_is_phony():
    missing = [t for t in targets() if t not in phony()]
    assert not missing, f"targets make skips when a file of that name exists: {missing}"


def test_a_folder_named_like_a_target_does_not_hide_it():
    # `make -n` prints the recipe it would run; a target hidden by a folder prints
    # "is up to date" instead.
    assert (ROOT / "bench").is_dir()
    result = subprocess.run(
        ["make", "-n", "bench"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "up to date" not in result.stdout + result.stderr
    assert "bench.sh" in result.stdout


def test_help_lists_every_target():
    result = subprocess.run(
        ["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    listed = set(re.findall(r"make ([a-z-]+)", result.stdout))
    assert listed == set(targets()), result.stdout


@pytest.mark.parametrize("target", targets())
def test_every_target_has_a_recipe_that_can_run(target):
    # What a new user sees first: `make -n` prints the recipe instead of "up to
    # date" or "Nothing to be done", and every script it calls is there and
    # executable in a fresh clone.
    result = subprocess.run(
        ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=True
    )
    output = result.stdout + result.stderr
    assert "up to date" not in output and "Nothing to be done" not in output, output
    assert result.stdout.strip(), f"make {target} has an empty recipe"
    for script in re.findall(r"(?:^|\s)((?:deploy|bench|tests)/[\w./-]+\.(?:sh|py))", result.stdout):
        path = ROOT / script
        assert path.is_file(), f"make {target} calls {script}, which does not exist"
        assert os.access(path, os.X_OK), f"make {target} calls {script}, which is not executable"
