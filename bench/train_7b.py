"""The paper's configuration at 7B shapes on one GPU: tokens/s, MFU and peak memory, flash-attn vs SDPA.

    python bench/train_7b.py [--steps 10] [--batch 4] [--seconds 7.5] [--layers 28] [--json OUT.json]

``--layers 2`` runs the 7B-shaped model (the real config with the decoder cut to 2 layers, 2 vision blocks and
2 audio layers, as ``affectverse_ds.tools.make_shaped_backbone`` writes it). Beside the measured peak it
prints the planner's prediction for the same run (``affectverse_ds.memory_plan``: weights + gradients + optimizer
state + activations, no runtime reserve; plain AdamW here, so the planner's fp32 master copy of the 35M
trainable parameters, ~0.1 GB, is counted but not allocated).

Random weights (speed does not depend on the values), the real Qwen2.5-Omni-7B thinker architecture
(launch/configs/qwen2_5_omni_7b_thinker.json), LoRA r=16 + the EWM, bf16, micro-batch 4 of about
1024 tokens (a 7.5 s clip at 3 FPS, 224 px: 704 video + 188 audio tokens, plus text), AdamW steps on
the trainable parameters. Both attention kernels are measured in the same run when flash-attn is
installed. MFU uses the FLOP count of affectverse_ds/train/logging.py. Without a CUDA GPU it says so
and exits 0.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_overhead import random_thinker, synthetic_batch, thinker_from_config  # noqa: E402  (bench helper beside this file)
from gpu.phases import record  # noqa: E402

from affectverse_ds import memory_plan, preflight  # noqa: E402
from affectverse_ds.config import load_config  # noqa: E402
from affectverse_ds.tools.make_shaped_backbone import shaped_thinker_config  # noqa: E402
from affectverse_ds.model.affect_model import assemble_model  # noqa: E402
from affectverse_ds.train.logging import FlopCounter, device_peak_tflops  # noqa: E402


def shaped_random_thinker(layers: int, device) -> torch.nn.Module:
    """The 7B config with the decoder cut to ``layers`` (towers at 2 blocks), random, bf16, on ``device``."""
    return thinker_from_config(shaped_thinker_config(layers=layers), device, torch.bfloat16)


def predicted_peak_gb(cfg, layers: int, batch: int, tokens_per_sample: int, reserve_gb: float | None) -> float:
    arch = None if layers == 28 else shaped_thinker_config(layers=layers)
    counts = memory_plan.count_parameters(cfg, arch)
    mem = memory_plan.memory_plan(counts, memory_plan.load_coeffs(), 1, batch, tokens_per_sample,
                                  cfg.backbone.gradient_checkpointing, 2, reserve_gb=reserve_gb)
    return mem.peak / 2**30


def sdpa_kernels(step) -> list[str]:
    """The aten attention kernels one call of ``step`` ran (``_scaled_dot_product_{flash,efficient,cudnn}_attention``
    or the ``math`` fallback, which materialises the whole T x T score matrix)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    return sorted({e.key for e in prof.key_averages() if "scaled_dot_product" in e.key and e.key.startswith("aten::_")})


def build(args, cfg, device, attn: str):
    dtype = torch.bfloat16
    if args.layers == 28:
        thinker = random_thinker(cfg.backbone.arch_config, device, dtype)
    else:
        thinker = shaped_random_thinker(args.layers, device)
    thinker.config._attn_implementation = attn
    thinker.config.text_config._attn_implementation = attn
    return assemble_model(thinker, cfg).to(device)


