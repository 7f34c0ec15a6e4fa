"""Hand-built batches in the collator's contract (data/batch.py) for the tiny backbone: chat-rendered prompts,
random pixels and random waveforms with their Whisper log-mel (``processing.audio_features``, as the collator
makes it), collated by the data pipeline's own ``collate``."""
from __future__ import annotations

import numpy as np
import torch

from affectverse_ds.chat import build_messages, render
from affectverse_ds.data.batch import AUDIO_TOKEN_ID, IGNORE_INDEX, VIDEO_TOKEN_ID
from affectverse_ds.data import processing
from affectverse_ds.data.collator import EncodedSample, collate

PATCH_DIM = 3 * 2 * 14 * 14  # Qwen2-VL patch layout


def audio_tokens(n_frames: int) -> int:
    """Audio tower tokens for n mel frames (_get_feat_extract_output_lengths)."""
    return ((n_frames - 1) // 2 + 1 - 2) // 2 + 1


def _expand(ids: list[int], n_video: int, n_audio: int) -> list[int]:
    out = []
    for t in ids:
        out += [t] * (n_video if t == VIDEO_TOKEN_ID else n_audio if t == AUDIO_TOKEN_ID else 1)
    return out


def _left_pad(batch: dict) -> dict:
    """A right-padded batch with each row's padding moved to its front (answer_start shifted alike)."""
    n = batch["attention_mask"].sum(1)
    off = batch["attention_mask"].shape[1] - n
    for key in ("input_ids", "attention_mask", "labels"):
        batch[key] = torch.stack([row.roll(int(o)) for row, o in zip(batch[key], off)])
    batch["answer_start"] = batch["answer_start"] + off
    return batch


class BatchMaker:
    """make([dict(video=2 | 0, audio=frames | 0, subtitle=..., answer=...), ...], pad="right"|"left")."""

    def __init__(self, tokenizer):
        from transformers import WhisperFeatureExtractor

        self.tok = tokenizer
        self.extractor = WhisperFeatureExtractor(feature_size=128)  # Qwen2.5-Omni's (and the tiny backbone's)

    def sample(self, video: int = 2, audio: int = 60, subtitle: str = "I can't believe it", answer: str = "happy",
               seed: int = 0) -> dict:
        g = torch.Generator().manual_seed(seed)
        grid_t = max(video // 2, 1)
        n_v = grid_t * 4 if video else 0  # 56 x 56 frames: 4 x 4 patches -> 2 x 2 after merge
        n_a = audio_tokens(audio) if audio else 0
        msgs = build_messages("Which emotion?", subtitle, answer, has_video=bool(video), has_audio=bool(audio))
        full = _expand(self.tok(render(msgs), add_special_tokens=False).input_ids, n_v, n_a)
        prompt = _expand(self.tok(render(msgs[:2], add_generation_prompt=True), add_special_tokens=False).input_ids,
                         n_v, n_a)
        assert full[:len(prompt)] == prompt
        full = full[:-1]  # the trailing "\n" after <|im_end|>
        labels = [IGNORE_INDEX] * len(prompt) + full[len(prompt):]
        s = dict(ids=full, labels=labels, answer_start=len(prompt))
        if video:
            s["pixels"] = torch.randn(grid_t * 16, PATCH_DIM, generator=g)
            s["grid"] = [grid_t, 4, 4]
        if audio:  # `audio` mel frames: a waveform of audio * HOP samples (noise with a rising loudness)
            n = audio * processing.HOP_LENGTH
            s["wave"] = torch.randn(n, generator=g) * torch.linspace(0.05, 0.5, n)
            s["features"] = self.features(s["wave"])
        return s

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """The collator's log-mel of a waveform (128, mel frames)."""
        return torch.from_numpy(processing.audio_features(wave.numpy(), self.extractor))

    def collate(self, samples: list[dict], pad: str = "right") -> dict:
        """The data pipeline's own collate (``data.collator.collate``: right padding, placeholder counts
        checked), then moved to the left when asked."""
        batch = collate([EncodedSample(
            input_ids=np.array(s["ids"], dtype=np.int64), labels=np.array(s["labels"], dtype=np.int64),
            answer_start=s["answer_start"], pixel_values=s["pixels"].numpy() if "grid" in s else None,
            grid_thw=tuple(s["grid"]) if "grid" in s else None, second_per_grid=2 / 3.0 if "grid" in s else None,
            audio_features=s["features"].numpy() if "features" in s else None, meta={},
            waveform=s["wave"].numpy() if "wave" in s else None) for s in samples])
        return _left_pad(batch) if pad == "left" else batch

    def make(self, specs: list[dict], pad: str = "right") -> dict:
        return self.collate([self.sample(**spec, seed=i) for i, spec in enumerate(specs)], pad)
