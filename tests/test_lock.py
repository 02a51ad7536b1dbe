"""uv.lock is the one list of exact versions: `make` installs it into .venv, the Dockerfile into the image.
These tests fail when pyproject.toml changed without `make lock`, when the environment the tests run in is
not the lock, or when the Makefile and the Dockerfile bootstrap another uv than the lock pins.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from uv import find_uv_bin

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def lock() -> dict[str, Any]:
    return tomllib.loads((ROOT / "uv.lock").read_text())


def locked_versions() -> dict[str, Version]:
    """The version the lock pins for this Python, by canonical name (the project itself excepted). A
    universal lock may pin a package once per Python range (numpy does): its resolution-markers say which."""
    versions: dict[str, Version] = {}
    for package in lock()["package"]:
        if package["name"] == PYPROJECT["project"]["name"]:
            continue
        markers = package.get("resolution-markers")
        if markers and not any(Marker(marker).evaluate() for marker in markers):
            continue
        name = canonicalize_name(package["name"])
        assert name not in versions, f"{name} is pinned twice for this Python in uv.lock"
        versions[name] = Version(package["version"])
    return versions


def uv_lock_check(project: Path) -> subprocess.CompletedProcess[str]:
    """`uv lock --check` without network: the lock is compared with pyproject.toml, nothing resolved."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
    return subprocess.run(
        [find_uv_bin(), "lock", "--check", "--offline", "--project", str(project)],
        capture_output=True,
        text=True,
        check=False,
        env={**environment, "UV_PYTHON_DOWNLOADS": "never"},
        timeout=60,
    )


def test_lock_agrees_with_pyproject() -> None:
    result = uv_lock_check(ROOT)
    assert result.returncode == 0, f"uv.lock is stale, run `make lock`:\n{result.stderr}"


def test_lock_check_fails_for_a_range_the_lock_is_outside_of(tmp_path: Path) -> None:
    # The check above must be able to fail: the same project with a range the locked numpy is outside of.
    # Offline, uv cannot resolve anew, so either message means "the lock does not fit pyproject.toml".
    shutil.copy(ROOT / "uv.lock", tmp_path / "uv.lock")
    text = (ROOT / "pyproject.toml").read_text()
    assert '"numpy>=1.26",' in text
    (tmp_path / "pyproject.toml").write_text(text.replace('"numpy>=1.26",', '"numpy<1.26",'))
    result = uv_lock_check(tmp_path)
    assert result.returncode != 0
    assert "needs to be updated" in result.stderr or "network was disabled" in result.stderr, result.stderr


def test_every_declared_dependency_is_locked_within_its_range() -> None:
    versions = locked_versions()
    declared = [*PYPROJECT["project"]["dependencies"], *PYPROJECT["project"]["optional-dependencies"]["dev"]]
    for line in declared:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in versions, f"{requirement.name} is missing from uv.lock (run `make lock`)"
        assert requirement.specifier.contains(versions[name], prereleases=True), f"{versions[name]} vs {line}"


def test_the_environment_under_test_is_exactly_the_lock() -> None:
    versions = locked_versions()
    project = canonicalize_name(PYPROJECT["project"]["name"])
    installed = {canonicalize_name(d.metadata["Name"]): Version(d.version) for d in metadata.distributions()}
    assert installed.pop(project, None) is not None, "audiochat itself is not installed"
    strays = sorted(set(installed) - set(versions))
    assert not strays, f"installed but not in uv.lock: {strays} (run `make`)"
    drifted = {name: str(v) for name, v in installed.items() if v != versions[name]}
    assert not drifted, f"installed versions differ from uv.lock: {drifted} (run `make`)"
    for line in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate():
            assert canonicalize_name(requirement.name) in installed, requirement.name


def test_makefile_and_image_bootstrap_the_uv_the_lock_pins() -> None:
    locked = str(locked_versions()["uv"])
    makefile = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    dockerfile = re.search(r"^ARG UV_VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert makefile and dockerfile
    assert makefile.group(1) == dockerfile.group(1) == locked == metadata.version("uv")
