"""The observed past's own tower inputs: the waveform cut at the keep point and the kept video frame groups.

Under ``ewm.context_source = "past"`` a truncated sequence (the past pass, the keep-masked second pass, the
evaluation prompt at keep < 1) reads its A/V tokens from towers that saw the past alone, exactly as if the clip
had been cut at the keep point (``data/collator.py`` making the sample from the cut clip):

- audio: the waveform's first ``processing.audio_keep_samples(kappa, n)`` samples, zeros after them, their own
  Whisper log-mel (its floor at *their* maximum minus 8) and their own audio-tower pass (the tower attends both
  ways inside 2 s chunks, so the full clip's tokens before the cut have seen up to 2 s of the future);
- video: the first ``split_points(kappa, t)`` temporal groups (2 frames each) in their own vision-tower pass.

Their token counts are the ones the keep mask keeps (``injection.keep_counts``, which counts audio from the
same cut in samples). What is *not* covered, because it is decided before the model sees the batch: the frames
the loader samples (uniformly over the whole clip when it exceeds the frame budget, so their spacing and
``video_second_per_grid``, hence the M-RoPE time ids, depend on the clip's length) and an audio cap
(``data.max_audio_seconds`` or the token budget), both functions of the whole clip's length.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from affectverse_ds.data import processing
from affectverse_ds.data.processing import HOP_LENGTH, N_FFT
from affectverse_ds.model import injection as inj
from affectverse_ds.model import thinker_io

_FILTERS: dict[tuple[int, str], torch.Tensor] = {}


def mel_filters(n_mels: int, device: torch.device) -> torch.Tensor:
    """(1 + N_FFT/2, n_mels) float32 Slaney mel filters of ``WhisperFeatureExtractor`` (16 kHz, 0-8 kHz), cached."""
    key = (n_mels, str(device))
    if key not in _FILTERS:
        from transformers.audio_utils import mel_filter_bank

        bank = mel_filter_bank(num_frequency_bins=1 + N_FFT // 2, num_mel_filters=n_mels, min_frequency=0.0,
                               max_frequency=8000.0, sampling_rate=16000, norm="slaney", mel_scale="slaney")
        _FILTERS[key] = torch.from_numpy(bank).to(device, torch.float32)
    return _FILTERS[key]


def log_mel(wave: torch.Tensor, n_samples: list[int], filters: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Whisper log-mel of each waveform's first ``n_samples[i]`` samples, as ``processing.audio_features`` makes it
    for the clip cut there (zeros after the cut, the floor at its own maximum - 8), on ``wave``'s device.

    Args:
        wave: (N, S) float waveforms, zero-padded (samples at or after ``n_samples[i]`` are never read).
        n_samples: N cut points (host ints), each >= 1.
        filters: :func:`mel_filters` on ``wave``'s device.
    Returns:
        features (N, n_mels, T) float32 (zero past each clip's frames), mask (N, T) long; T = the most frames.
    """
    dev = wave.device
    frames = [processing.audio_feature_length(n) for n in n_samples]
    t = max(frames)
    # the collator pads a clip of f frames to f * HOP + N_FFT samples: every frame it reads lies inside this width
    width = t * HOP_LENGTH + N_FFT
    x = wave[:, :width].float()
    x = F.pad(x, (0, width - x.shape[1]))
    cut = torch.tensor(n_samples, device=dev)
    x = torch.where(torch.arange(width, device=dev)[None] < cut[:, None], x, 0.0)  # the future never enters
    window = torch.hann_window(N_FFT, device=dev)
    spec = torch.stft(x, N_FFT, HOP_LENGTH, window=window, return_complex=True)[..., :t + 2]  # (N, F, t + 2)
    log = (filters.T @ spec.abs().pow(2)).clamp(min=1e-10).log10()  # (N, n_mels, t + 2)
    n_frames = torch.tensor(frames, device=dev)[:, None]
    # the extractor's floor reads the f valid frames and the two after them (they hold the clip's last samples)
    seen = torch.arange(t + 2, device=dev)[None] < n_frames + 2
    top = log.masked_fill(~seen[:, None], float("-inf")).amax(dim=(1, 2), keepdim=True)
    log = (torch.maximum(log, top - 8.0) + 4.0) / 4.0
    valid = torch.arange(t, device=dev)[None] < n_frames  # (N, t)
    return log[..., :t] * valid[:, None], valid.long()


