"""What users see: a rank-0 progress bar, TensorBoard scalars and the same numbers in a JSONL file.

MFU uses this FLOP count per optimizer step (dense matmul FLOPs, 2 per multiply-add):
  LoRA pass, forward + backward through the frozen LM: 2*N_lm*T forward + 2*N_lm*T for the
    activation gradients (frozen weights get no weight gradients) = 4*N_lm*T
  full-observation pass (no_grad, decoder only):       2*N_lm*T
  audio/video towers (frozen, run once, outputs reused): 2*N_audio*T_audio_in + 2*N_vision*T_patches
  LoRA adapters and EWM: 6*N_trainable*T (small)
with N_lm the language model's parameters without the embedding table, T the tokens in the step.
Attention's T^2 term is left out (under 10% at 1024 tokens for the 7B model), so MFU is slightly understated.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# Dense bf16 peak TFLOP/s by device name fragment (vendor data sheets), for MFU.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0, "4090": 165.0}


def device_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


@dataclass
class FlopCounter:
    """Parameter counts behind the FLOP formula in this module's docstring."""

    n_lm: int
    n_audio: int
    n_vision: int
    n_trainable: int

    @classmethod
    def from_model(cls, thinker: torch.nn.Module, n_trainable: int) -> "FlopCounter":
        inner = thinker.get_base_model() if hasattr(thinker, "get_base_model") else thinker
        lm = inner.model.language_model
        n_embed = lm.embed_tokens.weight.numel()
        return cls(
            n_lm=sum(p.numel() for p in lm.parameters()) - n_embed,
            n_audio=sum(p.numel() for p in inner.model.audio_tower.parameters()),
            n_vision=sum(p.numel() for p in inner.model.visual.parameters()),
            n_trainable=n_trainable,
        )

    def step_flops(self, tokens: int, audio_frames: int, video_patches: int) -> float:
        lm = 6 * self.n_lm * tokens  # 4 (LoRA fwd+bwd) + 2 (full-observation pass)
        towers = 2 * self.n_audio * audio_frames + 2 * self.n_vision * video_patches
        return float(lm + towers + 6 * self.n_trainable * tokens)


@dataclass
class MetricsLogger:
    """Rank-0 writer of TensorBoard scalars and JSONL lines; a no-op on other ranks."""

    out_dir: Path
    enabled: bool
    _tb: Any = field(default=None, init=False)
    _jsonl: Any = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._tb = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))
            self._jsonl = open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        for key, value in scalars.items():
            if value is not None:
                self._tb.add_scalar(key, value, step)
        self._jsonl.write(json.dumps({"step": step, "time": time.time(), **scalars}) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()


def peak_memory_gb(device: torch.device) -> float:
    """On CUDA the peak allocated since the last call (so each logged step shows its own peak, not the run's
    largest so far); on CPU the process's peak RSS, which cannot be reset."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB -> GiB
