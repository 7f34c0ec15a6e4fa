"""Model inputs of one sample: frames -> vision patches, audio -> Whisper features, and the token budget.

Pure functions (numpy, plus transformers' ``WhisperFeatureExtractor`` for the
log-mel), run inside the loader workers. The layouts and lengths here are the
ones Qwen2.5-Omni's thinker expects:

- video: Qwen2-VL patches (temporal patch 2, patch 14, 2x2 merge, CLIP mean/std),
  ``t*h*w/4`` LLM tokens per clip;
- audio: 128-bin Whisper log-mel (10 ms hop), ``audio_output_length(mel frames)``
  LLM tokens per clip (the audio tower's conv + pooling arithmetic).
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
# OpenAI CLIP statistics, as in the backbone's preprocessor_config.json
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
RESCALE = 1.0 / 255.0
HOP_LENGTH = 160  # Whisper's 10 ms hop at 16 kHz
N_FFT = 400
PATCH_DIM = 3 * TEMPORAL_PATCH_SIZE * PATCH_SIZE * PATCH_SIZE  # 1176


# ----------------------------------------------------------------------------- video


def decode_frames(jpegs: list[bytes], indices: list[int] | np.ndarray | None = None,
                  size: int | None = None) -> np.ndarray:
    """Decode the JPEG frames at ``indices`` (all when None) into a (T, H, W, 3) uint8 array.

    ``size``: resize each frame to size x size (``data.frame_size``) when the shards hold another
    size; shards keep the paper's 224 px, and a smaller model input (the tiny preset) is made here.
    """
    picked = jpegs if indices is None else [jpegs[i] for i in indices]
    out = None
    for i, data in enumerate(picked):
        with Image.open(io.BytesIO(data)) as im:
            im = im if im.mode == "RGB" else im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            if out is None:
                out = np.empty((len(picked), im.height, im.width, 3), dtype=np.uint8)
            if im.size != (out.shape[2], out.shape[1]):
                raise ValueError(f"frame {i} is {im.width}x{im.height}, frame 0 is {out.shape[2]}x{out.shape[1]}")
            out[i] = np.asarray(im)
    if out is None:
        raise ValueError("no frames to decode")
    return out


def patchify_frames(frames: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Frames in Qwen2-VL's flat patch layout, normalised with the CLIP statistics.

    An odd frame count is padded by repeating the last frame, as Qwen's video
    processor does. Frames are used at their stored size (224x224 in the shards),
    which must be a multiple of 28 (patch 14 x merge 2).

    Args:
        frames: (T, H, W, 3) uint8 RGB.
    Returns:
        patches: (t*h*w, 3*2*14*14) float32; rows ordered (t, h/2, w/2, 2, 2), each row (C, 2, 14, 14).
        grid_thw: (t, h, w) in patches before the 2x2 merge.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be (T, H, W, 3) with T >= 1, got {frames.shape}")
    n, height, width, _ = frames.shape
    factor = PATCH_SIZE * MERGE_SIZE
    if height % factor or width % factor:
        raise ValueError(f"frame size {height}x{width} is not a multiple of {factor}")
    if pad := -n % TEMPORAL_PATCH_SIZE:
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
        n += pad
    t, h, w = n // TEMPORAL_PATCH_SIZE, height // PATCH_SIZE, width // PATCH_SIZE
    m = MERGE_SIZE
    x = frames.reshape(t, TEMPORAL_PATCH_SIZE, h // m, m, PATCH_SIZE, w // m, m, PATCH_SIZE, 3)
    # -> (t, h/m, w/m, m_h, m_w, C, temporal, p_h, p_w): merge groups are contiguous rows.
    # Rearranged while still uint8 (a quarter of the bytes of float32), then normalised in place.
    x = x.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7).reshape(t * h * w, 3, PATCH_DIM // 3).astype(np.float32)
    x *= np.float32(RESCALE)
    x -= CLIP_MEAN[:, None]
    x /= CLIP_STD[:, None]
    return x.reshape(t * h * w, PATCH_DIM), (t, h, w)


def video_token_count(n_frames: int, height: int, width: int) -> int:
    """LLM tokens of a clip after the vision tower's 2x2 merge: t*h*w/4."""
    t = math.ceil(n_frames / TEMPORAL_PATCH_SIZE)
    return t * (height // PATCH_SIZE) * (width // PATCH_SIZE) // (MERGE_SIZE * MERGE_SIZE)


def uniform_frame_indices(n_total: int, n_keep: int) -> np.ndarray:
    """``n_keep`` distinct frame indices spread evenly over ``0..n_total-1``, first and last included, in order."""
    if not 1 <= n_keep <= n_total:
        raise ValueError(f"cannot keep {n_keep} of {n_total} frames")
    if n_keep == 1:
        return np.zeros(1, dtype=np.int64)
    # the step (n_total-1)/(n_keep-1) is >= 1, so rounding never merges two indices
    return np.round(np.linspace(0, n_total - 1, n_keep)).astype(np.int64)


def video_second_per_grid(n_total: int, n_keep: int, fps: float) -> float:
    """Seconds covered by one temporal grid (2 frames) of the kept frames.

    Without subsampling this is Qwen's ``temporal_patch_size / fps``; uniform
    subsampling stretches the frame spacing by ``(n_total-1)/(n_keep-1)``, and the
    rotary time positions must follow the true time.
    """
    spacing = (n_total - 1) / (n_keep - 1) if n_keep < n_total and n_keep > 1 else 1.0
    return TEMPORAL_PATCH_SIZE * spacing / fps


# ----------------------------------------------------------------------------- audio


def audio_feature_length(n_samples: int) -> int:
    """Valid Whisper mel frames of ``n_samples`` (the attention-mask sum): one per started 10 ms hop."""
    return -(-n_samples // HOP_LENGTH)


def audio_output_length(n_mel_frames: int) -> int:
    """LLM tokens the thinker's audio tower makes from ``n_mel_frames`` valid mel frames.

    Same arithmetic as ``Qwen2_5OmniAudioEncoder._get_feat_extract_output_lengths``:
    the stride-2 conv, then the stride-2 average pool. Not a call to it: that is a private method of the model
    module, which loader workers would otherwise import; tests/data/test_processing.py checks it for 1..30000.
    """
    after_conv = (n_mel_frames - 1) // 2 + 1
    return (after_conv - 2) // 2 + 1


def audio_token_count(n_samples: int) -> int:
    """LLM tokens of a waveform of ``n_samples``: the collator's count (mel frames, then the tower's arithmetic)."""
    return audio_output_length(audio_feature_length(n_samples))


# the shortest waveform that makes one audio token: 3 mel frames (audio_output_length(2) = 0)
MIN_AUDIO_SAMPLES = 2 * HOP_LENGTH + 1


def audio_keep_samples(kappa: float, n_samples: int) -> int:
    """The keep point of a waveform at keep ratio ``kappa``, in samples: ``floor(kappa * n)`` (float64; at one
    sample the floor's bias is nothing, unlike at ``model.ewm.split_points``' whole units), at least
    :data:`MIN_AUDIO_SAMPLES` so one token is kept, at most ``n``. The observed past is the waveform's first
    ``audio_keep_samples`` samples and its token count is :func:`audio_token_count` of them: exactly what the
    collator makes of a clip cut there.
    """
    return min(n_samples, max(math.floor(float(kappa) * n_samples), MIN_AUDIO_SAMPLES))


def max_mel_frames_for_tokens(n_tokens: int) -> int:
    """The largest mel-frame count whose audio makes at most ``n_tokens`` tokens (inverse of audio_output_length)."""
    # audio_output_length(L) = (ceil(L/2) - 2) // 2 + 1 <= n  <=>  ceil(L/2) <= 2n + 1  <=>  L <= 4n + 2
    return 4 * n_tokens + 2


def audio_features(audio: np.ndarray, extractor) -> np.ndarray:
    """128-bin Whisper log-mel of a mono 16 kHz clip, trimmed to its real length.

    Qwen's processor pads every clip to the extractor's 300 s window and keeps the
    attention mask. Zero padding reaches every frame the same way as that long
    padding once the clip has ``N_FFT`` zeros after it, and the log-mel floor
    (max - 8) is set by non-silent frames only, so padding to the next hop plus
    ``N_FFT`` gives the same valid frames at a fraction of the cost.

    Args:
        audio: (n_samples,) float mono at the extractor's sampling rate.
        extractor: a ``WhisperFeatureExtractor`` (the backbone's preprocessor).
    Returns:
        (128, audio_feature_length(n_samples)) float32.
    """
    n = int(audio.shape[0])
    if n < 1:
        raise ValueError("empty audio")
    n_frames = audio_feature_length(n)
    padded_len = n_frames * HOP_LENGTH + N_FFT
    out = extractor(
        audio.astype(np.float32), sampling_rate=extractor.sampling_rate, padding="max_length",
        max_length=padded_len, truncation=False, return_attention_mask=True, return_tensors="np",
    )
    mask_len = int(out["attention_mask"][0].sum())
    if mask_len != n_frames:
        raise RuntimeError(f"Whisper attention mask covers {mask_len} frames, expected {n_frames} for {n} samples")
    return np.ascontiguousarray(out["input_features"][0, :, :n_frames], dtype=np.float32)


# ----------------------------------------------------------------------------- token budget


@dataclass(frozen=True)
class BudgetPlan:
    """What of a sample's video and audio fits in ``max_seq_len``.

    Args:
        frame_indices: frames to keep, in order (empty without video).
        audio_samples: leading audio samples to keep (0 without audio).
        video_tokens: LLM tokens of the kept frames.
        audio_tokens: LLM tokens of the kept audio.
        second_per_grid: seconds per temporal grid of the kept frames.
        reduced: True when frames or audio were dropped to fit.
        over_budget: True when even the minimum media plus the full text exceed ``max_seq_len``
            (the text and answer are never cut, so such a sample stays longer).
    """

    frame_indices: np.ndarray
    audio_samples: int
    video_tokens: int
    audio_tokens: int
    second_per_grid: float
    reduced: bool
    over_budget: bool

    def total(self, n_text_tokens: int) -> int:
        return n_text_tokens + self.video_tokens + self.audio_tokens


def plan_budget(
    n_text_tokens: int,
    n_frames: int,
    audio_samples: int,
    *,
    frame_hw: tuple[int, int],
    fps: float,
    sample_rate: int,
    max_seq_len: int,
    max_audio_seconds: float,
    min_frames: int,
) -> BudgetPlan:
    """Fit video and audio into ``max_seq_len`` next to ``n_text_tokens`` text tokens (prompt and answer).

    Audio is first capped at ``max_audio_seconds``. If the sequence is still too
    long, frames are subsampled uniformly (order kept) to an even count no lower
    than ``min_frames``; if that is not enough, audio is cut to the tokens left
    (at least one). Text tokens, the answer included, are never removed.
    Frames give way before audio: consecutive 3 FPS frames are close to redundant,
    while prosody carries more of the signal (the paper's no-audio ablation loses
    more than its no-video one).

    Args:
        n_text_tokens: every non-placeholder token of the sequence.
        n_frames: frames available (0: no video).
        audio_samples: audio samples available (0: no audio).
        frame_hw: (height, width) of the frames.
    """
    height, width = frame_hw
    grid_tokens = video_token_count(TEMPORAL_PATCH_SIZE, height, width)  # tokens per 2 frames
    keep_samples = min(audio_samples, int(max_audio_seconds * sample_rate))
    reduced = keep_samples < audio_samples
    audio_tokens = audio_output_length(audio_feature_length(keep_samples)) if keep_samples else 0
    n_keep = n_frames
    video_tokens = video_token_count(n_frames, height, width) if n_frames else 0
    room = max_seq_len - n_text_tokens - audio_tokens
    if n_frames and video_tokens > room:
        floor_frames = min(n_frames, max(TEMPORAL_PATCH_SIZE, min_frames + min_frames % TEMPORAL_PATCH_SIZE))
        fit = TEMPORAL_PATCH_SIZE * (max(room, 0) // grid_tokens)  # even: whole temporal grids
        n_keep = max(floor_frames, min(n_frames, fit))
        video_tokens = video_token_count(n_keep, height, width)
        reduced = reduced or n_keep < n_frames
    room = max_seq_len - n_text_tokens - video_tokens
    if keep_samples and audio_tokens > room:
        capped = min(keep_samples, max_mel_frames_for_tokens(max(room, 1)) * HOP_LENGTH)
        reduced = reduced or capped < keep_samples
        keep_samples = capped
        audio_tokens = audio_output_length(audio_feature_length(keep_samples))
    frame_indices = uniform_frame_indices(n_frames, n_keep) if n_frames else np.zeros(0, dtype=np.int64)
    return BudgetPlan(
        frame_indices=frame_indices,
        audio_samples=keep_samples,
        video_tokens=video_tokens,
        audio_tokens=audio_tokens,
        second_per_grid=video_second_per_grid(n_frames, n_keep, fps) if n_frames else 0.0,
        reduced=reduced,
        over_budget=n_text_tokens + video_tokens + audio_tokens > max_seq_len,
    )
