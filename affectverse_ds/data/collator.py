"""One decoded sample -> model inputs (tokens, labels, patches, mel), and a list of them -> a :class:`Batch`.

:class:`SampleEncoder` runs in the loader workers: it picks the modalities of
the evaluation setting (re-rendering the chat when one is removed), tokenises
the rendered chat, fits video and audio into the token budget, builds the
vision patches and the Whisper features, and expands each placeholder to the
exact number of tower tokens. :func:`collate` pads a list of encoded samples
into the batch contract of ``data/batch.py``.

The thinker checks the video placeholder count itself but not the audio one (a
short audio count silently mis-aligns features), so both are checked here.
"""
from __future__ import annotations

import hashlib

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from affectverse_ds.chat import ASSISTANT_PREFIX, render
from affectverse_ds.config import MODALITY_SETTINGS as SETTINGS, DataConfig
from affectverse_ds.data import processing
from affectverse_ds.data.batch import (
    AUDIO_TOKEN_ID, IGNORE_INDEX, IM_END_ID, PAD_TOKEN_ID, VIDEO_TOKEN_ID, Batch,
)

log = logging.getLogger(__name__)

IM_END = "<|im_end|>"
_META_DROP = ("messages", "text")  # large and already turned into tokens


class SampleError(ValueError):
    """A sample whose content breaks the shard contract (the loader skips and counts it)."""


class PlaceholderCountError(RuntimeError):
    """Expanded placeholders disagree with the tower token counts: a bug, never skipped."""


@dataclass
class DecodedSample:
    """A sample as read from a shard: metadata, frame JPEGs (decoded lazily, only the kept ones) and audio."""

    meta: dict[str, Any]
    frames: list[bytes] = field(default_factory=list)  # JPEG bytes in frame order
    audio: np.ndarray | None = None  # (n_samples,) float32 mono 16 kHz


@dataclass
class EncodedSample:
    """Model inputs of one sample (numpy, so worker -> main transfer stays cheap until collation)."""

    input_ids: np.ndarray  # (L,) int64, placeholders expanded
    labels: np.ndarray  # (L,) int64, IGNORE_INDEX outside the answer
    answer_start: int
    pixel_values: np.ndarray | None  # (t*h*w, 1176) float32
    grid_thw: tuple[int, int, int] | None
    second_per_grid: float | None
    audio_features: np.ndarray | None  # (128, T) float32, all frames valid
    meta: dict[str, Any]
    # (n_samples,) float32: the waveform the features were made from; the model cuts it at the keep point
    # and makes the past's own log-mel (model/past_inputs.py), so the observed past never sees the future
    waveform: np.ndarray | None = None


def setting_prompt(meta: dict[str, Any], setting: str) -> tuple[str, bool, bool]:
    """The chat text of ``meta`` under an evaluation setting, and which media it uses.

    A modality the setting removes is dropped from the user turn of ``messages``
    and the chat is re-rendered; with nothing removed the stored ``text`` is used.

    Returns:
        (text, use_video, use_audio)
    """
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; known: {', '.join(SETTINGS)}")
    keep_video, keep_audio, keep_subtitle = SETTINGS[setting]
    use_video = keep_video and bool(meta["modalities"]["video"])
    use_audio = keep_audio and bool(meta["modalities"]["audio"])
    return _render_with(meta, use_video, use_audio, keep_subtitle), use_video, use_audio


def _render_with(meta: dict[str, Any], use_video: bool, use_audio: bool, keep_subtitle: bool) -> str:
    if use_video == meta["modalities"]["video"] and use_audio == meta["modalities"]["audio"] and keep_subtitle:
        return meta["text"]
    messages = copy.deepcopy(meta["messages"])
    for message in messages:
        if message["role"] != "user" or isinstance(message["content"], str):
            continue
        content = []
        for item in message["content"]:
            if item.get("type") == "video" and not use_video:
                continue
            if item.get("type") == "audio" and not use_audio:
                continue
            if item.get("type") == "text" and not keep_subtitle:
                item = {"type": "text", "text": meta["question"]}
            content.append(item)
        message["content"] = content
    return render(messages)


