"""Installing the pack never changes what ComfyUI runs on (issue 28), checked offline.

A stock ComfyUI 0.3.64 environment (tests/data/comfyui-0.3.64-stock-*.txt: ComfyUI's requirements resolved as a
fresh install the day after its release, and six weeks later) must take requirements.txt (and the package's own
dependencies) without an upgrade or a downgrade:

- every requirement on a package the environment has is met by the version it has (pip then keeps it);
- every package the install adds, at the newest release its bound allows, asks nothing of the environment's
  packages that their versions do not meet (tests/data/added-packages-requires.json, read from the wheels);
- the releases known to need newer ComfyUI packages (diffusers 0.38: safetensors 0.8) are kept out by the bounds.
"""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
STOCK = sorted(DATA.glob("comfyui-0.3.64-stock-*.txt"))
ADDED = json.loads((DATA / "added-packages-requires.json").read_text())
ENV = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.11", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython"}


def _pins(path: Path) -> dict[str, Version]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = Version(version)
    return out


def _ours() -> dict[str, list[Requirement]]:
    """requirements.txt and pyproject's dependencies (torch left out: ComfyUI's own build is used)."""
    lines = [x.split("#", 1)[0].strip() for x in (ROOT / "requirements.txt").read_text().splitlines()]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {"requirements.txt": [Requirement(x) for x in lines if x],
            "pyproject.toml": [Requirement(x) for x in project["dependencies"] if not x.startswith("torch")]}


def _pin_of(spec: str) -> tuple[str, Version]:
    name, _, version = spec.partition("==")
    return canonicalize_name(name), Version(version)


def test_the_stock_environments_are_complete():
    assert len(STOCK) == 2
    for path in STOCK:
        pins = _pins(path)
        assert {"torch", "transformers", "huggingface-hub", "safetensors", "numpy", "av", "tokenizers"} <= set(pins), path
        assert pins["transformers"].major == 4 and pins["huggingface-hub"] < Version("1")


@pytest.mark.parametrize("stock", STOCK, ids=lambda p: p.stem)
@pytest.mark.parametrize("source", ["requirements.txt", "pyproject.toml"])
def test_every_requirement_on_a_comfyui_package_is_met_by_its_version(stock, source):
    pins = _pins(stock)
    bad = [f"{r} (has {pins[canonicalize_name(r.name)]})" for r in _ours()[source]
           if canonicalize_name(r.name) in pins and not r.specifier.contains(pins[canonicalize_name(r.name)], prereleases=True)]
    assert not bad, f"{source} would upgrade or downgrade in {stock.name}: {bad}"


@pytest.mark.parametrize("stock", STOCK, ids=lambda p: p.stem)
def test_the_packages_an_install_adds_leave_the_comfyui_packages_alone(stock):
    pins = _pins(stock)
    recorded = {_pin_of(k)[0]: (_pin_of(k)[1], [Requirement(r) for r in v]) for k, v in ADDED["requires"].items()}
    ours = {canonicalize_name(r.name): r for r in _ours()["requirements.txt"]}
    added = {n for n in ours if n not in pins}
    assert added <= set(recorded), f"new dependencies without recorded requirements: {added - set(recorded)}"
    queue, seen, bad = sorted(added), set(), []
    while queue:  # what the added packages pull in, transitively, down to what the environment already has
        name = queue.pop()
        if name in seen:
            continue
        seen.add(name)
        version, reqs = recorded[name]
        if name in ours:
            assert ours[name].specifier.contains(version, prereleases=True), f"recorded {name} {version} is outside {ours[name]}"
        for r in reqs:
            if r.marker is not None and not r.marker.evaluate(ENV):
                continue
            dep = canonicalize_name(r.name)
            if dep in pins:
                if not r.specifier.contains(pins[dep], prereleases=True):
                    bad.append(f"{name} {version} needs {r}, the environment has {pins[dep]}")
            elif dep in recorded:
                queue.append(dep)
            # else: a new package without requirements of its own (absl-py, protobuf, flatbuffers, h11, ...)
    assert not bad, bad


@pytest.mark.parametrize("source", ["requirements.txt", "pyproject.toml"])
def test_releases_that_would_change_a_comfyui_package_are_kept_out(source):
    ours = {canonicalize_name(r.name): r for r in _ours()[source]}
    for spec, why in ADDED["excluded"].items():
        name, version = _pin_of(spec)
        assert not ours[name].specifier.contains(version, prereleases=True), f"{source}: {spec} is allowed but needs {why}"
