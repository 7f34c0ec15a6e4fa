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

from affectverse_ds import memory_plan, preflight  # noqa: E402
from affectverse_ds.config import load_config  # noqa: E402
from affectverse_ds.tools.make_shaped_backbone import shaped_thinker_config  # noqa: E402
from affectverse_ds.model.affect_model import assemble_model  # noqa: E402
from affectverse_ds.train.logging import FlopCounter, device_peak_tflops  # noqa: E402


def shaped_random_thinker(layers: int, device) -> torch.nn.Module:
    """The 7B config with the decoder cut to ``layers`` (towers at 2 blocks), random, bf16, on ``device``."""
    return thinker_from_config(shaped_thinker_config(layers=layers), device, torch.bfloat16)


def predicted_peak_gb(cfg, layers: int, batch: int, tokens_per_sample: int) -> float:
    counts = memory_plan.count_parameters(cfg, None if layers == 28 else shaped_thinker_config(layers=layers))
    mem = memory_plan.memory_plan(counts, memory_plan.load_coeffs(), 1, batch, tokens_per_sample,
                           cfg.backbone.gradient_checkpointing, 2, reserve_gb=0.0)
    return mem.peak / 2**30


def measure(attn: str, args, cfg, device) -> dict:
    if args.layers == 28:
        thinker = random_thinker(cfg.backbone.arch_config, device, torch.bfloat16)
    else:
        thinker = shaped_random_thinker(args.layers, device)
    thinker.config._attn_implementation = attn
    thinker.config.text_config._attn_implementation = attn
    model = assemble_model(thinker, cfg).to(device)
    model.train()
    trainable = [p for _, p in model.trainable_parameters()]
    opt = torch.optim.AdamW(trainable, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    flops = FlopCounter.from_model(model.thinker, sum(p.numel() for p in trainable))
    batches = [synthetic_batch(args.batch, args.seconds, 224, 3.0, 40, 12, seed=i, device=device)
               for i in range(args.steps + args.warmup)]
    gen = torch.Generator().manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    times, tokens, step_flops = [], 0, 0.0
    for i, batch in enumerate(batches):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model(batch, generator=gen)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            n = int(batch["attention_mask"].sum())
            tokens += n
            step_flops += flops.step_flops(n, int(batch["feature_attention_mask"].sum()),
                                           int(batch["pixel_values_videos"].shape[0]))
    elapsed = sum(times)
    peak = device_peak_tflops(device)
    achieved = step_flops / elapsed / 1e12
    del model, thinker, opt
    torch.cuda.empty_cache()
    per_sample = tokens // (len(times) * args.batch)
    return {"attn": attn, "layers": args.layers, "tokens_per_s": tokens / elapsed, "tflops": achieved,
            "mfu": achieved / peak if peak else None, "peak_gb": torch.cuda.max_memory_allocated() / 2**30,
            "predicted_gb": predicted_peak_gb(cfg, args.layers, args.batch, per_sample),
            "tokens_per_sample": per_sample, "step_s": elapsed / len(times)}


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
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("train_7b: no CUDA GPU here; nothing measured (run it on a GPU machine)")
        return 0
    cfg = load_config(args.config, ["lora.dropout=0.0"])
    arch = cfg.backbone.arch_config
    preflight.exit_on_failure(lambda: preflight.require([lambda: preflight.present(
        arch, "backbone.arch_config", f"set it in {args.config} (a thinker config JSON), run from the repository root")]))
    device = torch.device("cuda")
    kernels = (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else []) + ["sdpa"]
    if args.attn:
        kernels = [args.attn]
    rows = [measure(k, args, cfg, device) for k in kernels]
    print(f"{torch.cuda.get_device_name(device)}; micro-batch {args.batch}, ~{args.seconds:.1f} s clips")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (unknown peak)"
        print(f"{r['attn']:>18}: {r['tokens_per_s']:8.0f} tokens/s  {r['tflops']:6.1f} TFLOP/s  MFU {mfu}  "
              f"peak {r['peak_gb']:.1f} GiB (planner {r['predicted_gb']:.1f})  step {r['step_s']:.3f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if len(rows) == 2:
        print(f"flash-attn / SDPA tokens/s: {rows[0]['tokens_per_s'] / rows[1]['tokens_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