def cut_columns(regions: list[list[inj.Region]], kappa: torch.Tensor, kind: int) -> list[tuple[int, int, int]]:
    """(sample, first column, kept tokens) of every ``kind`` region in batch order, cut at the sample's kappa."""
    return [(i, r.start, inj.keep_counts(kappa[i], [r])[0])
            for i, regs in enumerate(regions) for r in regs if r.kind == kind]


@torch.no_grad()
def past_embeddings(core: nn.Module, batch: dict, base: torch.Tensor, regions: list[list[inj.Region]],
                    kappa: torch.Tensor, every_tower: bool = False) -> torch.Tensor:
    """``base`` (B, L, d) with each kept A/V column replaced by the cut clip's own tower output.

    Columns after the keep point keep ``base``'s values (no truncated sequence reads them).

    Args:
        core: the thinker (``thinker_io.core_of``).
        batch: the batch contract; audio needs ``audio_waveform`` and ``audio_waveform_lengths``.
        base: the embedding table to start from (token embeddings, with or without the full-clip towers).
        regions: ``injection.find_regions`` of the batch (audio regions with their sample counts).
        kappa: (B,) float64 keep ratios.
        every_tower: a tower whose stream the batch lacks still runs, on a blank input
            (``thinker_io.idle_video``: ZeRO-3 needs the same module calls on every rank).
    """
    b, length, d = base.shape
    flat = base.reshape(b * length, d).clone()
    dev = base.device
    if thinker_io.has_video(batch):
        grid = batch["video_grid_thw"]
        cuts = cut_columns(regions, kappa, inj.VIDEO)
        thw = grid.cpu().tolist()
        if len(cuts) != len(thw):
            raise ValueError(f"{len(thw)} videos but {len(cuts)} video regions")
        pixels, cut_grid, start = [], [], 0
        for (i, col, keep), (t, h, w) in zip(cuts, thw):
            groups = keep * processing.MERGE_SIZE ** 2 // (h * w)  # kept temporal groups
            pixels.append(batch["pixel_values_videos"][start:start + groups * h * w])
            cut_grid.append((groups, h, w))
            start += t * h * w
        tokens = thinker_io.video_tokens(core, torch.cat(pixels), torch.tensor(cut_grid, device=grid.device))
        _scatter(flat, cuts, length, tokens)
    elif every_tower:
        thinker_io.idle_video(core, dev)
    if thinker_io.has_audio(batch):
        if batch.get("audio_waveform") is None:
            raise ValueError("ewm.context_source=past cuts the audio at the keep point and needs the batch's "
                             "audio_waveform / audio_waveform_lengths (data/collator.py carries them)")
        cuts = cut_columns(regions, kappa, inj.AUDIO)
        lengths = batch["audio_waveform_lengths"].cpu().tolist()
        if len(cuts) != len(lengths):
            raise ValueError(f"{len(lengths)} waveforms but {len(cuts)} audio regions")
        n_cut = [processing.audio_keep_samples(float(kappa[i]), n) for (i, _, _), n in zip(cuts, lengths)]
        wave = batch["audio_waveform"]
        feats, mask = log_mel(wave, n_cut, mel_filters(thinker_io.mel_bins(core), wave.device))
        tokens = thinker_io.audio_tokens(core, feats, mask)
        _scatter(flat, cuts, length, tokens)
    elif every_tower:
        thinker_io.idle_audio(core, dev)
    return flat.view(b, length, d)


def _scatter(flat: torch.Tensor, cuts: list[tuple[int, int, int]], length: int, tokens: torch.Tensor) -> None:
    """Write ``tokens`` (sum kept, d), regions in order, into the rows of ``flat`` (B * L, d) the cuts name."""
    idx = torch.cat([i * length + col + torch.arange(keep) for i, col, keep in cuts])
    if idx.numel() != tokens.shape[0]:
        raise ValueError(f"the cut towers made {tokens.shape[0]} tokens, the keep mask keeps {idx.numel()}")
    flat[idx.to(flat.device)] = tokens.to(flat.dtype)
