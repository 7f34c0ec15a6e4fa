"""Model inputs against transformers' own code: Qwen2-VL patches, Whisper features, tower token counts; budget."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from affectverse_ds.config import BackboneConfig
from affectverse_ds.data import processing as P

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def image_processor(tiny_backbone_dir):
    return Qwen2VLImageProcessorPil.from_pretrained(tiny_backbone_dir)


@pytest.fixture(scope="module")
def thinker(tiny_backbone_dir):
    from affectverse_ds.model.backbone import load_thinker

    torch.manual_seed(0)
    return load_thinker(BackboneConfig(path=str(tiny_backbone_dir), dtype="float32", attn_implementation="sdpa"))


def _image(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _reference(processor, img: np.ndarray) -> tuple[np.ndarray, list[int]]:
    out = processor(images=[Image.fromarray(img)], return_tensors="np")
    return out["pixel_values"], out["image_grid_thw"][0].tolist()


# ----------------------------------------------------------------------------- video


@pytest.mark.parametrize("hw", [(224, 224), (56, 84), (112, 56)])
def test_patchify_equals_qwen2vl_pil_processor_on_images(image_processor, hw):
    # the image processor repeats a still image over the temporal patch; two equal frames are the same clip
    img = _image(*hw)
    ref, ref_grid = _reference(image_processor, img)
    mine, grid = P.patchify_frames(np.stack([img, img]))
    assert list(grid) == ref_grid
    assert mine.shape == ref.shape and mine.dtype == np.float32
    np.testing.assert_allclose(mine, ref, rtol=0, atol=2e-6)


def test_video_temporal_layout_matches_per_frame_processor(image_processor):
    # each row is (C, temporal, 14, 14): temporal slot 0 holds frame a, slot 1 frame b, patch by patch
    a, b = _image(56, 84), _image(56, 84)
    mine, grid = P.patchify_frames(np.stack([a, b]))
    mine = mine.reshape(-1, 3, 2, 14, 14)
    ref_a = _reference(image_processor, a)[0].reshape(-1, 3, 2, 14, 14)
    ref_b = _reference(image_processor, b)[0].reshape(-1, 3, 2, 14, 14)
    np.testing.assert_allclose(mine[:, :, 0], ref_a[:, :, 0], atol=2e-6)
    np.testing.assert_allclose(mine[:, :, 1], ref_b[:, :, 1], atol=2e-6)


def test_odd_frame_count_repeats_last_frame():
    frames = np.stack([_image(56, 56) for _ in range(3)])
    mine, grid = P.patchify_frames(frames)
    assert grid == (2, 4, 4)
    tail, _ = P.patchify_frames(np.stack([frames[2], frames[2]]))
    np.testing.assert_array_equal(mine[16:], tail)


def test_patchify_rejects_sizes_off_the_28_grid():
    with pytest.raises(ValueError, match="multiple of 28"):
        P.patchify_frames(np.zeros((2, 224, 210, 3), np.uint8))


@pytest.mark.parametrize("n_frames", [1, 2, 3, 6, 18, 31])
def test_video_token_count_equals_vision_tower_output(thinker, n_frames):
    frames = np.stack([_image(56, 84) for _ in range(n_frames)])
    patches, grid = P.patchify_frames(frames)
    with torch.no_grad():
        out = thinker.get_video_features(torch.from_numpy(patches), torch.tensor([grid]))
    rows = sum(x.shape[0] for x in out.pooler_output)
    assert rows == P.video_token_count(n_frames, 56, 84)


# ----------------------------------------------------------------------------- audio


def test_audio_output_length_equals_tower_formula():
    lengths = torch.arange(1, 30_001)
    _, ref = Qwen2_5OmniAudioEncoder._get_feat_extract_output_lengths(None, lengths)
    assert [P.audio_output_length(n) for n in lengths.tolist()] == ref.tolist()


@pytest.mark.parametrize("n_samples", [1, 159, 161, 16_000, 48_123])
def test_audio_features_equal_whisper_with_qwens_full_padding(extractor, n_samples):
    audio = (0.2 * RNG.standard_normal(n_samples)).astype(np.float32)
    ref = extractor(audio, sampling_rate=16000, return_attention_mask=True, return_tensors="np")  # 300 s padding
    n_valid = int(ref["attention_mask"][0].sum())
    mine = P.audio_features(audio, extractor)
    assert mine.shape == (128, n_valid) == (128, P.audio_feature_length(n_samples))
    np.testing.assert_allclose(mine, ref["input_features"][0, :, :n_valid], rtol=0, atol=1e-5)


@pytest.mark.parametrize("seconds", [0.03, 0.5, 1.0, 1.99, 2.0, 2.01, 3.7, 6.0, 10.3, 30.0])
def test_audio_token_count_equals_audio_tower_output(thinker, extractor, seconds):
    n = int(seconds * 16000)
    feats = torch.from_numpy(P.audio_features((0.1 * RNG.standard_normal(n)).astype(np.float32), extractor))
    mask = torch.ones(1, feats.shape[1], dtype=torch.long)
    with torch.no_grad():
        out = thinker.get_audio_features(feats[None], feature_attention_mask=mask).last_hidden_state
    assert out.shape[0] == P.audio_output_length(P.audio_feature_length(n))


@given(st.integers(1, 2000))
def test_max_mel_frames_is_the_exact_inverse(n_tokens):
    frames = P.max_mel_frames_for_tokens(n_tokens)
    assert P.audio_output_length(frames) == n_tokens
    assert P.audio_output_length(frames + 1) == n_tokens + 1


# ----------------------------------------------------------------------------- frames and budget


@given(st.integers(1, 400), st.data())
def test_uniform_indices_keep_order_and_ends(n_total, data):
    n_keep = data.draw(st.integers(1, n_total))
    idx = P.uniform_frame_indices(n_total, n_keep)
    assert len(idx) == n_keep and np.all(np.diff(idx) > 0)
    assert idx[0] == 0 and (n_keep == 1 or idx[-1] == n_total - 1)


def _plan(n_text, n_frames, seconds, max_seq_len=1024, min_frames=2, max_audio_seconds=30.0):
    return P.plan_budget(n_text, n_frames, int(seconds * 16000), frame_hw=(224, 224), fps=3.0, sample_rate=16000,
                         max_seq_len=max_seq_len, max_audio_seconds=max_audio_seconds, min_frames=min_frames)


def test_six_second_clip_fits_unchanged():
    plan = _plan(90, 18, 6.0)
    assert not plan.reduced and len(plan.frame_indices) == 18
    assert plan.video_tokens == 9 * 64 and plan.audio_tokens == 150
    assert plan.second_per_grid == pytest.approx(2 / 3)


def test_long_clip_subsamples_frames_and_stretches_time():
    plan = _plan(90, 60, 20.0)  # 1920 video + 500 audio tokens do not fit
    n_keep = len(plan.frame_indices)
    assert plan.reduced and n_keep % 2 == 0 and n_keep < 60
    assert plan.audio_samples == 20 * 16000  # audio kept whole while frames can give way
    assert plan.total(90) <= 1024 and plan.total(90) + 64 > 1024  # as many frame pairs as fit
    assert plan.second_per_grid == pytest.approx(2 * 59 / (n_keep - 1) / 3)


@settings(max_examples=300, deadline=None)
@example(n_text=20, n_frames=3, seconds=0.03125, max_seq_len=128, min_frames=3)  # audio already under one token
@given(
    n_text=st.integers(20, 600), n_frames=st.integers(0, 300), seconds=st.floats(0.0, 60.0),
    max_seq_len=st.integers(128, 2048), min_frames=st.integers(1, 8),
)
def test_budget_properties(n_text, n_frames, seconds, max_seq_len, min_frames):
    plan = _plan(n_text, n_frames, seconds, max_seq_len=max_seq_len, min_frames=min_frames)
    kept = len(plan.frame_indices)
    audio = int(seconds * 16000)
    if n_frames:
        assert kept == n_frames or (kept % 2 == 0 and kept >= min(n_frames, min_frames))
        assert plan.video_tokens == P.video_token_count(kept, 224, 224)
    assert plan.audio_samples <= min(audio, 30 * 16000)
    if audio:
        assert plan.audio_tokens == P.audio_output_length(P.audio_feature_length(plan.audio_samples))
    assert plan.reduced == (kept < n_frames or plan.audio_samples < audio)
    assert plan.over_budget == (plan.total(n_text) > max_seq_len)
    if not plan.over_budget and plan.reduced:
        # nothing was dropped that would have fitted: one more frame pair would overflow (or audio was cut)
        assert plan.audio_samples < audio or plan.total(n_text) + 64 > max_seq_len


@given(st.floats(0.0, 1.0), st.integers(P.MIN_AUDIO_SAMPLES, 480_000))
@example(0.7, 321)
@example(0.5, 9600)
def test_audio_keep_point_keeps_at_least_one_token_and_counts_like_the_collator(kappa, n):
    """The audio cut in samples (model/past_inputs.py): floor(kappa n), within [one token's samples, n]; its
    token count is the collator's for a clip of that many samples and never exceeds the whole clip's."""
    cut = P.audio_keep_samples(kappa, n)
    assert P.MIN_AUDIO_SAMPLES <= cut <= n
    if P.MIN_AUDIO_SAMPLES <= int(np.floor(kappa * n)):
        assert cut == int(np.floor(kappa * n))
    assert 1 <= P.audio_token_count(cut) <= P.audio_token_count(n)
    assert P.audio_token_count(cut) == P.audio_output_length(P.audio_feature_length(cut))


def test_min_audio_samples_is_the_shortest_waveform_with_a_token():
    assert P.audio_token_count(P.MIN_AUDIO_SAMPLES) == 1 and P.audio_token_count(P.MIN_AUDIO_SAMPLES - 1) == 0
