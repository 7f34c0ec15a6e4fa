"""The observed past's own tower inputs (model/past_inputs.py): the torch log-mel equals the collator's, reads no
sample after the cut, and a clip observed at keep < 1 is the clip cut there, as the collator would make it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from affectverse_ds.data import processing
from affectverse_ds.model import thinker_io
from affectverse_ds.model.affect_model import build_model
from affectverse_ds.model.past_inputs import log_mel, mel_filters
from tests.support.models import nonzero_lora_b


def test_log_mel_equals_the_collators_features_and_ignores_samples_after_the_cut(batch_maker):
    g = torch.Generator().manual_seed(0)
    wave = torch.randn(3, 40_000, generator=g) * torch.linspace(0.01, 1.0, 40_000)
    cuts = [321, 23_457, 40_000]  # one token's worth, mid-hop, the whole clip
    feats, mask = log_mel(wave, cuts, mel_filters(128, wave.device))
    assert mask.sum(1).tolist() == [processing.audio_feature_length(n) for n in cuts]
    for i, n in enumerate(cuts):
        ref = batch_maker.features(wave[i, :n])  # processing.audio_features, what the collator stores
        torch.testing.assert_close(feats[i, :, :ref.shape[1]], ref, rtol=0, atol=1e-5)
        assert feats[i, :, ref.shape[1]:].abs().sum() == 0
    louder = wave.clone()
    for i, n in enumerate(cuts):
        louder[i, n:] = louder[i, n:] * 50 + 1  # a louder ending moves the whole clip's floor, not the cut's
    assert torch.equal(log_mel(louder, cuts, mel_filters(128, wave.device))[0], feats)


@pytest.mark.parametrize("kappa", [0.5, 0.75])
def test_a_clip_observed_at_keep_kappa_is_the_clip_cut_there(tiny_cfg, batch_maker, kappa):
    """Evaluation at keep < 1 (context_source=past) answers as the same model does for the clip cut at the keep
    point and collated as a sample of its own (whole frame groups, the waveform's first samples). Equal up to the
    float rounding of the torch log-mel against the collator's numpy one (not bit for bit)."""
    specs = [dict(video=6, audio=60), dict(video=8, audio=80), dict(video=0, audio=70)]
    whole, cut = [], []
    for i, spec in enumerate(specs):
        s = batch_maker.sample(**spec, seed=i)
        groups = max(int(np.floor(kappa * (spec["video"] // 2) + 0.5)), 1) if spec["video"] else 0
        n = processing.audio_keep_samples(kappa, s["wave"].shape[0])
        c = batch_maker.sample(video=2 * groups, audio=processing.audio_feature_length(n), seed=i)
        if groups:
            c["pixels"] = s["pixels"][:c["pixels"].shape[0]]
        c["wave"] = s["wave"][:n]
        c["features"] = batch_maker.features(c["wave"])
        whole.append(s)
        cut.append(c)
    model = build_model(tiny_cfg(), "cpu").eval()
    nonzero_lora_b(model)
    with torch.no_grad():
        observed = thinker_io.lm_head(model.core, model._prefill(batch_maker.collate(whole), kappa)[1])
        truncated = thinker_io.lm_head(model.core, model._prefill(batch_maker.collate(cut), 1.0)[1])
    torch.testing.assert_close(observed, truncated, rtol=1e-4, atol=1e-4)
    full = build_model(tiny_cfg("ewm.context_source=full"), "cpu").eval()
    full.load_state_dict(model.state_dict())
    with torch.no_grad():  # the pre-issue-24 path gathers the kept tokens from the whole clip's towers
        leaky = thinker_io.lm_head(full.core, full._prefill(batch_maker.collate(whole), kappa)[1])
    assert not torch.allclose(leaky, truncated, rtol=1e-4, atol=1e-4)


def test_evaluation_at_keep_below_one_runs_only_the_cut_clips_towers(tiny_cfg, batch_maker):
    """Every sequence of an evaluation at keep < 1 is truncated, so the whole clip's towers are skipped; training
    still runs them (the full-observation pass reads the future tokens), and at keep 1 nothing is cut."""
    model = build_model(tiny_cfg(), "cpu")
    batch = batch_maker.make([dict(video=6, audio=60), dict(video=0, audio=70)])
    calls = []
    for name in ("_embed", "_embed_past"):
        fn = getattr(model, name)
        setattr(model, name, lambda *a, _fn=fn, _name=name, **k: calls.append(_name) or _fn(*a, **k))
    with torch.no_grad():
        model.eval()._prefill(batch, 0.5)
        assert calls == ["_embed_past"]
        calls.clear()
        model.eval()._prefill(batch, 1.0)
        assert calls == ["_embed"]
        calls.clear()
        model.train()(batch, kappa=0.5)
        assert calls == ["_embed", "_embed_past"]