def measure(attn: str, args, cfg, device, measured_peak: float | None) -> dict:
    cuda = device.type == "cuda"
    model = build(args, cfg, device, attn).train()
    trainable = [p for _, p in model.trainable_parameters()]
    opt = torch.optim.AdamW(trainable, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    flops = FlopCounter.from_model(model.thinker, sum(p.numel() for p in trainable))
    batches = [synthetic_batch(args.batch, args.seconds, cfg.data.frame_size, cfg.data.fps, 40, 12, seed=i,
                               device=device) for i in range(args.steps + args.warmup)]
    gen = torch.Generator().manual_seed(0)

    def step(batch):
        out = model(batch, generator=gen)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    kernels = sdpa_kernels(lambda: step(batches[0]))  # also the first warm-up step
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, tokens, step_flops = [], 0, 0.0
    for i, batch in enumerate(batches[1:], start=1):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(batch)
        if cuda:
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            n = int(batch["attention_mask"].sum())
            tokens += n
            step_flops += flops.step_flops(n, int(batch["feature_attention_mask"].sum()),
                                           int(batch["pixel_values_videos"].shape[0]))
    elapsed = sum(times)
    sheet = device_peak_tflops(device)
    achieved = step_flops / elapsed / 1e12
    padded = max(int(b["attention_mask"].shape[1]) for b in batches)
    per_sample = tokens // (len(times) * args.batch)
    row = {"attn": attn, "layers": args.layers, "sdpa_kernels": kernels,
           "math_fallback": any("math" in k for k in kernels), "lora_dropout": cfg.lora.dropout,
           "micro_batch": args.batch, "tokens_per_sample": per_sample, "padded_width": padded,
           "tokens_per_s": round(tokens / elapsed, 1), "tflops": round(achieved, 1),
           "mfu_datasheet": round(achieved / sheet, 4) if sheet else None, "datasheet_tflops": sheet,
           "mfu_measured_peak": round(achieved / measured_peak, 4) if measured_peak else None,
           "measured_peak_tflops": measured_peak, "step_s": round(elapsed / len(times), 4)}
    if cuda:
        row.update(peak_allocated_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                   peak_reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 2))
    # the planner at the padded width (what SDPA and the activations really hold) and at the mean
    for key, width in (("planner_padded_gib", padded), ("planner_mean_gib", per_sample)):
        row[key] = round(predicted_peak_gb(cfg, args.layers, args.batch, width, None), 2)
    # against max_memory_allocated: the planner without its reserve (context and allocator slack)
    row["planner_allocated_gib"] = round(predicted_peak_gb(cfg, args.layers, args.batch, padded, 0.0), 2)
    del model, opt
    if cuda:
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="launch/configs/affectverse_7b.yaml")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=7.5)
    parser.add_argument("--layers", type=int, default=28, help="decoder layers (28: the full 7B; 2: 7B-shaped)")
    parser.add_argument("--attn", default=None, help="only this kernel (sdpa / flash_attention_2)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--summary", default=None, help="record the rows into DIR/summary.json (bench/gpu_check.sh)")
    parser.add_argument("--cpu", action="store_true", help="rehearsal: run on the CPU anyway (tiny shapes)")
    parser.add_argument("overrides", nargs="*", help="config overrides")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.cpu:
        print("train_7b: no CUDA GPU here; nothing measured (run it on a GPU machine)")
        return 0
    cfg = load_config(args.config, args.overrides)  # LoRA dropout as configured: the paper's 0.05
    arch = cfg.backbone.arch_config
    preflight.exit_on_failure(lambda: preflight.require([lambda: preflight.present(
        arch, "backbone.arch_config", f"set it in {args.config} (a thinker config JSON), run from the repository root")]))
    device = torch.device("cpu" if args.cpu else "cuda")
    kernels = (["flash_attention_2"] if importlib.util.find_spec("flash_attn") and not args.cpu else []) + ["sdpa"]
    if args.attn:
        kernels = [args.attn]
    measured_peak = None
    if args.summary:
        path = Path(args.summary) / "summary.json"
        if path.is_file():
            measured_peak = json.loads(path.read_text()).get("a_env", {}).get("bf16_matmul_tflops")
    rows = []
    for k in kernels:
        rows.append(measure(k, args, cfg, device, measured_peak))
        r = rows[-1]
        print(f"{r['attn']:>18}: {r['tokens_per_s']:8.0f} tokens/s  {r['tflops']:6.1f} TFLOP/s  "
              f"MFU {r['mfu_datasheet']} (datasheet) {r['mfu_measured_peak']} (measured peak)  "
              f"peak {r.get('peak_allocated_gib')} GiB allocated, {r.get('peak_reserved_gib')} reserved "
              f"(planner {r['planner_padded_gib']} at the padded width)  step {r['step_s']} s  kernels {r['sdpa_kernels']}")
        if args.summary:
            record(Path(args.summary), "c_step_7b", {"rows": rows})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if len(rows) == 2:
        print(f"flash-attn / SDPA tokens/s: {rows[0]['tokens_per_s'] / rows[1]['tokens_per_s']:.2f}x")
    # the math fallback materialises T x T scores per head: a run that takes it is not the configuration measured
    math_rows = [r["attn"] for r in rows if r["math_fallback"] and device.type == "cuda"]
    if args.summary:
        record(Path(args.summary), "c_step_7b", {"ok": not math_rows, "device": torch.cuda.get_device_name(device)
                                                 if device.type == "cuda" else "cpu"})
    if math_rows:
        print(f"train_7b: SDPA took the math fallback ({math_rows}): refused", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
