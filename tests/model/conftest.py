"""Hand-built batches in the collator's contract (data/batch.py) for the tiny backbone, and the tiny model."""
from __future__ import annotations

import pytest
import torch

from affectverse_ds.chat import build_messages, render
from affectverse_ds.config import load_config
from affectverse_ds.data.batch import AUDIO_TOKEN_ID, IGNORE_INDEX, PAD_TOKEN_ID, VIDEO_TOKEN_ID
from affectverse_ds.model.backbone import load_tokenizer

PATCH_DIM = 3 * 2 * 14 * 14  # Qwen2-VL patch layout


def audio_tokens(n_frames: int) -> int:
    """Audio tower tokens for n mel frames (_get_feat_extract_output_lengths)."""
    return ((n_frames - 1) // 2 + 1 - 2) // 2 + 1


def _expand(ids: list[int], n_video: int, n_audio: int) -> list[int]:
    out = []
    for t in ids:
        out += [t] * (n_video if t == VIDEO_TOKEN_ID else n_audio if t == AUDIO_TOKEN_ID else 1)
    return out


class BatchMaker:
    """make([dict(video=2 | 0, audio=frames | 0, subtitle=..., answer=...), ...], pad="right"|"left")."""

    def __init__(self, tokenizer):
        self.tok = tokenizer

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
        if audio:
            s["features"] = torch.randn(128, audio, generator=g)
        return s

    def collate(self, samples: list[dict], pad: str = "right") -> dict:
        width = max(len(s["ids"]) for s in samples)
        b = len(samples)
        ids = torch.full((b, width), PAD_TOKEN_ID)
        mask = torch.zeros((b, width), dtype=torch.long)
        labels = torch.full((b, width), IGNORE_INDEX)
        answer = torch.zeros(b, dtype=torch.long)
        for i, s in enumerate(samples):
            n = len(s["ids"])
            off = 0 if pad == "right" else width - n
            ids[i, off:off + n] = torch.tensor(s["ids"])
            mask[i, off:off + n] = 1
            labels[i, off:off + n] = torch.tensor(s["labels"])
            answer[i] = off + s["answer_start"]
        batch = dict(input_ids=ids, attention_mask=mask, labels=labels, answer_start=answer,
                     has_video=torch.tensor(["grid" in s for s in samples]),
                     has_audio=torch.tensor(["features" in s for s in samples]),
                     meta=[{} for _ in samples])
        vids = [s for s in samples if "grid" in s]
        if vids:
            batch["pixel_values_videos"] = torch.cat([s["pixels"] for s in vids])
            batch["video_grid_thw"] = torch.tensor([s["grid"] for s in vids])
            batch["video_second_per_grid"] = torch.full((len(vids),), 2 / 3.0)
        auds = [s for s in samples if "features" in s]
        if auds:
            t_max = max(s["features"].shape[1] for s in auds)
            feats = torch.zeros(len(auds), 128, t_max)
            fmask = torch.zeros(len(auds), t_max, dtype=torch.long)
            for j, s in enumerate(auds):
                feats[j, :, :s["features"].shape[1]] = s["features"]
                fmask[j, :s["features"].shape[1]] = 1
            batch["input_features"], batch["feature_attention_mask"] = feats, fmask
        return batch

    def make(self, specs: list[dict], pad: str = "right") -> dict:
        return self.collate([self.sample(**spec, seed=i) for i, spec in enumerate(specs)], pad)


@pytest.fixture(scope="session")
def batch_maker(tiny_backbone_dir) -> BatchMaker:
    return BatchMaker(load_tokenizer(tiny_backbone_dir))


def tiny_config(backbone_dir, *overrides: str):
    """The tiny preset's EWM sizes (launch/configs/tiny.yaml) without depending on that file's other sections."""
    base = [f"backbone.path={backbone_dir}", "backbone.dtype=float32", "backbone.attn_implementation=sdpa",
            "lora.dropout=0.0", "ewm.d_w=64", "ewm.heads=4", "ewm.n_future=4", "ewm.rollout_steps=3"]
    return load_config(None, base + list(overrides))


@pytest.fixture(scope="session")
def tiny_cfg(tiny_backbone_dir):
    return lambda *overrides: tiny_config(tiny_backbone_dir, *overrides)
