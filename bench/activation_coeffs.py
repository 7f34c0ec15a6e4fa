"""Per-token activation bytes of the AffectVerse training forward at 7B widths, for the planner.

    OMP_NUM_THREADS=1 python bench/activation_coeffs.py [--seconds 0.7] [--batch 2] [--out affectverse_ds/plan_coeffs.json]

The 7B thinker config with the decoder at 1 and at 2 layers (2 vision blocks, 2 audio layers; widths real),
bf16, LoRA + EWM of the 7B preset, one training forward with autograd's saved tensors counted (unique
storages, parameters excluded), with and without gradient checkpointing. The slope over depth is the bytes
per token per decoder layer, the rest at depth 1 the per-token base (embeddings, EWM, LM head at labels).
Weights are left uninitialised (``to_empty``): saved-tensor sizes do not depend on values, and an init of
1.6B parameters would cost minutes. Tokens are few because bf16 matmuls on CPUs without AVX512-BF16 are
slow; the bytes scale linearly with tokens (SDPA keeps no T x T matrix).

What a real step holds, and so what is measured (issue 23): LoRA dropout as configured (the paper's 0.05:
PEFT saves each adapter's dropped input), a padded batch of clips of different lengths (batch 2 by default),
so the coefficients are per *padded* position (what a micro batch really carries through every layer), and
the padding mask makes transformers' SDPA path repeat K/V to all query heads (``repeat_kv``: no GQA kernel
with a mask), which autograd keeps too. A batch of 1 without padding showed none of the three.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import shlex
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from step_overhead import synthetic_batch  # noqa: E402

from affectverse_ds.config import load_config  # noqa: E402
from affectverse_ds.memory_plan import saved_activation_bytes  # noqa: E402
from affectverse_ds.model.affect_model import assemble_model  # noqa: E402
from affectverse_ds.model.backbone import Thinker, freeze  # noqa: E402
from affectverse_ds.tools.make_shaped_backbone import shaped_thinker_config  # noqa: E402


def shaped_thinker(layers: int) -> torch.nn.Module:
    config = shaped_thinker_config(layers=layers)
    config._attn_implementation = "sdpa"
    config.text_config._attn_implementation = "sdpa"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # to_empty allocates in the meta tensors' dtype: bf16, not fp32
    try:
        with torch.device("meta"):
            thinker = Thinker(config)
    finally:
        torch.set_default_dtype(previous)
    thinker = thinker.to_empty(device="cpu")
    with torch.no_grad():
        for p in thinker.parameters():
            p.normal_(0.0, 0.02)  # finite values; only the sizes of saved tensors are read
        for buf in thinker.buffers():
            if buf.is_floating_point():
                buf.zero_()  # rotary frequencies / sinusoids are computed at init, not loaded: any finite value
    freeze(thinker)
    return thinker


def _measure_here(cfg, batch, layers: int, checkpointing: bool) -> int:
    cfg = copy.deepcopy(cfg)
    cfg.backbone.gradient_checkpointing = checkpointing
    model = assemble_model(shaped_thinker(layers), cfg).train()
    return saved_activation_bytes(model, batch, torch.Generator().manual_seed(0))


def measure(args, layers: int, checkpointing: bool) -> int:
    """One measurement in a fresh process: a model freed inside one process did not give its 3 GB back."""
    cmd = [sys.executable, __file__, "--config", args.config, "--seconds", str(args.seconds), "--batch",
           str(args.batch), "--single", f"{layers},{int(checkpointing)}"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="launch/configs/affectverse_7b.yaml")
    p.add_argument("--seconds", type=float, default=0.7)
    p.add_argument("--batch", type=int, default=2, help=">= 2: clips of different lengths, padded")
    p.add_argument("--out", default=None, help="write the coefficients JSON here")
    p.add_argument("--single", default=None, help=argparse.SUPPRESS)  # "layers,ckpt": one measurement, bytes printed
    args = p.parse_args(argv)
    cfg = load_config(args.config)  # LoRA dropout as configured (the paper's 0.05)
    batch = synthetic_batch(args.batch, args.seconds, cfg.data.frame_size, cfg.data.fps, 10, 4, seed=0, device="cpu")
    real = int(batch["attention_mask"].sum())
    tokens = int(batch["attention_mask"].numel())  # padded positions: every layer carries them
    if args.single:
        layers, ckpt = (int(x) for x in args.single.split(","))
        print(_measure_here(cfg, batch, layers, bool(ckpt)))
        return 0
    got = {}
    for ckpt in (False, True):
        for layers in (1, 2):
            got[(layers, ckpt)] = measure(args, layers, ckpt)
            print(f"layers {layers} checkpointing {ckpt}: {got[(layers, ckpt)]} bytes saved "
                  f"over {tokens} padded positions ({real} real tokens)", flush=True)
    per_layer = (got[(2, False)] - got[(1, False)]) / tokens
    per_layer_ckpt = (got[(2, True)] - got[(1, True)]) / tokens
    base = got[(1, False)] / tokens - per_layer
    result = {
        "bytes_per_token_per_layer": round(per_layer, 1),
        "bytes_per_token_per_layer_checkpointed": round(per_layer_ckpt, 1),
        "bytes_per_token_base": round(base, 1),
        "measured_on": f"7B-shaped thinker (1 and 2 decoder layers), bf16, {args.config}, LoRA dropout "
                       f"{cfg.lora.dropout}, {tokens} padded positions ({real} real tokens; batch {args.batch}, "
                       f"~{args.seconds} s clips at {cfg.data.frame_size} px, {cfg.data.fps} FPS)",
        "per": "padded position (micro batch x padded width)",
        "saved_bytes": {f"layers{k[0]}_{'ckpt' if k[1] else 'plain'}": v for k, v in got.items()},
        "command": "OMP_NUM_THREADS=1 python bench/activation_coeffs.py " + " ".join(map(shlex.quote, argv or sys.argv[1:])),
        "date": datetime.date.today().isoformat(),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
