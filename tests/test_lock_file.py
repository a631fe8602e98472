"""requirements.lock (written by `make lock`, installed by `make install`) agrees with pyproject.toml, and
the environment running the tests is the locked one; requirements-gpu.lock (GPU images) is the same lock
with the CUDA build of torch.

Why: a fresh machine must get exactly the versions the suite passed with. These fail when a dependency is
added, removed or re-ranged in pyproject without `make lock`, when the lock stops pinning the CPU build of
torch, when the two locks diverge, or when the test environment drifted from the lock (`make install`).
"""

from __future__ import annotations

import importlib.metadata as md
import platform
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
GPU_LOCK = REPO / "requirements-gpu.lock"
# What only the CUDA build of torch pulls in.
CUDA_ONLY = re.compile(r"^(nvidia-|cuda-|triton$)")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
LOCKED_EXTRAS = ("test",)  # the Makefile's `make lock --extra test`
ME = "deepperception (pyproject.toml)"


def parse_lock(text: str) -> dict[str, tuple[Requirement, set[str]]]:
    """Pinned requirement and the `# via` sources of every package in a uv/pip-compile output.

    >>> lock = parse_lock('''a==1.0 ; python_version < '3.12' \\\\
    ...     --hash=sha256:00
    ...     # via deepperception (pyproject.toml)
    ... b==2.0 \\\\
    ...     --hash=sha256:11
    ...     # via
    ...     #   a
    ...     #   deepperception (pyproject.toml)
    ... ''')
    >>> sorted(lock), str(lock["a"][0].specifier), sorted(lock["b"][1])
    (['a', 'b'], '==1.0', ['a', 'deepperception (pyproject.toml)'])
    """
    packages: dict[str, tuple[Requirement, set[str]]] = {}
    current = None
    logical = re.sub(r"\\\n", " ", text)
    for line in logical.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            if current is not None:
                source = stripped.lstrip("#").strip()
                source = source.removeprefix("via").strip()
                if source:
                    packages[current][1].add(source)
            continue
        spec = re.sub(r"\s--hash=\S+", "", " " + stripped).strip()
        req = Requirement(spec)
        current = canonicalize_name(req.name)
        packages[current] = (req, set())
    return packages


def _pin(req: Requirement) -> Version:
    (spec,) = req.specifier
    assert spec.operator == "==", f"{req} is not an exact pin"
    return Version(spec.version)


def _project_requirements() -> list[Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    for extra in LOCKED_EXTRAS:
        reqs += [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"][extra]]
    return reqs


@pytest.fixture(scope="module")
def lock():
    return parse_lock(LOCK.read_text())


@pytest.fixture(scope="module", params=[LOCK, GPU_LOCK], ids=lambda p: p.name)
def any_lock(request):
    return parse_lock(request.param.read_text())


def test_lock_pins_every_pyproject_requirement_within_its_range(any_lock):
    lock = any_lock
    for req in _project_requirements():
        name = canonicalize_name(req.name)
        assert name in lock, f"pyproject requires {req} but requirements.lock has no {name}: run `make lock`"
        pin = _pin(lock[name][0])
        assert req.specifier.contains(pin, prereleases=True), (
            f"requirements.lock pins {name}=={pin}, outside pyproject's {req}: run `make lock`")


def test_lock_has_no_direct_requirement_pyproject_dropped(any_lock):
    lock = any_lock
    direct = {name for name, (_, via) in lock.items() if ME in via}
    wanted = {canonicalize_name(r.name) for r in _project_requirements()}
    assert direct == wanted, (
        f"pinned for pyproject but no longer in it: {sorted(direct - wanted)}; "
        f"in pyproject but not marked direct: {sorted(wanted - direct)}: run `make lock`")


def test_lock_pins_the_cpu_build_of_torch(lock):
    constraint = Requirement(PYPROJECT["tool"]["uv"]["constraint-dependencies"][0])
    assert canonicalize_name(constraint.name) == "torch"
    pin = _pin(lock["torch"][0])
    assert pin.local == "cpu" and constraint.specifier.contains(pin), pin
    assert not [n for n in lock if n.startswith("nvidia-")], "a CUDA torch dependency slipped into the lock"


def test_gpu_lock_is_the_lock_with_cuda_torch(lock):
    gpu = parse_lock(GPU_LOCK.read_text())
    cpu_torch, gpu_torch = _pin(lock["torch"][0]), _pin(gpu["torch"][0])
    assert gpu_torch.local is None and gpu_torch.public == cpu_torch.public, (cpu_torch, gpu_torch)
    differ = {n: (str(_pin(lock[n][0])), str(_pin(gpu[n][0]))) for n in lock if n != "torch" and n in gpu
              and _pin(lock[n][0]) != _pin(gpu[n][0])}
    assert not differ, f"the two locks disagree on {differ}: run `make lock`"
    assert set(lock) - set(gpu) == set(), sorted(set(lock) - set(gpu))
    extra = sorted(n for n in set(gpu) - set(lock) if not CUDA_ONLY.match(n))
    assert not extra, f"requirements-gpu.lock has {extra} beyond the CUDA build's own packages"


LOCK_PLATFORM = sys.platform == "linux" and platform.machine() == "x86_64" and sys.version_info[:2] == (3, 11)


@pytest.mark.skipif(not LOCK_PLATFORM, reason="the lock is for CPython 3.11 on x86_64 Linux")
def test_this_environment_is_the_lock_and_the_lock_is_complete(lock):
    """Installed == locked for every package that applies here, and walking the installed metadata
    from pyproject's requirements (their extras included) reaches only locked packages."""
    drift = {}
    for name, (req, _) in lock.items():
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = Version(md.version(name))
        except md.PackageNotFoundError:
            drift[name] = (str(_pin(req)), None)
            continue
        if installed != _pin(req):
            drift[name] = (str(_pin(req)), str(installed))
    assert not drift, f"locked vs installed {drift}: run `make install`"

    env = default_environment()
    seen: set[str] = set()
    todo = [(r, set(r.extras)) for r in _project_requirements()]
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        key = f"{name}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        assert name in lock, f"{name} is needed (via {req}) but not in requirements.lock: run `make lock`"
        for raw in md.requires(name) or []:
            dep = Requirement(raw)
            if dep.marker is None or any(dep.marker.evaluate({**env, "extra": e}) for e in extras | {""}):
                todo.append((dep, set(dep.extras)))
