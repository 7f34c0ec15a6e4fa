"""The batch contract between the collator (`data/collator.py`) and the model (`model/affect_model.py`).

One batch is a plain dict; tensors go to the device, ``meta`` stays on the host.
Multimodal entries are listed in sample order, only for the samples that have
that modality (``has_video`` / ``has_audio`` say which).
"""
from __future__ import annotations

from typing import Any, TypedDict

import torch

PAD_TOKEN_ID = 151643  # <|endoftext|>
IGNORE_INDEX = -100
VIDEO_TOKEN_ID = 151656  # <|VIDEO|>
AUDIO_TOKEN_ID = 151646  # <|AUDIO|>
VISION_BOS_ID = 151652
VISION_EOS_ID = 151653
AUDIO_BOS_ID = 151647
AUDIO_EOS_ID = 151648
IM_START_ID = 151644
IM_END_ID = 151645


class Batch(TypedDict, total=False):
    input_ids: torch.Tensor  # (B, L) long, right-padded with PAD_TOKEN_ID; placeholders expanded to tower token counts
    attention_mask: torch.Tensor  # (B, L) long, 1 on real tokens
    labels: torch.Tensor  # (B, L) long, IGNORE_INDEX except the assistant answer tokens (and its <|im_end|>)
    answer_start: torch.Tensor  # (B,) long, index of the first token after "<|im_start|>assistant\n"
    pixel_values_videos: torch.Tensor  # (sum_i t_i*h_i*w_i, 3*2*14*14) float, Qwen2-VL patch layout
    video_grid_thw: torch.Tensor  # (n_videos, 3) long, in patches (before the 2x2 merge)
    video_second_per_grid: torch.Tensor  # (n_videos,) float, seconds per temporal grid (2 frames / fps)
    input_features: torch.Tensor  # (n_audios, 128, T_max) float, Whisper log-mel
    feature_attention_mask: torch.Tensor  # (n_audios, T_max) long
    # the raw waveforms behind input_features (16 kHz mono), zero-padded: the model cuts them at the keep point and
    # makes the observed past's own log-mel and audio-tower pass (model/past_inputs.py)
    audio_waveform: torch.Tensor  # (n_audios, S_max) float
    audio_waveform_lengths: torch.Tensor  # (n_audios,) long, samples; audio_feature_length(n) = mask sum
    has_video: torch.Tensor  # (B,) bool
    has_audio: torch.Tensor  # (B,) bool
    meta: list[dict[str, Any]]  # per sample: benchmark, split, name, label, answer, ... (host only)


def to_device(batch: Batch, device: torch.device | str) -> Batch:
    """Move every tensor of the batch to ``device``; ``meta`` stays as it is."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
