"""Memory and time plan of a training run, before any GPU is touched.

    python -m affectverse_ds.memory_plan --config launch/configs/affectverse_7b.yaml --gpus 8 --gpu-memory-gb 80 \
        [--mfu 0.35] [--gpu-tflops 989] [--tokens-per-sample N] [--zero 2] [key=value ...]

Parameters are counted on the meta-device thinker (``backbone.arch_config``), LoRA from the shapes of the
layers it wraps and the EWM built on the meta device. Bytes per GPU follow DeepSpeed's bf16 mixed precision:
bf16 module weights, bf16 gradients during backward, and an fp32 master copy + Adam's two fp32 moments of the
trainable parameters, partitioned over the data-parallel ranks (ZeRO-2: optimizer state and gradients;
ZeRO-3: also the weights). Activations per micro-batch = micro x tokens x (base + layers x per-layer), with the
per-token bytes measured on the 7B-shaped model (``affectverse_ds/plan_coeffs.json``, written by
``bench/activation_coeffs.py``, which records its command). Tokens per sample default to
``data.max_seq_len`` (the budget's worst case, and what a padded micro batch carries: the coefficients are
per padded position, measured with the configured LoRA dropout and a padding mask, under which SDPA repeats
K/V to every query head). The reserve adds the CUDA context and the allocator's slack (constants below). FLOPs per step use ``train.logging.FlopCounter``'s formula.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from affectverse_ds.config import AffectVerseConfig, ConfigError, load_config
from affectverse_ds.model.summary import ParamCounts, count_parameters  # noqa: F401 (the one count; bench uses it from here)

COEFFS = Path(__file__).resolve().parent / "plan_coeffs.json"
GIB = 2**30
# What PyTorch's allocated bytes do not show, per GPU (the reserve; both numbers assumed until a lent GPU
# measures them: bench/gpu_check.sh records peak allocated and reserved beside this prediction):
# - the CUDA context with cuBLAS/cuDNN workspaces and NCCL's communicator buffers, outside PyTorch's allocator;
CUDA_CONTEXT_GB = 1.5
# - the caching allocator's slack: reserved above allocated, from activations of differing sizes
#   (a padded micro batch changes width every step), as a fraction of the allocated peak.
ALLOCATOR_SLACK = 0.10


def load_coeffs(path: str | Path = COEFFS) -> dict:
    data = json.loads(Path(path).read_text())
    for key in ("bytes_per_token_per_layer", "bytes_per_token_per_layer_checkpointed", "bytes_per_token_base"):
        if key not in data:
            raise ConfigError(f"{path}: missing {key}")
    data["_path"] = str(path)
    return data


@dataclass
class MemoryPlan:
    """Bytes per GPU of one configuration (ZeRO stage, world, micro batch)."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    reserve: float

    @property
    def peak(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.reserve


def activation_bytes(coeffs: dict, layers: int, micro: int, tokens: int, checkpointing: bool) -> float:
    """Saved activations of one micro-batch; with checkpointing, one layer is recomputed (held) at a time."""
    per_layer = coeffs["bytes_per_token_per_layer"]
    if checkpointing:
        per_token = coeffs["bytes_per_token_base"] + layers * coeffs["bytes_per_token_per_layer_checkpointed"] + per_layer
    else:
        per_token = coeffs["bytes_per_token_base"] + layers * per_layer
    return float(micro * tokens * per_token)


def saved_activation_bytes(model, batch, generator) -> int:
    """Bytes autograd keeps for backward in one training forward (unique storages, parameters excluded): the
    measurement behind the coefficients (bench/activation_coeffs.py) and the step benchmark's memory column."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(batch, generator=generator)
    del out
    return sum(seen.values())


def memory_plan(counts: ParamCounts, coeffs: dict, world: int, micro: int, tokens: int, checkpointing: bool,
                zero: int, reserve_gb: float | None = None, optimizer: bool = True) -> MemoryPlan:
    """DeepSpeed bf16 + ZeRO ``zero`` (2 or 3); ``optimizer=False``: a bare forward/backward (no Adam state).

    ``reserve_gb``: None adds :data:`CUDA_CONTEXT_GB` and :data:`ALLOCATOR_SLACK` of the allocated peak; a
    number replaces both (0: the allocated bytes alone, what a CPU process or ``max_memory_allocated`` shows).
    """
    t = counts.trainable
    if zero >= 3:
        # frozen and trainable weights partitioned; the gathered working set is ~2 layers (current + prefetch)
        weights = 2.0 * (counts.frozen + t) / world + 2 * 2.0 * counts.largest_layer
    else:
        weights = 2.0 * (counts.frozen + t)
    # bf16 gradients of the trainable parameters as backward writes them (ZeRO-3 keeps only the partition),
    # then the fp32 gradient partition the optimizer reads
    gradients = (2.0 * t if zero < 3 else 2.0 * t / world) + (4.0 * t / world if optimizer else 0.0)
    opt = 12.0 * t / world if optimizer else 0.0  # fp32 master + Adam m and v
    acts = activation_bytes(coeffs, counts.layers, micro, tokens, checkpointing)
    allocated = weights + gradients + opt + acts
    reserve = CUDA_CONTEXT_GB * GIB + ALLOCATOR_SLACK * allocated if reserve_gb is None else reserve_gb * GIB
    return MemoryPlan(weights, gradients, opt, acts, reserve)


def largest_micro_batch(counts, coeffs, world, tokens, checkpointing, zero, budget_bytes, limit=256,
                        reserve_gb: float | None = None) -> int:
    """The largest micro batch whose predicted peak fits ``budget_bytes`` (0: not even 1)."""
    best = 0
    for micro in range(1, limit + 1):
        if memory_plan(counts, coeffs, world, micro, tokens, checkpointing, zero, reserve_gb).peak > budget_bytes:
            break
        best = micro
    return best


def sample_composition(cfg: AffectVerseConfig, tokens: int) -> tuple[int, int]:
    """Audio mel frames and video patches of a sample of ``tokens`` tokens (a clip filling the budget).

    Per second of clip: fps/2 temporal patches of (frame/28)^2 merged tokens (4 pixel patches each) and
    25 audio tokens (4 mel frames each); ~60 tokens are text.
    """
    d = cfg.data
    video_per_s = d.fps / 2 * (d.frame_size // 28) ** 2
    seconds = max(tokens - 60, 0) / (video_per_s + 25)
    return int(seconds * 100), int(seconds * video_per_s * 4)


def step_flops(counts: ParamCounts, cfg: AffectVerseConfig, tokens: int) -> float:
    from affectverse_ds.train.logging import FlopCounter

    mel, patches = sample_composition(cfg, tokens)
    per_sample = FlopCounter(counts.lm, counts.audio, counts.vision, counts.trainable).step_flops(tokens, mel, patches)
    return per_sample * cfg.train.micro_batch * cfg.train.grad_accum


def steps_per_epoch(cfg: AffectVerseConfig, world: int) -> tuple[int | None, str]:
    """Optimizer steps per epoch, from the shard index (sizes.json) through the trainer's own run plan."""
    from affectverse_ds.data.loader import LoaderError, train_plan

    try:
        run = train_plan(cfg, world).run
    except (LoaderError, FileNotFoundError) as err:
        return None, f"unknown ({err})"
    return run.steps_per_epoch, (f"{run.micro_batches_per_epoch} micro-batches per rank // grad_accum "
                                 f"{cfg.train.grad_accum}, shard index {Path(cfg.data.shard_dir) / 'sizes.json'}")


def _gb(x: float) -> str:
    return f"{x / GIB:7.2f} GiB"


def render(cfg: AffectVerseConfig, counts: ParamCounts, coeffs: dict, world: int, gpu_gb: float, mfu: float,
           gpu_tflops: float, tokens: int, zero: int) -> tuple[str, bool]:
    """The printed plan and whether the configured run fits."""
    t = cfg.train
    ckpt = cfg.backbone.gradient_checkpointing
    lines = [f"plan: {world} GPU(s) x {gpu_gb:g} GB, micro batch {t.micro_batch} x accum {t.grad_accum}, "
             f"{tokens} tokens/sample, gradient checkpointing {'on' if ckpt else 'off'}, ZeRO-{zero}",
             f"parameters: frozen {counts.frozen / 1e9:.3f}B, trainable {counts.trainable / 1e6:.2f}M "
             f"(LoRA {counts.lora / 1e6:.2f}M, EWM {counts.ewm / 1e6:.2f}M), decoder layers {counts.layers}"]
    lines.append(f"{'per GPU':24s} {'ZeRO-2':>12s} {'ZeRO-3':>12s}")
    plans = {z: memory_plan(counts, coeffs, world, t.micro_batch, tokens, ckpt, z) for z in (2, 3)}
    for field in ("weights", "gradients", "optimizer", "activations", "reserve", "peak"):
        lines.append(f"{field:24s} {_gb(getattr(plans[2], field)):>12s} {_gb(getattr(plans[3], field)):>12s}")
    for flag in (False, True):
        acts = activation_bytes(coeffs, counts.layers, t.micro_batch, tokens, flag)
        lines.append(f"activations/micro-batch, checkpointing {'on ' if flag else 'off'}: {_gb(acts)}")
    budget = gpu_gb * GIB
    fits = plans[zero].peak <= budget
    best = largest_micro_batch(counts, coeffs, world, tokens, ckpt, zero, budget)
    verdict = "fits" if fits else "WILL NOT FIT"
    lines.append(f"predicted peak per GPU (ZeRO-{zero}): {_gb(plans[zero].peak)} of {gpu_gb:g} GB: {verdict}; "
                 f"largest micro batch that fits: {best}")
    if not fits and not ckpt:
        alt = largest_micro_batch(counts, coeffs, world, tokens, True, zero, budget)
        lines.append(f"  with backbone.gradient_checkpointing=true the largest micro batch would be {alt}")
    step_tokens = t.micro_batch * t.grad_accum * world * tokens
    flops = step_flops(counts, cfg, tokens) * world
    lines.append(f"per optimizer step: {step_tokens} tokens (upper bound), {flops / 1e15:.2f} PFLOP")
    n_steps, source = steps_per_epoch(cfg, world)
    if n_steps is None:
        lines.append(f"steps per epoch: {source}")
    else:
        total = n_steps * t.epochs if t.max_steps <= 0 else t.max_steps
        seconds = total * flops / (world * gpu_tflops * 1e12 * mfu)
        lines.append(f"steps per epoch: {n_steps} ({source}); {total} steps in all")
        lines.append(f"run time at MFU {mfu:.0%} of {gpu_tflops:g} TFLOP/s: {seconds / 3600:.1f} h")
    step_s = flops / (world * gpu_tflops * 1e12 * mfu)
    lines.append(f"time per optimizer step at MFU {mfu:.0%}: {step_s:.2f} s")
    lines.append(f"activation coefficients: {coeffs.get('measured_on', '?')} ({coeffs.get('_path', '?')}; "
                 f"the base term holds the LM head at the measured sample's few answer tokens, so longer "
                 f"samples are slightly overestimated)")
    return "\n".join(lines), fits


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--gpus", type=int, required=True, help="data-parallel GPUs")
    p.add_argument("--gpu-memory-gb", type=float, required=True)
    p.add_argument("--mfu", type=float, default=0.35, help="assumed model FLOP utilisation")
    p.add_argument("--gpu-tflops", type=float, default=989.0, help="dense bf16 peak per GPU (H100/H200: 989)")
    p.add_argument("--tokens-per-sample", type=int, default=None, help="default: data.max_seq_len")
    p.add_argument("--zero", type=int, choices=[2, 3], default=2, help="stage the verdict is for")
    p.add_argument("--coeffs", default=str(COEFFS))
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        coeffs = load_coeffs(args.coeffs)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = count_parameters(cfg)
    text, _ = render(cfg, counts, coeffs, args.gpus, args.gpu_memory_gb, args.mfu, args.gpu_tflops,
                     args.tokens_per_sample or cfg.data.max_seq_len, args.zero)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
