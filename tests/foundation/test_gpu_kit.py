"""The GPU kit (bench/gpu/kit.txt, kit.lock): the wheels the lent GPU machine lacks, which a device call carries.

That machine has no network: what the kit lacks, the GPU run cannot import, and a device call carries at most
64 MiB (the working tree, the wheels and the shards together). kit.lock is written by bench/gpu/build_kit.sh.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
GPU = REPO / "bench" / "gpu"
CARRY_LIMIT = 64 * 2**20  # the device tool's limit on what one call carries
SHARDS_ALLOWANCE = 8 * 2**20  # bench/gpu/make_kit_data.py's shards measured 4.5 MiB


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def kit_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (GPU / "kit.txt").read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if not spec:
            continue
        name, sep, version = spec.partition("==")
        assert sep, f"kit.txt: {spec!r} is not pinned with =="
        assert norm(name) not in pins, f"kit.txt names {name} twice"
        pins[norm(name)] = version
    return pins


def constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.strip().split("==")
            pins[norm(name)] = version
    return pins


def lock() -> list[tuple[str, int, str]]:
    rows = []
    for line in (GPU / "kit.lock").read_text().splitlines():
        name, size, sha = line.split("\t")
        rows.append((name, int(size), sha))
    return rows


def test_every_kit_pin_is_the_tested_version():
    pins, tested = kit_pins(), constraints()
    assert pins, "kit.txt pins nothing"
    wrong = {n: (v, tested.get(n)) for n, v in pins.items() if tested.get(n) != v}
    assert not wrong, f"kit.txt differs from constraints.txt (kit, constraints): {wrong}"


def test_the_lock_holds_one_wheel_per_pin_for_the_lent_python():
    pins = kit_pins()
    seen: dict[str, str] = {}
    for filename, size, sha in lock():
        name, version, *tags = filename.removesuffix(".whl").split("-")
        assert norm(name) not in seen, f"two wheels of {name} in kit.lock: two versions stop the whole install"
        seen[norm(name)] = version
        python, abi, platform = tags[-3:]
        # pure Python, or built for CPython 3.12 (abi3 from an older minor works there too), on x86-64 manylinux
        assert python.startswith("py") or python == "cp312" or (abi == "abi3" and python in ("cp310", "cp311")), filename
        assert platform == "any" or ("manylinux" in platform and "x86_64" in platform), filename
        assert size > 0 and re.fullmatch(r"[0-9a-f]{64}", sha), filename
    assert seen == pins, f"kit.lock {seen} vs kit.txt {pins}"
    deepspeed = next(f for f, _, _ in lock() if f.startswith("deepspeed-"))
    assert deepspeed.endswith("-py3-none-any.whl"), "deepspeed must be built with its ops off (a pure wheel)"


def test_the_kit_and_the_tree_fit_one_device_call():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    tree = sum((REPO / f).stat().st_size for f in files.decode().split("\0") if f and (REPO / f).is_file())
    wheels = sum(size for _, size, _ in lock())
    total = tree + wheels + SHARDS_ALLOWANCE
    print(f"tree {tree / 2**20:.1f} MiB + wheels {wheels / 2**20:.1f} MiB + shards {SHARDS_ALLOWANCE / 2**20:.0f} MiB")
    assert total < CARRY_LIMIT, f"{total / 2**20:.1f} MiB would travel; a device call carries {CARRY_LIMIT / 2**20:.0f}"


def test_the_check_script_parses_and_uses_the_no_index_install():
    for script in ("bench/gpu_check.sh", "bench/gpu/build_kit.sh", "bench/gpu/rehearse.sh"):
        subprocess.run(["bash", "-n", str(REPO / script)], check=True)
    text = (REPO / "bench" / "gpu_check.sh").read_text()
    assert "--no-index --no-deps --no-compile --no-cache-dir --upgrade" in text
    assert "2>/dev/null" not in text.split("summary()")[1], "no stderr dropped after the setup: failures must show"


def package_imports() -> dict[str, str]:
    """{top-level module: the first file importing it} for every non-stdlib import in affectverse_ds (any depth)."""
    import ast
    import sys

    found: dict[str, str] = {}
    for path in sorted((REPO / "affectverse_ds").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "affectverse_ds":
                    found.setdefault(top, str(path.relative_to(REPO)))
    return found


def distribution_of(module: str) -> str:
    from importlib.metadata import packages_distributions

    dists = packages_distributions().get(module)
    assert dists, f"{module}: imported by the package but installed by no distribution here"
    return norm(dists[0])


def declared(name: str) -> set[str]:
    return {norm(re.split(r"[<>=!~ ]", line.split("#")[0].strip())[0])
            for line in (REPO / name).read_text().splitlines() if line.split("#")[0].strip()}


OPTIONAL = {"flash_attn"}  # requirements-gpu.txt: the GPU extra, imported only when installed


def test_every_third_party_import_is_a_declared_requirement():
    """A user's `pip install -r requirements.txt` must give the package all it imports (scipy came only with
    the test extras before)."""
    imports = package_imports()
    assert {"torch", "transformers", "deepspeed"} <= set(imports), "the scan is not seeing the package's imports"
    runtime = declared("requirements.txt")
    missing = {m: f for m, f in imports.items() if m not in OPTIONAL and distribution_of(m) not in runtime}
    assert not missing, f"imported but not in requirements.txt: {missing}"


def test_every_import_reaches_the_lent_gpu_machine():
    """What the package imports is in the image or in the kit, or is named as not carried (PyAV, flash-attn):
    a new dependency that the kit lacks would otherwise surface only on the GPU, minutes into a device call."""
    image = {norm(n) for line in (GPU / "image_packages.txt").read_text().splitlines()
             if not line.startswith("#") for n in line.split()}
    there = image | set(kit_pins())
    not_carried = {"av": "PyAV: decodes raw media only (bench/gpu/kit.txt)", "flash_attn": "optional GPU extra"}
    missing = {m: f for m, f in package_imports().items() if m not in not_carried and distribution_of(m) not in there}
    assert not missing, f"imported but neither in the GPU image nor in bench/gpu/kit.txt: {missing}"
