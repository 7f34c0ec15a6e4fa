"""The EWM alone: imagination loss against a hand computation, stop-gradient targets, belief counts, ablations."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from affectverse_ds.config import EWMConfig
from affectverse_ds.model.ewm import EmotionWorldModule, adaptive_pool_matrix, split_points

D = 8


def _ewm(**kw) -> EmotionWorldModule:
    torch.manual_seed(0)
    return EmotionWorldModule(EWMConfig(d_w=4, heads=2, n_future=2, rollout_steps=2, n_belief_base=2, **kw), D)


def test_imagination_loss_formula_by_hand():
    y = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]]]])  # (B=1, S=1, N_s=2, d_w=2)
    target = torch.tensor([[[1.0, 1.0], [0.0, -2.0]]])  # (1, 2, 2)
    loss, mse, cos = EmotionWorldModule.imagination_loss(y, target)
    want_mse = ((0 ** 2 + 1 ** 2) + (0 ** 2 + 4 ** 2)) / 4  # mean over tokens and dims
    want_cos = (1 / math.sqrt(2) + -1.0) / 2  # per-token cosine, averaged
    assert mse.item() == pytest.approx(want_mse)
    assert cos.item() == pytest.approx(want_cos)
    assert loss.item() == pytest.approx(want_mse + 0.5 * (1 - want_cos))


def test_pooling_matrix_equals_adaptive_avg_pool1d():
    z = torch.randn(1, 20, 3)
    for start, length in [(0, 20), (3, 5), (17, 3), (10, 1), (4, 16)]:
        for bins in (1, 3, 4, 8):
            w = adaptive_pool_matrix(torch.tensor([start]), torch.tensor([length]), bins, 20)
            ref = F.adaptive_avg_pool1d(z[:, start:start + length].transpose(1, 2), bins).transpose(1, 2)
            torch.testing.assert_close(w @ z, ref)


def test_split_points():
    k = torch.tensor([0.7, 0.7, 0.99, 1.0, 0.5, 0.7], dtype=torch.float64)
    n = torch.tensor([10, 1, 3, 7, 0, 3])
    assert split_points(k, n).tolist() == [7, 1, 3, 7, 0, 2]  # 0.99 of 3 units rounds to all of them


def test_kept_fraction_of_whole_units_follows_kappa():
    """Training's kappa ~ U[0.7, 1) over clips of 4-12 video groups (4-8 s at 3 FPS): the kept fraction has
    kappa's mean and reaches a whole clip. The floor kept 0.788 on average and never more than 11/12."""
    g = torch.Generator().manual_seed(0)
    kappa = 0.7 + 0.3 * torch.rand(20000, generator=g, dtype=torch.float64)
    groups = torch.randint(4, 13, (20000,), generator=g)
    kept = split_points(kappa, groups).double() / groups
    assert abs(float(kept.mean()) - float(kappa.mean())) < 0.01
    assert float((kept - kappa).abs().max()) <= 0.5 / 4 + 1e-12  # within half a unit
    assert float((kept == 1).double().mean()) > 0.1


def test_img_loss_equals_hand_computation_and_targets_carry_no_gradient():
    ewm = _ewm(belief="ewm")
    g = torch.Generator().manual_seed(1)
    hv = torch.randn(2, 6, D, generator=g).requires_grad_(True)
    ha = torch.randn(2, 5, D, generator=g).requires_grad_(True)
    lengths = [torch.tensor([6, 4]), torch.tensor([5, 0])]
    split = [torch.tensor([4, 3]), torch.tensor([2, 0])]
    use = [torch.tensor([True, True]), torch.tensor([True, False])]
    out = ewm([hv, ha], lengths, split, use)

    # by hand: rerun the rollouts, pool each future with F.adaptive_avg_pool1d, Eq. 5 then Eq. 21
    z = [ewm.project(hv, 0), ewm.project(ha, 1)]
    pos = [torch.arange(z[m].shape[1])[None] for m in range(2)]
    past = [(pos[m] < split[m][:, None]) & use[m][:, None] for m in range(2)]
    terms = []
    for m in range(2):
        ys = ewm.imagine[m](*ewm.context(z, past, m))  # (B, S, N_s, d_w)
        for i in range(2):
            if not use[m][i] or lengths[m][i] == split[m][i]:
                continue
            fut = z[m][i, split[m][i]:lengths[m][i]]  # (L_fut, d_w)
            tgt = F.adaptive_avg_pool1d(fut.T[None], 2)[0].T
            steps = [F.mse_loss(ys[i, s], tgt) + 0.5 * (1 - F.cosine_similarity(ys[i, s], tgt, dim=-1).mean())
                     for s in range(2)]
            terms.append(sum(steps) / 2)
    assert len(terms) == 3  # video of both samples, audio of the first
    v0, v1, a0 = terms
    # Eq. 21: per sample over its available modalities, then over samples (sample 0 does not weigh twice)
    torch.testing.assert_close(out.img_loss, ((v0 + a0) / 2 + v1) / 2)
    assert not torch.allclose(out.img_loss, sum(terms) / 3)

    out.img_loss.backward()
    # future tokens only feed the (detached) target: no gradient; past tokens feed the prediction
    assert hv.grad[0, 4:6].abs().sum() == 0 and hv.grad[1, 3:4].abs().sum() == 0
    assert ha.grad[0, 2:5].abs().sum() == 0
    assert hv.grad[0, :4].abs().sum() > 0 and ha.grad[0, :2].abs().sum() > 0
    assert hv.grad[1, 4:].abs().sum() == 0  # padding


