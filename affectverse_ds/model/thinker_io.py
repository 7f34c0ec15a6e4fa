"""The one module that touches transformers internals: the thinker's towers, decoder, LM head and KV cache.

Everything else reaches the Qwen2.5-Omni thinker through these functions, so a transformers upgrade that
renames ``language_model``, changes ``DynamicCache``'s layers or the decoder layers' output breaks this file
only (the thinker's loading and freezing live in ``backbone.py``).
"""
from __future__ import annotations

import torch
from torch import nn

from affectverse_ds.data.batch import AUDIO_TOKEN_ID, VIDEO_TOKEN_ID


def core_of(thinker: nn.Module) -> nn.Module:
    """The Qwen2_5OmniThinkerForConditionalGeneration under the PEFT wrapper (LoRA layers live inside it)."""
    return thinker.get_base_model() if hasattr(thinker, "get_base_model") else thinker


def text_width(thinker: nn.Module) -> int:
    """d, the decoder's hidden size (what the EWM reads)."""
    return thinker.config.text_config.hidden_size


def rope_geometry(core: nn.Module) -> tuple[int, float]:
    """(spatial merge size, position ids per second): what ``injection.find_regions`` needs for 3D M-RoPE."""
    return core.model.spatial_merge_size, core.config.position_id_per_seconds


def enable_gradient_checkpointing(thinker: nn.Module) -> None:
    thinker.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def is_checkpointing(core: nn.Module) -> bool:
    """Gradient checkpointing on: transformers then drops the KV cache in training."""
    return bool(core.model.language_model.gradient_checkpointing)


def has_video(batch: dict) -> bool:
    grid = batch.get("video_grid_thw")
    return batch.get("pixel_values_videos") is not None and grid is not None and bool(grid.numel())


def has_audio(batch: dict) -> bool:
    feats = batch.get("input_features")
    return feats is not None and bool(feats.shape[0])


@torch.no_grad()
def embed(core: nn.Module, batch: dict, every_tower: bool = False) -> torch.Tensor:
    """Token embeddings with the (frozen) full-clip tower outputs scattered in: (B, L, d). Towers run once per step.

    ``every_tower``: a tower whose stream the batch lacks still runs, on a blank input (:func:`idle_video`).
    """
    model = core.model
    ids = batch["input_ids"]
    emb = model.get_input_embeddings()(ids)
    if has_video(batch):
        video = video_tokens(core, batch["pixel_values_videos"], batch["video_grid_thw"])
        emb = emb.masked_scatter((ids == VIDEO_TOKEN_ID)[..., None], video.to(emb.dtype))
    elif every_tower:
        idle_video(core, ids.device)
    if has_audio(batch):
        audio = audio_tokens(core, batch["input_features"], batch["feature_attention_mask"])
        emb = emb.masked_scatter((ids == AUDIO_TOKEN_ID)[..., None], audio.to(emb.dtype))
    elif every_tower:
        idle_audio(core, ids.device)
    return emb


# Why the idle calls: under ZeRO-3 every module's forward gathers its partitioned weights with a collective that
# all ranks must join in the same order, so a rank whose micro-batch has no video (modality dropout, a clip
# without that stream) may not skip the vision tower while the others run it. It runs, in the same place, on
# the smallest blank input, and the output is dropped: no value of the step changes.

@torch.no_grad()
def idle_video(core: nn.Module, device: torch.device) -> None:
    """The vision tower on one blank frame group of merge x merge patches, output dropped."""
    vc = core.config.vision_config
    merge = core.model.spatial_merge_size
    patch = vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2
    grid = torch.tensor([[1, merge, merge]], device=device)
    video_tokens(core, torch.zeros(merge * merge, patch, device=device), grid)


@torch.no_grad()
def idle_audio(core: nn.Module, device: torch.device) -> None:
    """The audio tower on 4 blank mel frames (one audio token), output dropped."""
    mask = torch.ones(1, 4, dtype=torch.long, device=device)
    audio_tokens(core, torch.zeros(1, mel_bins(core), 4, device=device), mask)


@torch.no_grad()
def video_tokens(core: nn.Module, pixels: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The vision tower on ``pixels`` (sum t*h*w, 1176) of videos ``grid`` (n, 3): (sum t*h*w/4, d), videos in order."""
    return torch.cat(core.model.get_video_features(pixels, grid, return_dict=True).pooler_output)


@torch.no_grad()
def audio_tokens(core: nn.Module, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The audio tower on log-mel ``features`` (n, n_mels, T) with ``mask`` (n, T): (sum tokens, d), clips in order."""
    return core.model.get_audio_features(features, mask, return_dict=True).last_hidden_state


def mel_bins(core: nn.Module) -> int:
    """Mel bins the audio tower reads (128 for Qwen2.5-Omni)."""
    return core.config.audio_config.num_mel_bins


def embed_tokens(core: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Plain token embeddings (decoding: generated and candidate tokens)."""
    return core.model.get_input_embeddings()(ids)


def lm_head(core: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Logits of decoder states (..., d) -> (..., V)."""
    return core.lm_head(hidden)


class _StopForward(Exception):
    """Raised by a layer hook once the source layer of the full-observation pass has run."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden


def decode(core: nn.Module, x, mask, pos, cache=None, source_layer: int = -1):
    """The language model (decoder + final norm, no LM head). Always given position ids.

    ``source_layer`` -1: last layer after the final norm; k: output of decoder layer k (stops there).
    Returns (hidden (B, L, d), cache).
    """
    lm = core.model.language_model
    hook = None
    if source_layer != -1:
        def stop(_module, _args, output):
            raise _StopForward(output[0] if isinstance(output, tuple) else output)
        hook = lm.layers[source_layer].register_forward_hook(stop)
    try:
        out = lm(inputs_embeds=x, attention_mask=mask, position_ids=pos, cache=cache,
                 use_cache=cache is not None)
    except _StopForward as done:
        return done.hidden, None
    finally:
        if hook is not None:
            hook.remove()
    return out.last_hidden_state, out.cache


def new_cache():
    from transformers import DynamicCache

    return DynamicCache()


def cache_copy(cache, n: int, detach: bool = True):
    """A cache over the first ``n`` positions of the same keys/values (detached unless asked): another pass
    extends it without touching the original."""
    from transformers import DynamicCache

    def cut(t):
        t = t[:, :, :n]
        return t.detach() if detach else t

    return DynamicCache([(cut(layer.keys), cut(layer.values)) for layer in cache.layers])


def repeat_cache(cache, k: int) -> None:
    """Each row of the cache repeated ``k`` times (sample-major), in place."""
    cache.batch_repeat_interleave(k)
