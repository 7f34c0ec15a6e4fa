"""The tiny backbone goes through the real loader; the tokenizer is Qwen's BPE with the Omni ids; the 7B counts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from affectverse_ds.chat import build_messages, render
from affectverse_ds.config import BackboneConfig, LoraConfig
from affectverse_ds.model.backbone import (
    BackboneError, build_thinker_on_meta, load_thinker, load_tokenizer, pick_attn_implementation,
)
from affectverse_ds.model.lora import apply_lora, lora_parameter_count

REPO = Path(__file__).resolve().parents[2]
ARCH_7B = REPO / "launch" / "configs" / "qwen2_5_omni_7b_thinker.json"

OMNI_IDS = {
    "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|AUDIO|>": 151646,
    "<|audio_bos|>": 151647, "<|audio_eos|>": 151648, "<|vision_bos|>": 151652, "<|vision_eos|>": 151653,
    "<|vision_pad|>": 151654, "<|IMAGE|>": 151655, "<|VIDEO|>": 151656,
}


def test_special_tokens_at_their_real_ids(tiny_backbone_dir):
    tok = load_tokenizer(tiny_backbone_dir)
    for text, idx in OMNI_IDS.items():
        assert tok.convert_tokens_to_ids(text) == idx
        assert tok(text, add_special_tokens=False).input_ids == [idx], text
    # Qwen's real byte-level BPE: known ids of ordinary words
    assert tok("Hello world", add_special_tokens=False).input_ids == [9707, 1879]
    assert tok.decode(tok("情绪 émotion", add_special_tokens=False).input_ids) == "情绪 émotion"


def test_chat_template_renders_one_turn_with_video_audio_subtitle(tiny_backbone_dir):
    tok = load_tokenizer(tiny_backbone_dir)
    messages = build_messages("Which emotion?", "I can't believe it", "happy", has_video=True, has_audio=True)
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == render(messages)
    assert text == (
        "<|im_start|>system\nYou are an emotion recognition assistant<|im_end|>\n"
        "<|im_start|>user\n<|vision_bos|><|VIDEO|><|vision_eos|><|audio_bos|><|AUDIO|><|audio_eos|>"
        "Subtitle: I can't believe it\nWhich emotion?<|im_end|>\n"
        "<|im_start|>assistant\nhappy<|im_end|>\n"
    )
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_tiny_backbone_loads_frozen_and_runs_a_multimodal_forward(tiny_backbone_dir):
    model = load_thinker(BackboneConfig(path=str(tiny_backbone_dir)))
    assert not any(p.requires_grad for p in model.parameters())
    assert model.config._attn_implementation == "sdpa"
    assert not hasattr(model, "talker")
    tok = load_tokenizer(tiny_backbone_dir)
    fe = WhisperFeatureExtractor.from_pretrained(tiny_backbone_dir)
    feats = fe(np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32), sampling_rate=16000,
               return_attention_mask=True, return_tensors="pt")
    n_mel = int(feats.attention_mask.sum())
    n_audio = int(model.model.audio_tower._get_feat_extract_output_lengths(torch.tensor([n_mel]))[1])
    text = render(build_messages("Which emotion?", "hi", "happy", True, True))
    text = text.replace("<|VIDEO|>", "<|VIDEO|>" * 4).replace("<|AUDIO|>", "<|AUDIO|>" * n_audio)
    enc = tok(text, return_tensors="pt")
    out = model(
        input_ids=enc.input_ids, attention_mask=enc.attention_mask,
        pixel_values_videos=torch.randn(16, 3 * 2 * 14 * 14), video_grid_thw=torch.tensor([[1, 4, 4]]),
        video_second_per_grid=torch.tensor([2 / 3]),
        input_features=feats.input_features[:, :, :n_mel], feature_attention_mask=feats.attention_mask[:, :n_mel],
    )
    assert out.logits.shape == (1, enc.input_ids.shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(out.logits).all()


def test_missing_or_wrong_backbone_path_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneError, match="does not exist.*make_tiny_backbone"):
        load_thinker(BackboneConfig(path=str(tmp_path / "absent")))
    with pytest.raises(BackboneError, match="no config.json"):
        load_thinker(BackboneConfig(path=str(tmp_path)))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(BackboneError, match="not a Qwen2.5-Omni"):
        load_thinker(BackboneConfig(path=str(tmp_path)))


def test_attention_choice():
    assert pick_attn_implementation("auto", torch.device("cpu")) == "sdpa"
    assert pick_attn_implementation("eager", torch.device("cpu")) == "eager"


def test_7b_on_meta_counts_and_lora_hits_language_model_only():
    thinker = build_thinker_on_meta(ARCH_7B)
    n_backbone = sum(p.numel() for p in thinker.parameters())
    assert 8.90e9 < n_backbone < 8.96e9  # Qwen2.5-Omni-7B thinker: ~8.93B
    assert sum(p.numel() for p in thinker.model.visual.parameters()) < 0.7e9  # the real 1280-wide tower
    assert thinker.lm_head.weight is not thinker.model.language_model.embed_tokens.weight
    model = apply_lora(thinker, LoraConfig())
    assert lora_parameter_count(model) == 10_092_544  # 28 layers x (q,k,v,o) at r=16
    lora_modules = [n for n, _ in model.named_modules() if n.endswith("lora_A")]
    assert lora_modules and all(".language_model." in n for n in lora_modules)


def test_tiny_audio_tower_output_follows_the_sound_not_the_position(tiny_backbone_dir):
    """The tiny audio tower must carry its input: two tones an octave apart give clearly different outputs.

    With the default 0.02 conv init the sinusoidal positions swamp the log-mel content, and the two
    outputs would be nearly the same vector at every position (cosine ~1).
    """
    thinker = load_thinker(BackboneConfig(path=str(tiny_backbone_dir), dtype="float32"))
    extractor = WhisperFeatureExtractor(feature_size=128)
    t = np.arange(32000) / 16000
    outs = []
    for hz in (150.0, 300.0):
        wave = (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
        f = extractor(wave, sampling_rate=16000, return_attention_mask=True, padding=False, return_tensors="pt")
        with torch.no_grad():
            outs.append(thinker.model.get_audio_features(
                f["input_features"], f["attention_mask"], return_dict=True).last_hidden_state)
    cos = torch.nn.functional.cosine_similarity(outs[0], outs[1], dim=-1).mean().item()
    assert cos < 0.8, cos


def test_a_stale_tiny_backbone_is_not_current(tiny_backbone_dir, tmp_path):
    from affectverse_ds.tools.make_tiny_backbone import VERSION_FILE, is_current

    assert is_current(tiny_backbone_dir)
    assert not is_current(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / VERSION_FILE).write_text("1\n")
    assert not is_current(tmp_path)
