"""The phases of ``bench/gpu_check.sh``; each writes its rows into ``$OUT/summary.json`` the moment it has them.

    python bench/gpu/phases.py env      --out DIR [--rehearsal]   (a) versions, imports, CUDA, bf16 matmul peak
    python bench/gpu/phases.py train    --out DIR [--rehearsal]   (b) DeepSpeed ZeRO-2 bf16 through the launcher
    python bench/gpu/phases.py summary  --out DIR                  the table of everything recorded

Phases (c) and (d) are ``bench/train_7b.py`` and ``bench/step_overhead.py`` (their ``--summary`` flag records
into the same file). A phase that fails records ``{"ok": false, "error": ...}`` and exits non-zero; every
phase runs whatever failed before it. ``--rehearsal``: the same steps on the CPU with the tiny backbone (gloo).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import json
import math
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KIT = REPO / "bench" / "gpu" / "kit.txt"
IMAGE_PACKAGES = ("torch", "triton", "numpy", "pyyaml", "pillow", "safetensors", "tokenizers", "huggingface_hub",
                  "accelerate", "pyarrow", "tensorboard", "psutil", "jinja2", "matplotlib")


def record(out: Path, phase: str, rows: dict) -> None:
    """Merge ``rows`` into ``out/summary.json`` under ``phase`` (tmp + rename: a kill never leaves half a file)."""
    if str(REPO) not in sys.path:  # affectverse_ds.files is stdlib only: importable even where torch is broken
        sys.path.insert(0, str(REPO))
    from affectverse_ds.files import atomic_write

    path = out / "summary.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.setdefault(phase, {}).update(rows)
    atomic_write(path, json.dumps(data, indent=2, default=str))


def kit_pins() -> dict[str, str]:
    pins = {}
    for line in KIT.read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if spec:
            name, version = spec.split("==")
            pins[name] = version
    return pins


# ----------------------------------------------------------------------------- (a) environment


def import_everything() -> tuple[int, dict[str, str]]:
    """Import every module of the package; returns (imported, {module: why not}) for those that need a
    package the kit does not carry (PyAV). Any other failure raises."""
    import affectverse_ds

    done, missing = 0, {}
    for mod in pkgutil.walk_packages(affectverse_ds.__path__, "affectverse_ds."):
        try:
            importlib.import_module(mod.name)
            done += 1
        except ModuleNotFoundError as err:
            if err.name != "av":
                raise
            missing[mod.name] = "needs av (PyAV: decodes raw media files; not carried, see bench/gpu/kit.txt)"
    return done, missing


def _version_text(version) -> str:
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)  # a tuple in torch 2.x


def bf16_matmul_tflops(n: int = 8192, reps: int = 10) -> float:
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def phase_env(out: Path, rehearsal: bool) -> int:
    import torch

    versions = {}
    for name in sorted(set(IMAGE_PACKAGES) | set(kit_pins())):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    wrong = {n: (versions[n], v) for n, v in kit_pins().items() if versions[n] != v}
    rows = {"python": sys.version.split()[0], "versions": versions, "kit_mismatch": wrong,
            "cuda": torch.cuda.is_available(), "torch_cuda": torch.version.cuda, "rehearsal": rehearsal}
    for name, v in sorted(versions.items()):
        print(f"  {name:18s} {v}")
    record(out, "a_env", rows)
    if wrong:
        raise SystemExit(f"kit versions differ from bench/gpu/kit.txt (installed, wanted): {wrong}")
    done, missing = import_everything()
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    rows = {"modules_imported": done, "modules_not_imported": missing, "deepspeed": deepspeed.__version__,
            "deepspeed_accelerator": get_accelerator().device_name()}
    print(f"imported {done} modules; not imported (named reason): {len(missing)}; "
          f"deepspeed accelerator: {rows['deepspeed_accelerator']}")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        rows.update(device=p.name, memory_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count,
                    nccl=_version_text(torch.cuda.nccl.version()))
        rows["bf16_matmul_tflops"] = round(bf16_matmul_tflops(), 1)
        print(f"{p.name}: {rows['memory_gib']} GiB; bf16 8192^3 matmul {rows['bf16_matmul_tflops']} TFLOP/s")
    elif not rehearsal:
        record(out, "a_env", {**rows, "ok": True, "no_cuda_device": True})
        print("gpu_check: no CUDA device visible to torch; nothing to measure")
        return 3  # the one outcome the script turns into a clean exit
    record(out, "a_env", {**rows, "ok": True})
    return 0


# ----------------------------------------------------------------------------- (b) DeepSpeed through the launcher


def _launch(cmd: list[str], log: Path, env: dict) -> float:
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ... exited {proc.returncode} (log: {log.name})")
    return time.perf_counter() - t0


def phase_train(out: Path, rehearsal: bool, work: Path) -> int:
    """Two launches of ``deepspeed --num_gpus 1 launch/train.py``: steps 1-2 (stop_after_steps), then
    ``--resume auto`` to step 4; accumulation 2; a checkpoint (and its export) at steps 2 and 4."""
    from affectverse_ds.distributed import free_port

    shards = REPO / os.environ.get("KIT", ".gpukit") / "shards"
    if not (shards / "sizes.json").is_file():
        raise SystemExit(f"no kit shards in {shards}: run `python bench/gpu/make_kit_data.py` here first")
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    backbone = work / "backbone"
    if rehearsal:
        from affectverse_ds.tools.make_tiny_backbone import make_tiny_backbone

        make_tiny_backbone(backbone)
        config = "launch/configs/tiny.yaml"
    else:
        from affectverse_ds.tools.make_shaped_backbone import make_shaped_backbone

        make_shaped_backbone(backbone, layers=2)
        config = "launch/configs/affectverse_7b.yaml"
    record(out, "b_train", {"backbone": "tiny" if rehearsal else "7B-shaped, 2 decoder layers",
                            "backbone_write_s": round(time.perf_counter() - t0, 1)})
    run = work / "run"
    overrides = [f"backbone.path={backbone}", "backbone.dtype=bfloat16", "backbone.attn_implementation=sdpa",
                 f"data.shard_dir={shards}", "data.train_benchmarks={affectdyn: 1.0}", "data.eval_benchmarks=[affectdyn]",
                 "data.num_workers=2", "train.micro_batch=2", "train.grad_accum=2", "train.global_batch=null",
                 "train.max_steps=4", "train.save_every=2", "train.log_every=1", "train.precision=bf16",
                 "train.warmup_ratio=0.0", f"train.out_dir={run}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(REPO)]))
    if rehearsal:
        env["OMP_NUM_THREADS"] = "1"
    launcher = shutil.which("deepspeed", path=os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]]))
    if launcher is None:
        raise SystemExit("no `deepspeed` launcher on PATH (the kit installs it into its --target's bin/)")
    base = [launcher, "--num_gpus", "1", "--master_port", str(free_port()), "launch/train.py",
            "--ds", "ds_configs/zero2.json", "--config", config, *overrides]
    log = out / "b_train.log"
    first = _launch(base + ["train.stop_after_steps=2"], log, env)
    record(out, "b_train", {"launch_1_s": round(first, 1)})
    base[4] = str(free_port())
    second = _launch(base + ["--resume", "auto"], log, env)
    text = log.read_text()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    backends = sorted(set(re.findall(r"process group: (\w+)", text)))
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step_*") if (p / "COMPLETE").is_file())
    export = run / "checkpoints" / "step_000004" / "export"
    result = {
        "launch_2_s": round(second, 1), "steps": [r["step"] for r in rows], "backend": backends,
        "resumed": "resumed from" in text, "complete_checkpoints": ckpts,
        "export_files": sorted(str(p.relative_to(export)) for p in export.rglob("*") if p.is_file()),
        "losses": [round(r["loss/total"], 5) for r in rows],
        "step_time_s": [round(r["step_time_s"], 3) for r in rows],
        "tokens_per_s": [round(sum(v for k, v in r.items() if k.startswith("tokens_per_s/")), 1) for r in rows],
        "peak_memory_gb": [round(r["peak_memory_gb"], 2) for r in rows],
    }
    problems = []
    if result["steps"] != [1, 2, 3, 4]:
        problems.append(f"logged steps {result['steps']}, expected [1, 2, 3, 4]")
    if not all(math.isfinite(x) for x in result["losses"]):
        problems.append(f"non-finite loss {result['losses']}")
    if result["backend"] != (["gloo"] if rehearsal else ["nccl"]):
        problems.append(f"process group backend {result['backend']}")
    if not result["resumed"] or ckpts != ["step_000002", "step_000004"]:
        problems.append(f"resume {result['resumed']}, complete checkpoints {ckpts}")
    if not {"lora/adapter_model.safetensors", "ewm.safetensors"} <= set(result["export_files"]):
        problems.append(f"export holds {result['export_files']}")
    record(out, "b_train", {**result, "ok": not problems, "problems": problems})
    print(json.dumps(result, indent=1))
    if problems:
        raise SystemExit("; ".join(problems))
    return 0


# ----------------------------------------------------------------------------- the table


def phase_summary(out: Path) -> int:
    data = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    for phase in ("a_env", "b_train", "c_step_7b", "d_overhead"):
        rows = data.get(phase)
        state = "missing" if rows is None else ("ok" if rows.get("ok") else "FAILED")
        print(f"\n[{phase}] {state}")
        for k, v in (rows or {}).items():
            if k not in ("versions",):
                print(f"  {k}: {json.dumps(v, default=str)[:300]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("phase", choices=["env", "train", "summary"])
    p.add_argument("--out", required=True)
    p.add_argument("--rehearsal", action="store_true", help="CPU, tiny backbone, gloo")
    p.add_argument("--work", default=None, help="scratch folder (default: OUT/../gpu_check_work)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.phase == "summary":
        return phase_summary(out)
    phase = {"env": "a_env", "train": "b_train"}[args.phase]
    try:
        if args.phase == "env":
            return phase_env(out, args.rehearsal)
        return phase_train(out, args.rehearsal, Path(args.work or out.parent / "gpu_check_work"))
    except BaseException as err:  # recorded first, then re-raised: the summary says why a phase stopped
        record(out, phase, {"ok": False, "error": f"{type(err).__name__}: {err}"})
        raise


if __name__ == "__main__":
    sys.exit(main())
