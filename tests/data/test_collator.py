"""Collator: labels only on the answer, exact placeholder counts, budget, evaluation settings, batch contract."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from affectverse_ds.chat import render
from affectverse_ds.config import BackboneConfig, DataConfig
from affectverse_ds.data import processing as P
from affectverse_ds.data.batch import AUDIO_TOKEN_ID, IGNORE_INDEX, PAD_TOKEN_ID, VIDEO_TOKEN_ID
from affectverse_ds.data.collator import (
    PlaceholderCountError, SampleEncoder, check_placeholder_counts, collate, setting_prompt,
)
from affectverse_ds.data.loader import decode_sample


@pytest.fixture
def encode(tokenizer, extractor, make_record):
    """encode(i, seconds=..., setting=..., data=DataConfig(...), **record kwargs) -> EncodedSample."""

    def run(i=0, *, setting="avt", data=None, benchmark="meld", **kw):
        sample = decode_sample(make_record(benchmark, "train", i, **kw))
        return SampleEncoder(tokenizer, extractor, data or DataConfig(), setting)(sample)

    return run


def _labelled_text(tokenizer, enc) -> str:
    keep = enc.labels != IGNORE_INDEX
    return tokenizer.decode(enc.input_ids[keep].tolist())


@pytest.mark.parametrize("benchmark", ["meld", "cmumosi", "ovmerd"])
def test_labels_only_on_answer_and_im_end(encode, tokenizer, benchmark):
    enc = encode(3, seconds=1.0, benchmark=benchmark)
    assert _labelled_text(tokenizer, enc) == enc.meta["answer"] + "<|im_end|>"
    labelled = (enc.labels != IGNORE_INDEX).nonzero()[0]
    assert labelled[0] == enc.answer_start and labelled[-1] == len(enc.input_ids) - 2  # the final "\n" is not learned
    assert tokenizer.decode(enc.input_ids[: enc.answer_start].tolist()).endswith("<|im_start|>assistant\n")


def test_split_tokenisation_equals_whole_text(tokenizer, make_record, encode):
    # prompt and answer are tokenised apart; that must not change a single token
    enc = encode(5, seconds=1.0)
    meta = decode_sample(make_record("meld", "train", 5, seconds=1.0)).meta
    whole = tokenizer(meta["text"], add_special_tokens=False)["input_ids"]
    collapsed = [t for i, t in enumerate(enc.input_ids.tolist())
                 if not (t in (VIDEO_TOKEN_ID, AUDIO_TOKEN_ID) and enc.input_ids[i - 1] == t)]
    assert collapsed == whole


@pytest.mark.parametrize("seconds", [0.4, 1.0, 2.0, 3.4, 6.0])
def test_placeholders_expand_to_tower_counts(encode, seconds):
    enc = encode(1, seconds=seconds)
    n_frames = max(1, round(seconds * 3))
    assert (enc.input_ids == VIDEO_TOKEN_ID).sum() == P.video_token_count(n_frames, 224, 224)
    n_audio = P.audio_output_length(P.audio_feature_length(int(seconds * 16000)))
    assert (enc.input_ids == AUDIO_TOKEN_ID).sum() == n_audio
    assert enc.pixel_values.shape[0] == 4 * (enc.input_ids == VIDEO_TOKEN_ID).sum()


def test_collated_batch_checks_its_counts(encode):
    batch = collate([encode(0, seconds=1.0), encode(1, seconds=2.0)])
    check_placeholder_counts(batch)
    broken = dict(batch)
    ids = batch["input_ids"].clone()
    ids[0, (ids[0] == AUDIO_TOKEN_ID).nonzero()[0, 0]] = PAD_TOKEN_ID  # one audio token short
    broken["input_ids"] = ids
    with pytest.raises(PlaceholderCountError, match="audio"):
        check_placeholder_counts(broken)


def test_batch_contract_and_right_padding(encode):
    samples = [encode(0, seconds=2.0), encode(1, seconds=1.0, audio=False), encode(2, seconds=1.0, video=False)]
    batch = collate(samples)
    lengths = [len(s.input_ids) for s in samples]
    assert batch["input_ids"].shape == (3, max(lengths))
    for i, n in enumerate(lengths):
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (max(lengths) - n)
        assert (batch["input_ids"][i, n:] == PAD_TOKEN_ID).all() and (batch["labels"][i, n:] == IGNORE_INDEX).all()
    assert batch["has_video"].tolist() == [True, True, False] and batch["has_audio"].tolist() == [True, False, True]
    assert batch["video_grid_thw"].tolist() == [[3, 16, 16], [2, 16, 16]]
    assert batch["pixel_values_videos"].shape == ((3 + 2) * 256, 1176)
    assert batch["video_second_per_grid"].tolist() == pytest.approx([2 / 3, 2 / 3])
    assert batch["input_features"].shape == (2, 128, 200)
    assert batch["feature_attention_mask"].sum(-1).tolist() == [200, 100]
    assert batch["answer_start"].tolist() == [s.answer_start for s in samples]
    assert [m["name"] for m in batch["meta"]] == ["meld_train_00000", "meld_train_00001", "meld_train_00002"]


def test_tiny_thinker_consumes_the_batch(tiny_backbone_dir, encode):
    from affectverse_ds.model.backbone import load_thinker

    model = load_thinker(BackboneConfig(path=str(tiny_backbone_dir), dtype="float32", attn_implementation="sdpa"))
    batch = collate([encode(0, seconds=1.0), encode(1, seconds=1.4, audio=False)])
    keys = ("input_ids", "attention_mask", "labels", "pixel_values_videos", "video_grid_thw",
            "video_second_per_grid", "input_features", "feature_attention_mask")
    with torch.no_grad():
        out = model(**{k: batch[k] for k in keys})
    assert out.logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(out.loss)


# ----------------------------------------------------------------------------- budget


def test_budget_subsamples_long_clip_and_keeps_answer(encode, tokenizer):
    enc = encode(4, seconds=20.0)  # 60 frames (1920 tokens) + 500 audio tokens
    assert enc.meta["reduced"] and not enc.meta["over_budget"]
    assert len(enc.input_ids) <= 1024
    assert enc.grid_thw[0] * 2 == enc.meta["frames_kept"] < 60 and enc.meta["frames_kept"] % 2 == 0
    assert enc.meta["audio_samples_kept"] == 20 * 16000
    assert enc.second_per_grid == pytest.approx(2 * 59 / (enc.meta["frames_kept"] - 1) / 3)
    assert _labelled_text(tokenizer, enc) == enc.meta["answer"] + "<|im_end|>"


def test_budget_caps_audio_when_frames_are_at_minimum(encode, tokenizer):
    data = DataConfig(max_seq_len=400, min_frames=2)
    enc = encode(4, seconds=20.0, data=data)
    assert enc.meta["frames_kept"] == 2 and enc.meta["audio_samples_kept"] < 20 * 16000
    assert len(enc.input_ids) <= 400
    assert _labelled_text(tokenizer, enc) == enc.meta["answer"] + "<|im_end|>"


def test_answer_never_cut_even_over_budget(encode, tokenizer):
    data = DataConfig(max_seq_len=64)  # not even the text fits
    enc = encode(2, seconds=3.0, data=data)
    assert enc.meta["over_budget"] and len(enc.input_ids) > 64
    assert _labelled_text(tokenizer, enc) == enc.meta["answer"] + "<|im_end|>"


def test_fitting_clip_is_not_reduced(encode):
    enc = encode(0, seconds=6.0)
    assert not enc.meta["reduced"] and enc.meta["frames_kept"] == 18 and enc.meta["audio_samples_kept"] == 96000


# ----------------------------------------------------------------------------- evaluation settings


@pytest.mark.parametrize("setting,video,audio", [("avt", True, True), ("at", False, True), ("vt", True, False),
                                                  ("t", False, False), ("av", True, True)])
def test_setting_removes_modalities_and_rerenders(encode, make_record, setting, video, audio):
    enc = encode(6, seconds=1.0, setting=setting)
    assert (enc.pixel_values is not None) == video and (enc.audio_features is not None) == audio
    assert ((enc.input_ids == VIDEO_TOKEN_ID).any()) == video and ((enc.input_ids == AUDIO_TOKEN_ID).any()) == audio
    meta = decode_sample(make_record("meld", "train", 6, seconds=1.0)).meta
    text, use_video, use_audio = setting_prompt(meta, setting)
    assert (use_video, use_audio) == (video, audio)
    assert ("<|VIDEO|>" in text) == video and ("<|AUDIO|>" in text) == audio
    assert ("Subtitle:" in text) == (setting != "av")
    assert text.endswith(meta["answer"] + "<|im_end|>\n") and meta["question"] in text


def test_removed_modality_renders_like_a_sample_without_it(make_record):
    # A+T evaluation of a full sample == the chat a video-less sample would have had
    full = decode_sample(make_record("meld", "train", 7, seconds=1.0)).meta
    no_video = decode_sample(make_record("meld", "train", 7, seconds=1.0, video=False)).meta
    assert setting_prompt(full, "at")[0] == no_video["text"] == render(no_video["messages"])


def test_sample_with_missing_audio_has_no_audio_in_avt(encode):
    enc = encode(8, seconds=1.0, audio=False)
    assert enc.audio_features is None and not (enc.input_ids == AUDIO_TOKEN_ID).any()


def test_wrong_answer_in_text_is_rejected(tokenizer, extractor, make_record):
    from affectverse_ds.data.collator import SampleError

    sample = decode_sample(make_record("meld", "train", 0, seconds=1.0))
    sample = dataclasses.replace(sample, meta={**sample.meta, "answer": "something else"})
    with pytest.raises(SampleError, match="not the answer"):
        SampleEncoder(tokenizer, extractor, DataConfig())(sample)


def test_input_modality_dropout_is_seeded_per_sample_and_off_by_default():
    from affectverse_ds.config import DataConfig
    from affectverse_ds.data.collator import SampleEncoder

    metas = [{"benchmark": "meld", "split": "train", "name": f"s{i}", "modalities": {"video": True, "audio": True}}
             for i in range(400)]
    off = SampleEncoder(None, None, DataConfig(), "avt")
    assert {off.setting_for(m) for m in metas} == {"avt"}
    on = SampleEncoder(None, None, DataConfig(), "avt", input_modality_dropout=0.5, seed=7)
    settings = [on.setting_for(m) for m in metas]
    assert settings == [SampleEncoder(None, None, DataConfig(), "avt", 0.5, seed=7).setting_for(m) for m in metas]
    counts = {s: settings.count(s) for s in ("avt", "at", "vt")}
    assert 150 < counts["avt"] < 250 and 50 < counts["at"] < 150 and 50 < counts["vt"] < 150, counts
    other_epoch = [SampleEncoder(None, None, DataConfig(), "avt", 0.5, seed=8).setting_for(m) for m in metas]
    assert other_epoch != settings
    # samples lacking a modality, and evaluation settings, are never changed
    audio_only = {**metas[0], "modalities": {"video": False, "audio": True}}
    assert on.setting_for(audio_only) == "avt"
    assert SampleEncoder(None, None, DataConfig(), "vt", 0.5).setting_for(metas[0]) == "vt"


def test_batch_carries_the_kept_waveforms_behind_the_features(encode, extractor):
    """The model cuts the raw waveform at the keep point (model/past_inputs.py): the batch carries each audio
    sample's kept samples, zero-padded, whose log-mel is exactly the features it also carries."""
    samples = [encode(0, seconds=2.0), encode(1, seconds=1.0, audio=False), encode(2, seconds=1.3, video=False)]
    batch = collate(samples)
    assert batch["audio_waveform_lengths"].tolist() == [32000, 20800]
    assert batch["audio_waveform"].shape == (2, 32000)
    assert batch["audio_waveform"][1, 20800:].abs().sum() == 0
    for j, s in enumerate(s for s in samples if s.waveform is not None):
        n = int(batch["audio_waveform_lengths"][j])
        feats = P.audio_features(batch["audio_waveform"][j, :n].numpy(), extractor)
        assert torch.equal(torch.from_numpy(feats), batch["input_features"][j, :, :feats.shape[1]])


def test_a_waveform_that_disagrees_with_its_features_is_refused(encode):
    enc = encode(0, seconds=1.0)
    short = dataclasses.replace(enc, waveform=enc.waveform[:-P.HOP_LENGTH])  # one mel frame fewer
    with pytest.raises(PlaceholderCountError, match="mel frames"):
        collate([short])
    with pytest.raises(ValueError, match="some audio samples"):
        collate([enc, dataclasses.replace(encode(1, seconds=1.0), waveform=None)])
