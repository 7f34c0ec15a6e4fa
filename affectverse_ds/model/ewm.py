"""The Emotion World Module (paper Sec. 3.2, App. D, Table 7): a plain ``nn.Module``, no backbone inside.

Over 400 lines: ~40 are this docstring (pipeline and parameter count); its building blocks serve only this module.

Inputs are the thinker's hidden states at the video/audio token positions of
each sample (padded to a batch); outputs are up-projected belief tokens ready to
be inserted into the LLM sequence, the imagination loss and evaluation metrics.

Pipeline per sample (Algorithm 1, lines 5-12):
    Z_m = W_m H_m                                   bottleneck, Eq. 2
    past/future split at T_p,m ~ kappa L_m          Eq. 11 (:func:`split_points`, nearest whole unit; audio
        with its waveform: the tokens of its first floor(kappa n) samples, ``injection.keep_counts``)
    Y_m(1..S) = rollout of the imagination module   Eqs. 3-5, 13-16
    L_img = MSE + 0.5 (1 - cos) vs pooled future    Eqs. 5, 21
    b = MAMA(queries, [Y_v ; Y_a] + E_type)         Eqs. 6-7, 17-19
    b += alpha W_r mean(v_b, a_b)                   residual boundary injection
    B = LayerNorm(W_ep b + b_ep)                    up-projection, Sec. 3.2 / D.4

Batching: every sample runs through both imagination modules and both MAMA
modules with key masks (the EWM is ~1% of a step); per-sample selection picks
what applies. An absent or dropped modality is masked out of every context and
memory, so samples never see each other and padding never changes a result.

Parameter count at the 7B preset (d = 3584, d_w = 512, 8 heads, ffn_mult 4,
N_s = 8, S = 3, N_b = 4, 6 types). One Pre-LN cross-attention layer is
    attention q,k,v,o with bias   4 (512*512 + 512)           = 1,050,624
    GELU FFN 512->2048->512       512*2048+2048 + 2048*512+512 = 2,099,712
    LayerNorms (query, memory, ffn) 3 * 1024                  =     3,072
                                                               = 3,153,408
    down-projections W_v, W_a (no bias, Eq. 2)  2 * 3584*512   =  3,670,016
    imagination module (x2): 2 layers 6,306,816 + final LN 1,024 + W_out 512*512
        (no bias, Eq. 16) 262,144 + queries 8*512 4,096 + step emb 3*512 1,536
                                                 = 6,575,616 x 2 = 13,151,232
    tag embeddings e_self, e_cross               2 * 512       =      1,024
    MAMA dual: 1 layer 3,153,408 + final LN 1,024 + 8 queries 4,096 = 3,158,528
    MAMA single: 1 layer 3,153,408 + final LN 1,024 + 4 queries 2,048 = 3,156,480
    type embeddings 6 * 512                                   =      3,072
    W_r (no bias) 512*512 + alpha 1                           =    262,145
    up-projection W_ep 512*3584 + b_ep 3584 + LayerNorm 2*3584 =  1,845,760
    total                                                      = 25,248,257 (~25M, paper A.3)
A self-attention block among the queries would add 4.2M (29.5M, out of the
paper's ~25M), so the layers are cross-attention + FFN only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from affectverse_ds.config import EWMConfig

VIDEO, AUDIO = 0, 1  # type ids (Eq. 17) and modality order everywhere in this file
MODALITIES = ("v", "a")


def split_points(kappa: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """T_p = kappa * L rounded to the nearest unit per sample (Eq. 11 floors), clamped to [1, L] so a boundary
    token exists; 0 where L = 0.

    Why not the paper's floor: ``L`` counts whole units here (a video's 2-frame groups, 6-12 of them in a 4-8 s
    clip at 3 FPS), and the floor keeps on average half a unit less than kappa: with kappa ~ U[0.7, 1) the kept
    video fraction had mean 0.79 (kappa's: 0.85) and never reached 1, so keep-mask training never saw a whole
    video (``bench/kept_fraction.py``, docs/ablation.md). Rounding keeps within half a unit of kappa, with the
    kept fraction's mean kappa's; T_p = L (no future of that modality) is then possible in training too.
    Computed in float64 so the keep mask, the EWM and the tests agree to the token.

    Args:
        kappa: (B,) keep ratios in (0, 1].
        lengths: (B,) token counts of one modality (or region).
    Returns:
        (B,) long split points.
    """
    lengths = lengths.long()
    tp = torch.floor(kappa.double().cpu().to(lengths.device) * lengths.double() + 0.5).long()
    return torch.minimum(tp.clamp(min=1), lengths)


def past_view(z: list[torch.Tensor], past: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``z`` and the past masks cut to the columns up to the batch's last past token, per modality (at least one).

    What reads only the past reads these: its arithmetic (attention and pooling widths) is then the same whatever
    the future's length, so the beliefs are bit-identical functions of the past (tests/model/test_ewm_leak.py).
    One host sync per modality.
    """
    widths = [int(p.any(0).long().cumsum(0).argmax()) + 1 for p in past]
    return [t[:, :w] for t, w in zip(z, widths)], [p[:, :w] for p, w in zip(past, widths)]


def adaptive_pool_matrix(start: torch.Tensor, length: torch.Tensor, n_bins: int, width: int) -> torch.Tensor:
    """Averaging weights equal to ``F.adaptive_avg_pool1d`` over ``[start, start + length)`` of each row.

    Bin j covers floor(j L / n) .. ceil((j + 1) L / n) (PyTorch's rule); rows with L = 0 are all zero.

    Returns:
        (B, n_bins, width) float weights; ``weights @ Z`` pools Z of shape (B, width, d).
    """
    j = torch.arange(n_bins, device=length.device)
    lo = torch.div(j[None] * length[:, None], n_bins, rounding_mode="floor")  # (B, n)
    hi = -torch.div(-(j[None] + 1) * length[:, None], n_bins, rounding_mode="floor")  # ceil, (B, n)
    t = torch.arange(width, device=length.device)[None, None] - start[:, None, None]  # (B, 1, W)
    inside = (t >= lo[..., None]) & (t < hi[..., None])  # (B, n, W)
    return inside.float() / (hi - lo).clamp(min=1)[..., None].float()


# ----------------------------------------------------------------------------- building blocks


class CrossAttention(nn.Module):
    """Multi-head attention from queries to a masked memory whose keys/values are projected once (``memory``)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, d = t.shape
        return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)  # (B, h, n, dh)

    def memory(self, mem: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of mem (B, K, d): each (B, h, K, dh)."""
        return self._split(self.k(mem)), self._split(self.v(mem))

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mem_mask: torch.Tensor,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, Q, d), kv from :meth:`memory`, mem_mask (B, K) bool -> out (B, Q, d), weights (B, Q, K) or None."""
        b, nq, d = x.shape
        # A row with no valid key (absent modality) attends to key 0: finite values, selected away later.
        mem_mask = mem_mask.clone()
        mem_mask[:, 0] |= ~mem_mask.any(-1)
        q, (k, v) = self._split(self.q(x)), kv
        mask = mem_mask[:, None, None, :]  # (B, 1, 1, K)
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, h, Q, K)
            probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
            out, weights = probs @ v, probs.mean(1)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o(out.transpose(1, 2).reshape(b, nq, d)), weights


class CrossAttnLayer(nn.Module):
    """Pre-LN: x += Attn(LN(x), LN(mem)); x += FFN(LN(x)) with a GELU FFN."""

    def __init__(self, dim: int, heads: int, ffn_mult: int):
        super().__init__()
        self.norm_q, self.norm_mem, self.norm_ffn = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, heads)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Linear(ffn_mult * dim, dim))

    def memory(self, mem):
        return self.attn.memory(self.norm_mem(mem))

    def forward(self, x, kv, mem_mask, need_weights=False):
        a, weights = self.attn(self.norm_q(x), kv, mem_mask, need_weights)
        x = x + a
        return x + self.ffn(self.norm_ffn(x)), weights


class CrossAttnStack(nn.Module):
    """``n`` Pre-LN cross-attention layers and a final LayerNorm; returns the last layer's attention weights."""

    def __init__(self, dim: int, heads: int, ffn_mult: int, n: int):
        super().__init__()
        self.layers = nn.ModuleList(CrossAttnLayer(dim, heads, ffn_mult) for _ in range(n))
        self.norm = nn.LayerNorm(dim)

    def memory(self, mem: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer keys/values of a memory; every layer attends to the same memory, so this runs once."""
        return [layer.memory(mem) for layer in self.layers]

    def forward(self, x, kvs, mem_mask, need_weights=False):
        weights = None
        for layer, kv in zip(self.layers, kvs):
            x, weights = layer(x, kv, mem_mask, need_weights)
        return self.norm(x), weights


class ImaginationModule(nn.Module):
    """One target modality's multi-step rollout (Eqs. 14-16): shared layers, step embeddings, W_out."""

    def __init__(self, cfg: EWMConfig):
        super().__init__()
        self.future = nn.Parameter(torch.randn(cfg.n_future, cfg.d_w) * 0.02)  # f_1..Ns
        self.step = nn.Parameter(torch.randn(cfg.rollout_steps, cfg.d_w) * 0.02)  # e_step(s)
        self.block = CrossAttnStack(cfg.d_w, cfg.heads, cfg.ffn_mult, cfg.layers)
        self.out = nn.Linear(cfg.d_w, cfg.d_w, bias=False)  # W_out

    def forward(self, ctx: torch.Tensor, ctx_mask: torch.Tensor) -> torch.Tensor:
        """ctx (B, K, d_w) = C(1), ctx_mask (B, K) -> Y (B, S, N_s, d_w)."""
        b = ctx.shape[0]
        kv_ctx = self.block.memory(ctx)  # C(1) is in every step's context: project it once
        kvs, mask = kv_ctx, ctx_mask
        ys = []
        for s in range(self.step.shape[0]):
            q = (self.future + self.step[s]).expand(b, -1, -1)  # (B, N_s, d_w), Eq. 14
            f, _ = self.block(q, kvs, mask)  # Eq. 15
            y = self.out(f)  # (B, N_s, d_w), Eq. 16
            ys.append(y)
            # C(s+1) = [C(1) ; Y(s)]
            kvs = [(torch.cat([k, ky], dim=2), torch.cat([v, vy], dim=2))
                   for (k, v), (ky, vy) in zip(kv_ctx, self.block.memory(y))]
            mask = torch.cat([ctx_mask, ctx_mask.new_ones(b, y.shape[1])], dim=1)
        return torch.stack(ys, dim=1)


class BeliefAggregator(nn.Module):
    """MAMA (Eq. 19): learnable belief queries cross-attend to the memory bank."""

    def __init__(self, cfg: EWMConfig, n_queries: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(n_queries, cfg.d_w) * 0.02)  # b_1..Nq
        self.block = CrossAttnStack(cfg.d_w, cfg.heads, cfg.ffn_mult, cfg.mama_layers)

    def forward(self, mem, mem_mask):
        """mem (B, N_M, d_w) -> beliefs (B, N_q, d_w), attention weights (B, N_q, N_M)."""
        queries = self.queries.expand(mem.shape[0], -1, -1)
        return self.block(queries, self.block.memory(mem), mem_mask, need_weights=True)


# ----------------------------------------------------------------------------- the module


@dataclass
class EWMOutput(ModelOutput):
    """What the EWM hands to the composition.

    beliefs: (B, 2 N_b, d) up-projected belief tokens; sample i uses the first ``n_belief[i]``.
    n_belief: (B,) 2 N_b (both modalities), N_b (one), 0 (none, or belief mode "none").
    img_loss: scalar, Eq. 21 averaged over samples; zero when no sample has a future to predict.
    metrics: detached scalars: ``img_cos_{v,a}_s{k}``, ``img_mse_{v,a}_s{k}`` (per rollout step k = 1..S,
        averaged over samples with a target; NaN where none), ``img_loss_{v,a}``, ``n_img_targets``.
    mama_weights: (B, 2 N_b, 2 S N_s) belief->memory attention (head-averaged), memory laid out
        [video steps 1..S ; audio steps 1..S]; None unless the belief mode is "ewm".
    touch: 0 x the sum of every EWM parameter (see :meth:`EmotionWorldModule.zero_touch`), for the loss.

    A ``ModelOutput`` (a dict) rather than a plain dataclass: ZeRO-3 finds the tensors of a module's
    output to re-gather its partitioned weights for the backward pass, and it cannot see into a dataclass.
    """

    beliefs: torch.Tensor
    n_belief: torch.Tensor = None  # ModelOutput: every field after the first has a default of None
    img_loss: torch.Tensor = None
    metrics: dict[str, torch.Tensor] = None
    mama_weights: torch.Tensor | None = None
    touch: torch.Tensor | None = None


class EmotionWorldModule(nn.Module):
    """Bottleneck, imagination, MAMA, boundary residual and up-projection (see the module docstring).

    Args:
        cfg: the ``ewm`` config section (its ``context``/``belief``/``boundary_residual`` switches are read here).
        d_model: the thinker's hidden size d.
    """

    def __init__(self, cfg: EWMConfig, d_model: int):
        super().__init__()
        self.cfg = cfg
        d_w = cfg.d_w
        self.down = nn.ModuleList(nn.Linear(d_model, d_w, bias=False) for _ in MODALITIES)  # W_v, W_a
        self.tags = nn.Parameter(torch.randn(2, d_w) * 0.02)  # e_self, e_cross
        self.imagine = nn.ModuleList(ImaginationModule(cfg) for _ in MODALITIES)
        self.type_emb = nn.Embedding(cfg.n_types, d_w)  # E_type
        nn.init.normal_(self.type_emb.weight, std=0.02)
        self.mama_dual = BeliefAggregator(cfg, 2 * cfg.n_belief_base)
        self.mama_single = BeliefAggregator(cfg, cfg.n_belief_base)
        self.w_r = nn.Linear(d_w, d_w, bias=False)
        # shape (1,), not a 0-d scalar: DeepSpeed's initial broadcast views each parameter as bytes,
        # which fails on 0-d tensors
        self.alpha = nn.Parameter(torch.full((1,), float(cfg.alpha_init)))
        self.up = nn.Linear(d_w, d_model)  # W_ep, b_ep
        self.up_norm = nn.LayerNorm(d_model)

    # ------------------------------------------------------------------ pieces

    def project(self, h: torch.Tensor, m: int) -> torch.Tensor:
        """Eq. 2: (B, T, d) -> (B, T, d_w)."""
        return self.down[m](h.to(self.down[m].weight.dtype))

    def context(self, z: list[torch.Tensor], past: list[torch.Tensor], m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """C_m(1) (Eqs. 3, 13) for target modality m under ``cfg.context``.

        full: [self + e_self ; other + e_cross]; self: self only; cross: other only. A sample
        with one modality always gets its own past alone (Sec. 3.2).
        """
        o = 1 - m
        self_ok, other_ok = past[m], past[o]  # (B, T) masks of valid past tokens
        single = ~other_ok.any(-1, keepdim=True)
        mode = self.cfg.context
        if mode == "self":
            other_ok = torch.zeros_like(other_ok)
        elif mode == "cross":
            self_ok = self_ok & single
        ctx = torch.cat([z[m] + self.tags[0], z[o] + self.tags[1]], dim=1)  # (B, T_m + T_o, d_w)
        return ctx, torch.cat([self_ok, other_ok], dim=1)

    def rollout(self, z: list[torch.Tensor], past: list[torch.Tensor]) -> list[torch.Tensor]:
        """Both modalities' imagined futures from their past masks: [(B, S, N_s, d_w)] x 2."""
        z, past = past_view(z, past)
        return [self.imagine[m](*self.context(z, past, m)) for m in range(2)]

    @staticmethod
    def imagination_loss(y: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eq. 5 per sample and step: MSE + 0.5 (1 - cos), cos per token averaged over the N_s tokens.

        Args:
            y: (B, S, N_s, d_w) imagined tokens. target: (B, N_s, d_w), already detached.
        Returns:
            loss, mse, cos, each (B, S).
        """
        t = target[:, None].expand_as(y)
        mse = (y - t).pow(2).mean(dim=(-1, -2))
        cos = F.cosine_similarity(y, t, dim=-1).mean(-1)
        return mse + 0.5 * (1.0 - cos), mse, cos

    def up_project(self, b: torch.Tensor) -> torch.Tensor:
        """B_inject = LayerNorm(W_ep b + b_ep): (B, N_q, d_w) -> (B, N_q, d)."""
        return self.up_norm(self.up(b))

    def belief_counts(self, use: list[torch.Tensor]) -> torch.Tensor:
        """Eq. 18: N_q = 2 N_b with both modalities, N_b with one, 0 with none (or belief mode "none"); (B,)."""
        n_mod = use[0].long() + use[1].long()
        nb = 0 if self.cfg.belief == "none" else self.cfg.n_belief_base
        return torch.where(n_mod == 2, 2 * nb, torch.where(n_mod == 1, nb, 0))

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        hidden: list[torch.Tensor],
        lengths: list[torch.Tensor],
        split: list[torch.Tensor],
        use: list[torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> EWMOutput:
        """Run the EWM on one batch.

        Args:
            hidden: [H_v (B, M, d), H_a (B, N, d)] hidden states at video/audio positions, zero-padded.
            lengths: [(B,), (B,)] valid tokens per sample (0: modality absent).
            split: [(B,), (B,)] T_p per sample (:func:`split_points`); T_p = L means no future.
            use: [(B,), (B,)] bool, modality available to the EWM (after modality dropout).
            generator: RNG for the "random" belief ablation.
        """
        cfg = self.cfg
        dev = hidden[0].device
        z = [self.project(hidden[m], m) for m in range(2)]  # [(B, M, d_w), (B, N, d_w)]
        pos = [torch.arange(z[m].shape[1], device=dev)[None] for m in range(2)]
        use = [use[m] & (lengths[m] > 0) for m in range(2)]
        past = [(pos[m] < split[m][:, None]) & use[m][:, None] for m in range(2)]  # (B, T)
        n_belief = self.belief_counts(use)

        need_rollout = cfg.belief in ("ewm", "imagination") or cfg.lambda_img > 0
        ys = self.rollout(z, past) if need_rollout else None
        img_loss, metrics = self._imagination_terms(z, ys, lengths, split, use)

        mama_weights = None
        if cfg.belief == "none":
            b = z[0].new_zeros(z[0].shape[0], 2 * cfg.n_belief_base, cfg.d_w)
        elif cfg.belief == "random":
            shape = (z[0].shape[0], 2 * cfg.n_belief_base, cfg.d_w)
            b = torch.randn(shape, generator=generator).to(dev, z[0].dtype)
        else:
            if cfg.belief == "pooling":
                b = self._pooled_beliefs(past_view(z, past)[0], split, use)
            elif cfg.belief == "imagination":
                b = self._pooled_imagination(ys, use)
            else:
                b, mama_weights = self._mama(ys, use)
            if cfg.boundary_residual:
                b = b + self.alpha * self.w_r(self._boundary(z, split, use))[:, None]
        return EWMOutput(self.up_project(b), n_belief, img_loss, metrics, mama_weights, self.zero_touch())

    def _imagination_terms(self, z, ys, lengths, split, use) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Eq. 21: per sample, the mean over its available modalities with a future (of the mean over steps);
        then the mean over samples with at least one such modality (a two-modality sample weighs once)."""
        zero = z[0].sum() * 0.0
        if ys is None:
            return zero, {}
        metrics: dict[str, torch.Tensor] = {}
        b = z[0].shape[0]
        sample_sum, sample_n = zero.expand(b).clone(), torch.zeros(b, device=z[0].device)
        count = zero.new_zeros(())
        for m, name in enumerate(MODALITIES):
            fut_len = (lengths[m] - split[m]).clamp(min=0)
            valid = use[m] & (fut_len > 0)  # (B,)
            pool = adaptive_pool_matrix(split[m], fut_len, self.cfg.n_future, z[m].shape[1]).to(z[m].dtype)
            target = (pool @ z[m]).detach()  # (B, N_s, d_w), stop-gradient also through W_m
            loss, mse, cos = self.imagination_loss(ys[m], target)  # (B, S)
            per_sample = torch.where(valid, loss.mean(-1), 0.0)  # (B,), mean over steps
            n = valid.sum()
            sample_sum = sample_sum + per_sample
            sample_n = sample_n + valid.float()
            count = count + n
            denom = n.clamp(min=1).to(loss.dtype)
            nan = torch.full_like(denom, float("nan"))
            metrics[f"img_loss_{name}"] = torch.where(n > 0, per_sample.sum() / denom, nan).detach()
            for s in range(loss.shape[1]):
                for key, value in (("cos", cos), ("mse", mse)):
                    mean = torch.where(valid, value[:, s], 0.0).sum() / denom
                    metrics[f"img_{key}_{name}_s{s + 1}"] = torch.where(n > 0, mean, nan).detach()
        metrics["n_img_targets"] = count.detach()
        has = sample_n > 0
        per_sample = torch.where(has, sample_sum / sample_n.clamp(min=1), 0.0)
        return per_sample.sum() / has.sum().clamp(min=1), metrics

    def _mama(self, ys, use) -> tuple[torch.Tensor, torch.Tensor]:
        """Eqs. 6-7, 18-19: memory [Y_v(1:S) ; Y_a(1:S)] + E_type, dual or single aggregation per sample."""
        b, s, n, _ = ys[0].shape
        mem = torch.cat([ys[m].reshape(b, s * n, -1) + self.type_emb.weight[m] for m in range(2)], dim=1)
        mask = torch.cat([use[m][:, None].expand(b, s * n) for m in range(2)], dim=1)  # (B, 2 S N_s)
        dual, w_dual = self.mama_dual(mem, mask)  # (B, 2 N_b, d_w)
        single, w_single = self.mama_single(mem, mask)  # (B, N_b, d_w)
        nb = single.shape[1]
        both = (use[0] & use[1])[:, None, None]
        single = F.pad(single, (0, 0, 0, nb))  # (B, 2 N_b, d_w)
        w_single = F.pad(w_single, (0, 0, 0, nb))
        return torch.where(both, dual, single), torch.where(both, w_dual, w_single).detach()

    def _pooled_beliefs(self, z, split, use) -> torch.Tensor:
        """Table 4 "pooling": the observed past of each available modality pooled to N_b tokens."""
        nb = self.cfg.n_belief_base
        zero = torch.zeros_like(split[0])
        pooled = [adaptive_pool_matrix(zero, split[m] * use[m], nb, z[m].shape[1]).to(z[m].dtype) @ z[m]
                  for m in range(2)]  # [(B, N_b, d_w)] x 2
        video_first = torch.cat(pooled, dim=1)
        audio_only = F.pad(pooled[1], (0, 0, 0, nb))
        return torch.where(use[0][:, None, None], video_first, audio_only)

    def _pooled_imagination(self, ys, use) -> torch.Tensor:
        """Table 3 row (c), belief mode "imagination": each available modality's imagined tokens Y_m(1:S)
        averaged to N_b tokens (no MAMA), laid out as :meth:`_pooled_beliefs`."""
        nb = self.cfg.n_belief_base
        b, s, n, d = ys[0].shape
        width = s * n
        full = torch.full((b,), width, dtype=torch.long, device=ys[0].device)
        pool = adaptive_pool_matrix(torch.zeros_like(full), full, nb, width).to(ys[0].dtype)
        pooled = [pool @ ys[m].reshape(b, width, d) for m in range(2)]  # [(B, N_b, d_w)] x 2
        video_first = torch.cat(pooled, dim=1)
        audio_only = F.pad(pooled[1], (0, 0, 0, nb))
        return torch.where(use[0][:, None, None], video_first, audio_only)

    @staticmethod
    def _boundary(z, split, use) -> torch.Tensor:
        """z_bnd = mean of the available boundary tokens v_b = Z_v[T_p - 1], a_b = Z_a[T_p - 1]: (B, d_w)."""
        tokens, weights = [], []
        for m in range(2):
            idx = (split[m] - 1).clamp(min=0)  # (B,)
            tokens.append(z[m][torch.arange(z[m].shape[0], device=z[m].device), idx])  # (B, d_w)
            weights.append(use[m].to(z[m].dtype)[:, None])
        return (tokens[0] * weights[0] + tokens[1] * weights[1]) / (weights[0] + weights[1]).clamp(min=1)

    def zero_touch(self) -> torch.Tensor:
        """0 x (sum of every parameter): gives each EWM parameter a (zero) gradient on every step, used or not
        (ZeRO-2 hangs otherwise). Computed inside :meth:`forward`: under ZeRO-3 a module's weights exist whole only
        there (the engine registers the submodules' weights with the EWM so that all of them do)."""
        return sum(p.sum() for p in self.parameters()) * 0.0