class SampleEncoder:
    """Turns a :class:`DecodedSample` into an :class:`EncodedSample` (picklable; one per loader).

    Args:
        tokenizer: the backbone tokenizer (``model.backbone.load_tokenizer``).
        extractor: the backbone's ``WhisperFeatureExtractor``.
        data: fps, budget and frame settings.
        setting: evaluation setting (``SETTINGS``); training uses ``"avt"``.
    """

    def __init__(self, tokenizer, extractor, data: DataConfig, setting: str = "avt",
                 input_modality_dropout: float = 0.0, seed: int = 0):
        if setting not in SETTINGS:
            raise ValueError(f"unknown setting {setting!r}; known: {', '.join(SETTINGS)}")
        self.tokenizer = tokenizer
        self.extractor = extractor
        self.data = data
        self.setting = setting
        self.input_modality_dropout = input_modality_dropout
        self.seed = seed

    def setting_for(self, meta: dict[str, Any]) -> str:
        """The sample's setting: ``self.setting``, or in training with input modality dropout, A+T or V+T
        for a fraction of A+V samples, drawn from (seed, sample key) so resumed runs see the same inputs."""
        mods = meta.get("modalities", {})
        if self.input_modality_dropout <= 0 or self.setting != "avt" or not (mods.get("video") and mods.get("audio")):
            return self.setting
        digest = hashlib.sha256(f"{self.seed}:{meta.get('benchmark')}:{meta.get('split')}:{meta['name']}".encode())
        u = int.from_bytes(digest.digest()[:8], "little") / 2**64
        if u < self.input_modality_dropout / 2:
            return "at"
        if u < self.input_modality_dropout:
            return "vt"
        return self.setting

    def _tokens(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)

    def __call__(self, sample: DecodedSample) -> EncodedSample:
        meta = sample.meta
        setting = self.setting_for(meta)
        text, use_video, use_audio = setting_prompt(meta, setting)
        if use_video and not sample.frames:
            raise SampleError(f"{meta['name']}: modalities.video is set but the sample has no frames")
        if use_audio and (sample.audio is None or sample.audio.size == 0):
            raise SampleError(f"{meta['name']}: modalities.audio is set but the sample has no audio")
        if use_audio and processing.audio_output_length(processing.audio_feature_length(sample.audio.size)) < 1:
            use_audio = False  # a few milliseconds of sound make no audio token: treat it as missing
            text = _render_with(meta, use_video, False, SETTINGS[setting][2])

        prompt_ids, answer_ids = self._split_tokens(text, meta)
        n_video_ph = int((prompt_ids == VIDEO_TOKEN_ID).sum())
        n_audio_ph = int((prompt_ids == AUDIO_TOKEN_ID).sum())
        if (n_video_ph, n_audio_ph) != (int(use_video), int(use_audio)):
            raise SampleError(
                f"{meta['name']}: prompt has {n_video_ph} video and {n_audio_ph} audio placeholders, "
                f"expected {int(use_video)} and {int(use_audio)}"
            )
        n_text = len(prompt_ids) - n_video_ph - n_audio_ph + len(answer_ids)
        # frames enter the model at data.frame_size (shards store 224 px; the tiny preset uses less)
        frame_hw = (self.data.frame_size, self.data.frame_size)
        plan = processing.plan_budget(
            n_text,
            len(sample.frames) if use_video else 0,
            sample.audio.size if use_audio else 0,
            frame_hw=frame_hw, fps=float(meta["fps"]), sample_rate=self.data.sample_rate,
            max_seq_len=self.data.max_seq_len, max_audio_seconds=self.data.max_audio_seconds,
            min_frames=self.data.min_frames,
        )
        if plan.over_budget:
            log.warning("%s: %d text tokens leave no room for the minimum media under max_seq_len=%d",
                        meta["name"], n_text, self.data.max_seq_len)

        pixel_values = grid = None
        if use_video:
            frames = processing.decode_frames(sample.frames, plan.frame_indices, size=self.data.frame_size)
            pixel_values, grid = processing.patchify_frames(frames)
        features = waveform = None
        if use_audio:
            waveform = np.ascontiguousarray(sample.audio[: plan.audio_samples], dtype=np.float32)
            features = processing.audio_features(waveform, self.extractor)

        input_ids, answer_start = _expand_placeholders(prompt_ids, plan.video_tokens, plan.audio_tokens, answer_ids)
        _check_sample_counts(input_ids, grid, features, meta["name"])
        labels = np.full_like(input_ids, IGNORE_INDEX)
        # the answer and its <|im_end|> are learned; the newline after <|im_end|> is not
        labels[answer_start: len(input_ids) - 1] = input_ids[answer_start: len(input_ids) - 1]

        out_meta = {k: v for k, v in meta.items() if k not in _META_DROP}
        out_meta.update(
            setting=setting, reduced=plan.reduced, over_budget=plan.over_budget,
            frames_kept=len(plan.frame_indices), audio_samples_kept=plan.audio_samples if use_audio else 0,
        )
        return EncodedSample(
            input_ids=input_ids, labels=labels, answer_start=answer_start,
            pixel_values=pixel_values, grid_thw=grid,
            second_per_grid=plan.second_per_grid if use_video else None,
            audio_features=features, meta=out_meta, waveform=waveform,
        )

    def _split_tokens(self, text: str, meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Tokens of the prompt (through ``<|im_start|>assistant\\n``) and of the answer turn after it."""
        cut = text.rfind(ASSISTANT_PREFIX)
        if cut < 0:
            raise SampleError(f"{meta['name']}: text has no assistant turn")
        cut += len(ASSISTANT_PREFIX)
        expected = meta["answer"] + IM_END + "\n"
        if text[cut:] != expected:
            raise SampleError(f"{meta['name']}: assistant turn {text[cut:]!r} is not the answer {expected!r}")
        prompt_ids, answer_ids = self._tokens(text[:cut]), self._tokens(text[cut:])
        if len(answer_ids) < 3 or answer_ids[-2] != IM_END_ID:
            raise SampleError(f"{meta['name']}: answer turn does not tokenise to <answer> <|im_end|> \\n")
        return prompt_ids, answer_ids


def _expand_placeholders(
    prompt_ids: np.ndarray, video_tokens: int, audio_tokens: int, answer_ids: np.ndarray
) -> tuple[np.ndarray, int]:
    """Replace the single video/audio placeholder by that many copies; returns (ids, answer_start)."""
    repeats = np.ones(len(prompt_ids), dtype=np.int64)
    repeats[prompt_ids == VIDEO_TOKEN_ID] = video_tokens
    repeats[prompt_ids == AUDIO_TOKEN_ID] = audio_tokens
    prompt = np.repeat(prompt_ids, repeats)
    return np.concatenate([prompt, answer_ids]), len(prompt)


def _check_sample_counts(input_ids: np.ndarray, grid, features, name: str) -> None:
    n_video = int((input_ids == VIDEO_TOKEN_ID).sum())
    want_video = grid[0] * grid[1] * grid[2] // processing.MERGE_SIZE**2 if grid is not None else 0
    n_audio = int((input_ids == AUDIO_TOKEN_ID).sum())
    want_audio = processing.audio_output_length(features.shape[1]) if features is not None else 0
    if (n_video, n_audio) != (want_video, want_audio):
        raise PlaceholderCountError(
            f"{name}: {n_video} video / {n_audio} audio placeholders but the towers make {want_video} / {want_audio}"
        )


def check_placeholder_counts(batch: Batch) -> None:
    """Raise :class:`PlaceholderCountError` unless each sample's placeholders match its tower token counts."""
    ids = batch["input_ids"]
    has_video, has_audio = batch["has_video"], batch["has_audio"]
    video_per_sample = torch.zeros(len(ids), dtype=torch.long)
    if "video_grid_thw" in batch:
        video_per_sample[has_video] = batch["video_grid_thw"].prod(-1) // processing.MERGE_SIZE**2
    audio_per_sample = torch.zeros(len(ids), dtype=torch.long)
    if "feature_attention_mask" in batch:
        lengths = batch["feature_attention_mask"].sum(-1).tolist()
        audio_per_sample[has_audio] = torch.tensor([processing.audio_output_length(n) for n in lengths])
    got_video = (ids == VIDEO_TOKEN_ID).sum(-1)
    got_audio = (ids == AUDIO_TOKEN_ID).sum(-1)
    if not (torch.equal(got_video, video_per_sample) and torch.equal(got_audio, audio_per_sample)):
        raise PlaceholderCountError(
            f"placeholders per sample: video {got_video.tolist()} vs towers {video_per_sample.tolist()}, "
            f"audio {got_audio.tolist()} vs towers {audio_per_sample.tolist()}"
        )


def collate(samples: list[EncodedSample]) -> Batch:
    """Right-pad encoded samples into the batch contract of ``data/batch.py`` and check the placeholder counts.

    Video and audio entries exist only when at least one sample has that modality.
    """
    if not samples:
        raise ValueError("cannot collate an empty list")
    n, length = len(samples), max(len(s.input_ids) for s in samples)
    input_ids = torch.full((n, length), PAD_TOKEN_ID, dtype=torch.long)
    labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((n, length), dtype=torch.long)
    for i, s in enumerate(samples):
        input_ids[i, : len(s.input_ids)] = torch.from_numpy(s.input_ids)
        labels[i, : len(s.labels)] = torch.from_numpy(s.labels)
        attention_mask[i, : len(s.input_ids)] = 1
    batch: Batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "answer_start": torch.tensor([s.answer_start for s in samples], dtype=torch.long),
        "has_video": torch.tensor([s.pixel_values is not None for s in samples]),
        "has_audio": torch.tensor([s.audio_features is not None for s in samples]),
        "meta": [s.meta for s in samples],
    }
    videos = [s for s in samples if s.pixel_values is not None]
    if videos:
        batch["pixel_values_videos"] = torch.from_numpy(np.concatenate([s.pixel_values for s in videos]))
        batch["video_grid_thw"] = torch.tensor([s.grid_thw for s in videos], dtype=torch.long)
        batch["video_second_per_grid"] = torch.tensor([s.second_per_grid for s in videos], dtype=torch.float)
    audios = [s.audio_features for s in samples if s.audio_features is not None]
    if audios:
        t_max = max(a.shape[1] for a in audios)
        features = torch.zeros((len(audios), audios[0].shape[0], t_max), dtype=torch.float)
        mask = torch.zeros((len(audios), t_max), dtype=torch.long)
        for i, a in enumerate(audios):
            features[i, :, : a.shape[1]] = torch.from_numpy(a)
            mask[i, : a.shape[1]] = 1
        batch["input_features"] = features
        batch["feature_attention_mask"] = mask
        _collate_waveforms(batch, [s for s in samples if s.audio_features is not None])
    check_placeholder_counts(batch)
    return batch


def _collate_waveforms(batch: Batch, audios: list[EncodedSample]) -> None:
    """``audio_waveform`` (zero-padded) and ``audio_waveform_lengths`` of the audio samples, when they carry one.

    All or none: a batch mixing samples with and without a waveform is a caller's bug. Each waveform must make
    exactly its features' mel frames (the model cuts it and recounts the tokens with the same formulas).
    """
    waves = [s.waveform for s in audios]
    if all(w is None for w in waves):
        return
    if any(w is None for w in waves):
        raise ValueError("collate: some audio samples carry their waveform and some do not")
    for s in audios:
        if processing.audio_feature_length(len(s.waveform)) != s.audio_features.shape[1]:
            raise PlaceholderCountError(
                f"{s.meta.get('name', '?')}: a waveform of {len(s.waveform)} samples makes "
                f"{processing.audio_feature_length(len(s.waveform))} mel frames, its features have "
                f"{s.audio_features.shape[1]}")
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
    wave = torch.zeros((len(waves), int(lengths.max())), dtype=torch.float)
    for i, w in enumerate(waves):
        wave[i, : len(w)] = torch.from_numpy(np.asarray(w, dtype=np.float32))
    batch["audio_waveform"] = wave
    batch["audio_waveform_lengths"] = lengths
