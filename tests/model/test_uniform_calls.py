"""``AffectVerseModel.uniform_calls`` (what the engine sets under ZeRO-3): a training step calls the same modules,
in the same order and with the same grad mode, whatever its clips hold and wherever kappa cuts them.

ZeRO-3 gathers a module's partitioned weights in that module's forward with a collective every rank joins, so
two ranks whose steps call different modules wait on each other forever (under gloo: "collective mismatch").
Each case below stands for one rank's micro-batch with its own kappa draw; the recorded calls are those of the
modules that hold weights of their own, i.e. the ones ZeRO-3 gathers."""
from __future__ import annotations

import pytest
import torch

from affectverse_ds.model.affect_model import build_model
from tests.support.models import nonzero_lora_b

# one micro-batch per rank: whole streams, clips kept whole at most kappas (short video, 8 mel frames),
# a stream missing from every clip (modality dropout, a clip without it), no A/V at all
RANKS = {
    "both": [dict(video=4, audio=60), dict(video=6, audio=90)],
    "short": [dict(video=2, audio=8), dict(video=2, audio=8)],
    "video_only": [dict(video=4, audio=0), dict(video=2, audio=0)],
    "audio_only": [dict(video=0, audio=60), dict(video=0, audio=30)],
    "text_only": [dict(video=0, audio=0), dict(video=0, audio=0)],
    "mixed": [dict(video=4, audio=0), dict(video=0, audio=60)],
}


def _calls(model, batch, seed: int) -> tuple[list[tuple[str, bool]], float, set[str]]:
    """(module name, grad enabled) of every forward of a module with weights of its own (with gradient
    checkpointing also the forwards backward re-runs), the loss, and the parameters given a gradient (ZeRO-3
    reduces each one's gradient with a collective too)."""
    model.zero_grad(set_to_none=True)
    names = {m: n for n, m in model.named_modules()}
    calls = []

    def record(module, _args):
        calls.append((names[module], torch.is_grad_enabled()))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules()
             if next(m.parameters(recurse=False), None) is not None]
    try:
        out = model(batch, generator=torch.Generator().manual_seed(seed))  # kappa drawn, as in training
        out.loss.backward()
    finally:
        for h in hooks:
            h.remove()
    return calls, float(out.loss.detach()), {n for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arm", [["ewm.enabled=true"], ["ewm.enabled=false"],
                                 ["ewm.enabled=true", "backbone.gradient_checkpointing=true"],
                                 ["ewm.enabled=true", "ewm.context_source=full"]],
                         ids=["f", "b", "f_checkpointing", "f_full_context"])
def test_every_rank_calls_the_same_modules_whatever_its_clips(tiny_cfg, batch_maker, arm):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(*arm, "ewm.temporal_split=true"), "cpu").train()
    nonzero_lora_b(model)
    model.min_shared_prefix = 1  # the prefix sharing of the default mode engages on these short sequences
    batches = {name: batch_maker.make(specs) for name, specs in RANKS.items()}

    model.uniform_calls = True
    uniform = {name: _calls(model, b, seed) for seed, (name, b) in enumerate(batches.items())}
    model.uniform_calls = False
    default = {name: _calls(model, b, seed) for seed, (name, b) in enumerate(batches.items())}

    first, grads = uniform["both"][0], uniform["both"][2]
    assert [name for name, (calls, _, _) in uniform.items() if calls != first] == []
    assert [name for name, (_, _, g) in uniform.items() if g != grads] == []
    assert grads == {n for n, _ in model.trainable_parameters()}
    # the recorder sees what ZeRO-3 would trip on: without the mode the same ranks' calls differ
    assert [name for name, (calls, _, _) in default.items() if calls != default["both"][0]] != []
    for name in RANKS:  # the extra calls change no value (float rounding only: no prefix sharing)
        assert uniform[name][1] == pytest.approx(default[name][1], rel=1e-5), name
