"""A batch of two sequences of different lengths gives each sample the loss and logits it gets alone."""
from __future__ import annotations

import pytest
import torch

from affectverse_ds.model.affect_model import build_model

SPECS = [dict(video=4, audio=60, subtitle="a much longer subtitle that makes this sample the long one"),
         dict(video=2, audio=30, subtitle=None, answer="sad")]


def _per_sample(model, batch, kappa):
    with torch.no_grad():
        out = model(batch, kappa=kappa)
    rows = [out.logits[out.label_sample == i] for i in range(batch["input_ids"].shape[0])]
    assert (out.metrics["shared_prefix"] > 0) == (model.training and model.share_prefix)
    return out.sample_nll, rows


@pytest.mark.parametrize("pad", ["right", "left"])
@pytest.mark.parametrize("mode", ["eval", "train_kappa", "train_kappa_shared_prefix"])
def test_padding_invariance(tiny_cfg, batch_maker, pad, mode):
    torch.manual_seed(0)
    model = build_model(tiny_cfg("ewm.modality_dropout=0.0"), "cpu")
    model.share_prefix, model.min_shared_prefix = mode.endswith("shared_prefix"), 1
    kappa = None
    if mode.startswith("train_kappa"):
        model.train()
        kappa = 0.8
    else:
        model.eval()
    samples = [batch_maker.sample(**s, seed=i) for i, s in enumerate(SPECS)]
    both = batch_maker.collate(samples, pad=pad)
    assert both["attention_mask"].sum(1).unique().numel() == 2  # really different lengths
    nll, rows = _per_sample(model, both, kappa)
    for i, s in enumerate(samples):
        alone_nll, alone_rows = _per_sample(model, batch_maker.collate([s], pad=pad), kappa)
        torch.testing.assert_close(nll[i], alone_nll[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(rows[i], alone_rows[0], atol=1e-5, rtol=0)