def test_belief_counts_and_per_step_metrics():
    ewm = _ewm()
    b = 4
    lengths = [torch.tensor([5, 5, 0, 0]), torch.tensor([4, 0, 4, 0])]
    hidden = [torch.randn(b, 5, D), torch.randn(b, 4, D)]
    split = [torch.tensor([3, 3, 0, 0]), torch.tensor([2, 0, 2, 0])]
    use = [n > 0 for n in lengths]
    out = ewm(hidden, lengths, split, use)
    assert out.n_belief.tolist() == [4, 2, 2, 0]
    assert out.beliefs.shape == (b, 4, D)
    assert out.mama_weights.shape == (b, 4, 2 * 2 * 2)
    # dual attends both memories, single-video only the video half (type-masked memory)
    assert out.mama_weights[1, :2, 4:].abs().sum() == 0 and out.mama_weights[2, :2, :4].abs().sum() == 0
    for key in ("img_cos_v_s1", "img_cos_v_s2", "img_mse_a_s1", "img_mse_a_s2"):
        assert torch.isfinite(out.metrics[key])


@pytest.mark.parametrize("belief", ["none", "random", "pooling", "ewm", "imagination"])
@pytest.mark.parametrize("context", ["self", "cross", "full"])
def test_ablation_modes_run(belief, context):
    ewm = _ewm(belief=belief, context=context, boundary_residual=belief != "pooling")
    lengths = [torch.tensor([5, 3]), torch.tensor([4, 0])]
    out = ewm([torch.randn(2, 5, D), torch.randn(2, 4, D)], lengths,
              [torch.tensor([3, 2]), torch.tensor([2, 0])], [n > 0 for n in lengths])
    assert out.n_belief.tolist() == ([0, 0] if belief == "none" else [4, 2])
    assert torch.isfinite(out.beliefs).all() and torch.isfinite(out.img_loss)


def test_context_modes_differ():
    """self ignores the other modality's past; cross ignores its own (when the other exists)."""
    z = [torch.randn(1, 3, 4), torch.randn(1, 2, 4)]
    past = [torch.tensor([[True, True, False]]), torch.tensor([[True, True]])]
    masks = {}
    for mode in ("self", "cross", "full"):
        masks[mode] = _ewm(context=mode).context(z, past, 0)[1][0].tolist()
    assert masks["full"] == [True, True, False, True, True]
    assert masks["self"] == [True, True, False, False, False]
    assert masks["cross"] == [False, False, False, True, True]
    alone = [z[0], z[1]], [past[0], torch.zeros(1, 2, dtype=torch.bool)]
    assert _ewm(context="cross").context(*alone, 0)[1][0].tolist() == [True, True, False, False, False]


def test_imagination_beliefs_pool_the_imagined_tokens_without_mama():
    """Table 3 row (c): belief mode "imagination" = each modality's Y(1:S) averaged to N_b tokens, no MAMA."""
    ewm = _ewm(belief="imagination", boundary_residual=False)
    lengths = [torch.tensor([5, 0]), torch.tensor([4, 4])]
    hidden = [torch.randn(2, 5, D), torch.randn(2, 4, D)]
    split = [torch.tensor([3, 0]), torch.tensor([2, 2])]
    use = [n > 0 for n in lengths]
    out = ewm(hidden, lengths, split, use)
    assert out.mama_weights is None and out.n_belief.tolist() == [4, 2]
    z = [ewm.project(hidden[m], m) for m in range(2)]
    pos = [torch.arange(z[m].shape[1])[None] for m in range(2)]
    past = [(pos[m] < split[m][:, None]) & use[m][:, None] for m in range(2)]
    ys = ewm.rollout(z, past)  # [(B, S=2, N_s=2, d_w)]
    pooled = [F.adaptive_avg_pool1d(y.reshape(2, 4, -1).transpose(1, 2), 2).transpose(1, 2) for y in ys]
    torch.testing.assert_close(out.beliefs[0], ewm.up_project(torch.cat([pooled[0][0], pooled[1][0]])))
    torch.testing.assert_close(out.beliefs[1, :2], ewm.up_project(pooled[1][1]))  # audio only: first N_b
