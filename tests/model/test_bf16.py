"""bf16 numerics of the whole model at tiny width (hidden 64): the dtype boundaries on any CPU, in seconds.

At width 64 there is no gemm cost to speak of, so this runs where bf16 matmuls take torch's scalar fallback
(CPUs without AVX512-BF16/AMX) as well; the real widths in bf16 are ``tests/sevenb/test_shaped_7b.py``.
The EWM's stated dtype choice (the docstring of that file): outside DeepSpeed (``build_model``) the EWM stays
fp32 beside the bf16 thinker, casting the thinker's states in (``EmotionWorldModule.project``) and its belief
tokens out (``injection.gather_embeddings``); under DeepSpeed with ``bf16.enabled`` the engine casts the whole
module, the EWM included, and keeps fp32 master weights in its optimizer. LoRA follows the same split: PEFT's
``get_peft_model`` upcasts bf16 adapters to fp32 (``autocast_adapter_dtype``, its default), so outside DeepSpeed
LoRA's weights and gradients are fp32, and under DeepSpeed they are bf16, the thinker's dtype.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from affectverse_ds.model.affect_model import build_model
from tests.support.models import nonzero_lora_b

REPO = Path(__file__).resolve().parents[2]
# video and audio, video only, audio only: both imagination modules and both MAMAs run
SPECS = [dict(video=4, audio=60), dict(video=4, audio=0), dict(video=0, audio=60)]


def _batch(batch_maker) -> dict:
    return {k: v for k, v in batch_maker.make(SPECS).items() if k != "meta"}


def _copy_trainable(src, dst) -> None:
    """dst's LoRA and EWM weights := src's (cast to dst's dtypes), so two precisions compare on one model."""
    mine = dict(dst.trainable_parameters())
    with torch.no_grad():
        for n, p in src.trainable_parameters():
            mine[n].copy_(p)


def test_bf16_thinker_with_fp32_ewm_forward_backward(tiny_cfg, batch_maker):
    """build_model: bf16 thinker, fp32 LoRA and EWM; finite loss near the fp32 model's, gradients where they belong."""
    torch.manual_seed(0)
    ref = build_model(tiny_cfg("ewm.modality_dropout=0.0"), "cpu").train()
    nonzero_lora_b(ref)
    model = build_model(tiny_cfg("ewm.modality_dropout=0.0", "backbone.dtype=bfloat16"), "cpu").train()
    _copy_trainable(ref, model)
    assert model.core.dtype == torch.bfloat16
    lora = [(n, p) for n, p in model.trainable_parameters() if "lora_" in n]
    ewm = [(n, p) for n, p in model.trainable_parameters() if n.startswith("ewm.")]
    assert lora and all(p.dtype == torch.float32 for _, p in lora)  # PEFT upcasts bf16 adapters
    assert ewm and all(p.dtype == torch.float32 for _, p in ewm)

    seen = {}  # the dtypes at the EWM's two boundaries, as the forward really runs them

    def record(key, pick):
        def hook(module, args, kwargs_or_out):  # returns None: the hook observes, never replaces
            seen.setdefault(key, pick(args, kwargs_or_out).dtype)
        return hook

    hooks = [model.ewm.down[0].register_forward_hook(record("ewm_in", lambda a, o: a[0])),
             model.ewm.up.register_forward_hook(record("ewm_out", lambda a, o: o)),
             model.core.model.language_model.layers[0].register_forward_pre_hook(
                 record("decoder_in", lambda a, k: a[0] if a else k["hidden_states"]), with_kwargs=True)]
    batch = _batch(batch_maker)
    out = model(batch, kappa=0.75, generator=torch.Generator().manual_seed(0))
    for h in hooks:
        h.remove()
    assert seen == {"ewm_in": torch.float32, "ewm_out": torch.float32, "decoder_in": torch.bfloat16}, seen
    assert torch.isfinite(out.loss) and torch.isfinite(out.img_loss) and out.img_loss > 0
    expected = ref(batch, kappa=0.75, generator=torch.Generator().manual_seed(0))
    # bf16 weights and activations (8 mantissa bits) on one set of weights: measured 18.100 against 18.105
    # (3e-4 relative); the bound is 1%
    assert abs(out.loss.item() - expected.loss.item()) < 0.01 * expected.loss.item(), (out.loss, expected.loss)
    assert abs(out.img_loss.item() - expected.img_loss.item()) < 0.01 * expected.img_loss.item()
    out.loss.backward()

    for n, p in lora:
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n
    for n, p in ewm:
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), n
    # through the bf16 decoder and the belief tokens back to the EWM's input projections
    assert all(model.ewm.down[m].weight.grad.abs().sum() > 0 for m in (0, 1))
    assert model.ewm.up.weight.grad.abs().sum() > 0


