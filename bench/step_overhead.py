"""Step time and memory of AffectVerse vs the LoRA-only baseline, side by side on the same batches and backbone.

    OMP_NUM_THREADS=1 python bench/step_overhead.py --config launch/configs/tiny.yaml     # tiny preset, CPU
    python bench/step_overhead.py --config launch/configs/affectverse_7b.yaml --7b-shapes  # random 7B, one GPU
    OMP_NUM_THREADS=2 python bench/step_overhead.py --config launch/configs/affectverse_7b.yaml --7b-shapes \
        --backbone DIR --steps 1 --warmup 0 --no-plain   # CPU: a make_shaped_backbone DIR (real widths, bf16)
    OMP_NUM_THREADS=1 python bench/step_overhead.py --config launch/configs/affectverse_7b.yaml --7b-shapes \
        --layers 2 --device cpu --batch 1 --steps 2 --warmup 1 --no-plain  # CPU: random 7B widths, decoder at 2 layers (bf16)

One training step = forward + backward (no optimizer: identical for both). The
two models share one LoRA-wrapped thinker; steps alternate baseline /
AffectVerse so drift hits both alike. Memory: autograd-saved activations
(exact, any device) and, on CUDA, peak allocated memory above the weights.
The AffectVerse step is broken down into towers+embedding, the full-observation
pass, EWM, host-side planning and the second pass (forward; backward is the rest).
The EWM's other context source (the leak-free "past" default vs the literal "full",
issue 15) runs side by side on the same weights: ``step_time_ratio_context_<other>``, and
``step_time_ratio_past_over_full`` is the cost of the past's own log-mel and tower passes on the cut clip
(issue 24) over the full-clip towers alone.
Target (issue 3): AffectVerse step <= 1.3x the baseline step; at 7B widths (issue 17) <= 1.2x.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from affectverse_ds import preflight  # noqa: E402
from affectverse_ds.config import AffectVerseConfig, load_config  # noqa: E402
from affectverse_ds.data.batch import (  # noqa: E402
    AUDIO_BOS_ID, AUDIO_EOS_ID, AUDIO_TOKEN_ID, IGNORE_INDEX, IM_END_ID, IM_START_ID, VIDEO_TOKEN_ID,
    VISION_BOS_ID, VISION_EOS_ID,
)
from affectverse_ds.data import processing  # noqa: E402
from affectverse_ds.data.collator import EncodedSample, collate  # noqa: E402
from affectverse_ds.memory_plan import saved_activation_bytes  # noqa: E402
from affectverse_ds.model import affect_model as am  # noqa: E402
from affectverse_ds.model import injection as inj  # noqa: E402
from affectverse_ds.model.backbone import Thinker, freeze, load_thinker, read_thinker_config  # noqa: E402


# ----------------------------------------------------------------------------- synthetic batches


def synthetic_batch(b: int, seconds: float, frame_size: int, fps: float, text_len: int, answer_len: int,
                    seed: int, device) -> dict:
    """A batch in the collator's contract, made by the collator itself (``data.collator.collate``): every sample
    has video + audio of ``seconds`` (lengths vary +-25%) and random text."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    patches = frame_size // 14
    for _ in range(b):
        sec = seconds * float(torch.empty(1).uniform_(0.75, 1.25, generator=g))
        grid_t = max(int(sec * fps) // 2, 1)
        n_video = grid_t * (patches // 2) ** 2
        mel = int(sec * 100)
        n_audio = ((mel - 1) // 2 + 1 - 2) // 2 + 1
        text = torch.randint(0, 150000, (text_len + answer_len,), generator=g).tolist()
        ids = [IM_START_ID] + text[:8] + [IM_END_ID, IM_START_ID] + text[8:10]
        ids += [VISION_BOS_ID] + [VIDEO_TOKEN_ID] * n_video + [VISION_EOS_ID]
        ids += [AUDIO_BOS_ID] + [AUDIO_TOKEN_ID] * n_audio + [AUDIO_EOS_ID]
        ids += text[10:text_len] + [IM_END_ID, IM_START_ID, 77091, 198]
        answer = len(ids)
        ids += text[text_len:] + [IM_END_ID]
        pixels = torch.randn(grid_t * patches * patches, 3 * 2 * 14 * 14, generator=g)
        # the waveform rides along (the leak-free past cuts it and makes its own log-mel in the step);
        # random features of its frame count stand in for its log-mel: the towers' cost is the same
        wave = 0.1 * torch.randn(mel * processing.HOP_LENGTH, generator=g)
        feats = torch.randn(128, mel, generator=g)
        samples.append(EncodedSample(
            input_ids=np.array(ids, dtype=np.int64), labels=np.array([IGNORE_INDEX] * answer + ids[answer:]),
            answer_start=answer, pixel_values=pixels.numpy(), grid_thw=(grid_t, patches, patches),
            second_per_grid=2.0 / fps, audio_features=feats.numpy(), meta={}, waveform=wave.numpy()))
    batch = collate(samples)
    del batch["meta"]
    return {k: v.to(device) for k, v in batch.items()}


# ----------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Phases:
    """Wall time per phase of the AffectVerse step, by wrapping the model's pieces (bench only)."""

    def __init__(self, model: am.AffectVerseModel, device: torch.device):
        self.times: dict[str, float] = defaultdict(float)
        self.device = device
        self._wrap(model, "_embed", lambda *a, **k: "towers+embed")
        self._wrap(model, "_embed_past", lambda *a, **k: "past_towers+log_mel")
        self._wrap(model, "_decoder", lambda *a, **k: "pass2_forward" if torch.is_grad_enabled() else "full_obs_pass")
        if model.ewm is not None:
            self._wrap(model.ewm, "forward", lambda *a, **k: "ewm_forward")
        self._wrap(inj, "build_plan", lambda *a, **k: "host_planning")

    def _wrap(self, owner, name: str, label) -> None:
        fn = getattr(owner, name)

        def timed(*args, **kwargs):
            _sync(self.device)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            _sync(self.device)
            self.times[label(*args, **kwargs)] += time.perf_counter() - t0
            return out

        setattr(owner, name, timed)


def decoder_columns(model, batches: list[dict]) -> dict[str, float]:
    """Token columns the decoder runs per step, with and without grad (mean over ``batches``).

    At real widths the decoder's FLOPs follow these counts; on the tiny CPU model the number of decoder
    calls (each a fixed overhead) weighs as much, so the two are reported beside the step times.
    """
    cols = {"grad": 0, "no_grad": 0, "calls": 0}
    fn = model._decoder

    def counted(x, *args, **kwargs):
        cols["grad" if torch.is_grad_enabled() else "no_grad"] += x.shape[0] * x.shape[1]
        cols["calls"] += 1
        return fn(x, *args, **kwargs)

    model._decoder = counted
    try:
        gen = torch.Generator().manual_seed(0)
        for batch in batches:
            model(batch, generator=gen)  # the graph is dropped with the output
    finally:
        del model._decoder  # the instance attribute; the class's method shows again
    return {k: round(v / len(batches), 1) for k, v in cols.items()}


def one_step(model, batch, generator, device) -> tuple[float, int]:
    """Seconds for forward + backward, and CUDA peak bytes above the starting allocation (0 on CPU)."""
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    out = model(batch, generator=generator)
    out.loss.backward()
    _sync(device)
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() - start if device.type == "cuda" else 0
    for _, p in model.trainable_parameters():
        p.grad = None
    return dt, peak


def compare(affect: am.AffectVerseModel, cfg: AffectVerseConfig, batches: list[dict], warmup: int,
            device: torch.device, plain_variant: bool = True) -> dict:
    base_cfg = copy.deepcopy(cfg)
    base_cfg.ewm.enabled, base_cfg.ewm.temporal_split = False, False
    baseline = am.AffectVerseModel(affect.thinker, None, base_cfg)
    plain = am.AffectVerseModel(affect.thinker, affect.ewm, cfg, share_prefix=False)
    # the other EWM context (issue 15): leak-free "past" vs the literal Algorithm 1 "full", same weights
    other_cfg = copy.deepcopy(cfg)
    other_cfg.ewm.context_source = "full" if cfg.ewm.context_source == "past" else "past"
    other = am.AffectVerseModel(affect.thinker, affect.ewm, other_cfg)
    other_name = f"affectverse_context_{other_cfg.ewm.context_source}"
    models = {"baseline": baseline.train(), "affectverse": affect.train(), "affectverse_no_prefix_sharing": plain.train(),
              other_name: other.train()}
    if not plain_variant:
        del models["affectverse_no_prefix_sharing"]
    if not cfg.ewm.enabled:
        del models[other_name]
    times: dict[str, list[float]] = {k: [] for k in models}
    peaks: dict[str, int] = {k: 0 for k in models}
    gens = {k: torch.Generator().manual_seed(0) for k in models}
    for step, batch in enumerate([batches[0]] * warmup + batches):
        for name, model in models.items():
            dt, peak = one_step(model, batch, gens[name], device)
            if step >= warmup:
                times[name].append(dt)
                peaks[name] = max(peaks[name], peak)
    saved = {k: saved_activation_bytes(m, batches[0], torch.Generator().manual_seed(0)) for k, m in models.items()}
    columns = {k: decoder_columns(m, batches) for k, m in models.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    # phase breakdown: the same batches once more through AffectVerse with timers around its pieces
    phases = Phases(affect, device)
    t0 = time.perf_counter()
    for batch in batches:
        one_step(affect, batch, gens["affectverse"], device)
    n = len(batches)
    total_ms = 1000 * (time.perf_counter() - t0) / n
    phase_ms = {k: round(1000 * v / n, 2) for k, v in sorted(phases.times.items())}
    phase_ms["lm_head_loss_backward_rest"] = round(total_ms - sum(phase_ms.values()), 2)
    result = {
        "device": str(device), "steps": n,
        "step_ms": {k: round(1000 * v, 2) for k, v in med.items()},
        "step_time_ratio": round(med["affectverse"] / med["baseline"], 3),
        "step_time_ratio_no_prefix_sharing": (round(med["affectverse_no_prefix_sharing"] / med["baseline"], 3)
                                              if plain_variant else None),
        "context_source": cfg.ewm.context_source,
        f"step_time_ratio_context_{other_cfg.ewm.context_source}": (
            round(med[other_name] / med["baseline"], 3) if other_name in med else None),
        # the leak-free past (its own log-mel and tower passes on the cut clip, issue 24) over the literal
        # Algorithm 1 (full-clip towers only), same weights and batches
        "step_time_ratio_past_over_full": (
            round((med["affectverse"] / med[other_name]) ** (1 if cfg.ewm.context_source == "past" else -1), 3)
            if other_name in med else None),
        "decoder_columns_per_step": columns,
        "saved_activations_mb": {k: round(v / 2**20, 2) for k, v in saved.items()},
        "saved_activation_ratio": round(saved["affectverse"] / max(saved["baseline"], 1), 3),
        "affectverse_phase_ms": phase_ms,
    }
    if device.type == "cuda":
        result["peak_mb_above_weights"] = {k: round(v / 2**20, 1) for k, v in peaks.items()}
        result["peak_memory_ratio"] = round(peaks["affectverse"] / max(peaks["baseline"], 1), 3)
    return result


# ----------------------------------------------------------------------------- presets


def random_thinker(arch_config: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The thinker architecture with random weights (timing only)."""
    return thinker_from_config(read_thinker_config(arch_config), device, dtype)


def thinker_from_config(config, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A frozen thinker with random weights built from ``config`` in ``dtype`` on ``device`` (SDPA)."""
    config._attn_implementation = "sdpa"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            thinker = Thinker(config)
    finally:
        torch.set_default_dtype(previous)
    freeze(thinker)
    return thinker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="launch/configs/tiny.yaml")
    parser.add_argument("--7b-shapes", dest="big", action="store_true", help="random-weight 7B thinker on one GPU")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=None, help="micro-batch (default: train.micro_batch)")
    parser.add_argument("--seconds", type=float, default=4.0, help="clip length (video + audio)")
    parser.add_argument("--arch", default=None, help="(--7b-shapes) thinker config JSON; default backbone.arch_config")
    parser.add_argument("--device", default=None, help="(--7b-shapes) override the device, e.g. cpu for a smoke run")
    parser.add_argument("--backbone", default=None, help="(--7b-shapes) a make_shaped_backbone folder, loaded in bf16")
    parser.add_argument("--layers", type=int, default=None,
                        help="(--7b-shapes) decoder layers, vision and audio towers at 2 (make_shaped_backbone), bf16")
    parser.add_argument("--no-plain", action="store_true", help="skip the no-prefix-sharing variant (slow CPUs)")
    parser.add_argument("--json", default=None, help="also write the result here")
    parser.add_argument("--summary", default=None, help="record the result into DIR/summary.json (bench/gpu_check.sh)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    b = args.batch or cfg.train.micro_batch
    if args.big and args.backbone:
        device = torch.device(args.device or "cpu")
        cfg.backbone.path, cfg.backbone.dtype, cfg.backbone.attn_implementation = args.backbone, "bfloat16", "sdpa"
        model = am.build_model(cfg, device)
        steps = args.steps or 1
    elif args.big:
        device = torch.device(args.device or "cuda")
        if device.type == "cuda" and not torch.cuda.is_available():
            print("step_overhead --7b-shapes: no CUDA GPU here; nothing measured (run it on a GPU machine)")
            return 0
        dtype = torch.bfloat16 if device.type == "cuda" or args.layers else torch.float32
        if args.layers:  # the depth-reduced 7B: real widths, every tower and the decoder cut alike
            from affectverse_ds.tools.make_shaped_backbone import shaped_thinker_config

            thinker = thinker_from_config(shaped_thinker_config(layers=args.layers), device, dtype)
        else:
            thinker = random_thinker(args.arch or cfg.backbone.arch_config, device, dtype)
        model = am.assemble_model(thinker, cfg).to(dtype)
        steps = args.steps or 5
    else:
        device = torch.device("cpu")
        preflight.ensure_tiny_backbone(cfg.backbone.path)  # written when absent, as the demo does
        preflight.exit_on_failure(lambda: preflight.require([lambda: preflight.backbone(cfg.backbone.path)]))
        model = am.assemble_model(load_thinker(cfg.backbone, device), cfg)
        steps = args.steps or 10
    batches = [synthetic_batch(b, args.seconds, cfg.data.frame_size, cfg.data.fps, 60, 6, seed=i, device=device)
               for i in range(steps)]
    result = compare(model, cfg, batches, args.warmup, device, plain_variant=not args.no_plain)
    result.update(batch=b, seq_len=int(batches[0]["attention_mask"].sum(1).max()), config=args.config)
    for key, value in result.items():
        print(f"{key:28s} {value}")
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.summary:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from gpu.phases import record

        record(Path(args.summary), "d_overhead", {**result, "ok": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
