"""The install is reproducible: constraints.txt pins every requirement inside the ranges requirements*.txt allow,
and every requirement has an upper bound (the newest version the suite passed on)."""
from __future__ import annotations

from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]


def _lines(name: str) -> list[str]:
    return [line.split("#")[0].strip() for line in (REPO / name).read_text().splitlines()
            if line.split("#")[0].strip()]


def test_constraints_pin_every_requirement_inside_its_range():
    pins = {}
    for line in _lines("constraints.txt"):
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", line
        pins[canonicalize_name(req.name)] = Version(spec.version)
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in _lines(name):
            req = Requirement(line)
            assert any(s.operator in ("<=", "<", "==") for s in req.specifier), f"{name}: {line} has no upper bound"
            pinned = pins.get(canonicalize_name(req.name))
            assert pinned is not None, f"{name}: {req.name} is not pinned in constraints.txt"
            assert req.specifier.contains(pinned, prereleases=True), f"{name}: {line} excludes the pinned {pinned}"


def test_the_makefile_installs_with_the_constraints():
    make = (REPO / "Makefile").read_text()
    installs = [line for line in make.splitlines() if "pip install" in line and "--upgrade pip" not in line
                and "--no-deps" not in line]
    assert installs and all("-c constraints.txt" in line for line in installs), installs
