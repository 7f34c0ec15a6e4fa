"""Gradient checkpointing of the thinker on the EWM path: the same loss and gradients as without it.

Under checkpointing the shared-prefix optimisation is off (transformers keeps no KV cache in checkpointed
training layers), with a logged reason; the step without checkpointing runs it, so the comparison also covers
"shared prefix on" vs "checkpointed two passes".
"""
from __future__ import annotations

import logging

import torch

from affectverse_ds.model.affect_model import build_model

from tests.support.models import nonzero_lora_b

# fp32 on CPU: recomputation replays the same kernels on the same inputs, and the shared-prefix split changes
# only summation order, so the differences are float rounding (measured max |diff| 9.5e-7 on the tiny backbone)
ATOL, RTOL = 1e-5, 1e-4


def _step(cfg, batch):
    torch.manual_seed(0)
    model = build_model(cfg, "cpu").train()
    model.min_shared_prefix = 1
    nonzero_lora_b(model)
    out = model(batch, kappa=0.8, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    return model, out, {n: p.grad.clone() for n, p in model.trainable_parameters()}


def test_checkpointed_gradients_equal_plain_ones(tiny_cfg, batch_maker, caplog):
    batch = batch_maker.make([dict(video=6, audio=60), dict(video=4, audio=0), dict(video=0, audio=40),
                              dict(video=0, audio=0)])
    overrides = ("ewm.modality_dropout=0.0",)
    plain_model, plain, g_plain = _step(tiny_cfg(*overrides), batch)
    with caplog.at_level(logging.WARNING, logger="affectverse_ds.model.affect_model"):
        ckpt_model, ckpt, g_ckpt = _step(tiny_cfg(*overrides, "backbone.gradient_checkpointing=true"), batch)
    assert ckpt_model.core.model.language_model.gradient_checkpointing
    assert not plain_model.core.model.language_model.gradient_checkpointing
    assert "shared-prefix optimisation is off" in caplog.text
    assert plain.metrics["shared_prefix"] > 0 and ckpt.metrics["shared_prefix"] == 0
    torch.testing.assert_close(ckpt.loss, plain.loss, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(ckpt.img_loss, plain.img_loss, atol=ATOL, rtol=RTOL)
    assert set(g_ckpt) == set(g_plain)
    worst = 0.0
    for name in g_plain:
        torch.testing.assert_close(g_ckpt[name], g_plain[name], atol=ATOL, rtol=RTOL, msg=name)
        worst = max(worst, float((g_ckpt[name] - g_plain[name]).abs().max()))
    assert any(float(g.abs().sum()) > 0 for n, g in g_plain.items() if "lora_A" in n)  # the comparison has signal
    assert any(float(g.abs().sum()) > 0 for n, g in g_plain.items() if n.startswith("ewm."))
    print(f"max |grad difference| with vs without checkpointing: {worst:.2e}")


def test_checkpointing_saves_activations(tiny_cfg, batch_maker):
    """What checkpointing is for: fewer bytes kept for backward in the decoder."""
    from affectverse_ds.memory_plan import saved_activation_bytes

    batch = batch_maker.make([dict(video=6, audio=60), dict(video=4, audio=60)])
    saved = {}
    for flag in ("false", "true"):
        torch.manual_seed(0)
        model = build_model(tiny_cfg(f"backbone.gradient_checkpointing={flag}"), "cpu").train()
        saved[flag] = saved_activation_bytes(model, batch, torch.Generator().manual_seed(0))
    assert saved["true"] < saved["false"], saved