@pytest.fixture
def world_of_one():
    """This process as a world of one (no launcher); the group and DeepSpeed's variables are gone afterwards."""
    from affectverse_ds import distributed as dist

    from tests.support.launch import LAUNCHER_VARS

    saved = dict(os.environ)
    for key in LAUNCHER_VARS:
        os.environ.pop(key, None)
    info = dist.dist_info_from_env()
    dist.init_distributed(info)
    yield info
    if dist.is_initialized():
        import deepspeed.comm

        # DeepSpeed's own teardown: it also drops the groups it cached (its data-parallel clone of the world);
        # after torch's alone, the next engine built in this process fails on a group that is not registered
        deepspeed.comm.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)


def test_one_deepspeed_bf16_step(tiny_cfg, batch_maker, world_of_one):
    """ZeRO-2, bf16 enabled: the engine casts the EWM to bf16; one step moves LoRA and the EWM, all finite."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_grad

    from affectverse_ds.train.engine import build_engine

    torch.manual_seed(0)
    cfg = tiny_cfg("ewm.modality_dropout=0.0", "backbone.dtype=bfloat16", "train.precision=bf16",
                   "train.micro_batch=3", "train.grad_accum=1", "train.global_batch=null", "train.lr=1e-3")
    model = build_model(cfg, "cpu").train()
    trainable = model.trainable_parameters()
    engine, _, _, ds = build_engine(model, trainable, cfg, REPO / "ds_configs" / "zero2.json", world_size=1,
                                    total_steps=1, warmup_steps=0)
    assert ds["bf16"]["enabled"] and ds["zero_optimization"]["stage"] == 2
    assert all(p.dtype == torch.bfloat16 for _, p in trainable)  # the whole module, the EWM included
    before = {n: safe_get_full_fp32_param(p).clone() for n, p in trainable}
    assert all(v.dtype == torch.float32 for v in before.values())  # the optimizer's master weights

    grad_dtypes = {}  # what autograd hands each parameter, before ZeRO moves it into its fp32 partition

    def record(name):
        def hook(grad):  # returns None: the gradient passes unchanged
            grad_dtypes.setdefault(name, grad.dtype)
        return hook

    hooks = [p.register_hook(record(n)) for n, p in trainable]
    out = engine(_batch(batch_maker), kappa=0.75, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and torch.isfinite(out.img_loss) and out.img_loss > 0
    engine.backward(out.loss)
    for h in hooks:
        h.remove()
    assert grad_dtypes and set(grad_dtypes.values()) == {torch.bfloat16}  # LoRA's and the EWM's: the thinker's
    assert any("lora_B" in n for n in grad_dtypes) and any(n.startswith("ewm.down.") for n in grad_dtypes)
    grads = {n: safe_get_full_grad(p) for n, p in trainable}
    missing = [n for n, g in grads.items() if g is None or not torch.isfinite(g).all()]
    assert missing == []
    # LoRA B (A's gradient is zero while B is at its zero init) and the EWM down to its input projections
    for part in ("lora_B", "ewm.down.0", "ewm.down.1", "ewm.up.", "ewm.imagine.0", "ewm.imagine.1"):
        assert any(part in n and g.abs().sum() > 0 for n, g in grads.items()), part
    engine.step()

    after = {n: safe_get_full_fp32_param(p) for n, p in trainable}
    assert all(torch.isfinite(v).all() for v in after.values())
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert any("lora_B" in n for n in moved) and any(n.startswith("ewm.down.") for n in moved), sorted(moved)
    # the bf16 module weights are the updated master weights, rounded
    for n, p in trainable:
        assert torch.equal(p.detach(), after[n].to(torch.bfloat16)), n
