"""AffectVerse: the frozen Qwen2.5-Omni thinker + LoRA + the Emotion World Module + belief injection.

One training step (paper Algorithm 1):
    1. towers once (frozen, no grad) -> embedded sequence           ``_embed``
    2. full-observation pass, no grad, decoder only, stopped after the
       last A/V token (causal: later tokens cannot change those states) ``_full_observation_states``
       and, with ``ewm.context_source = "past"`` (default), the past pass:
       the truncated A/V prefix (the keep mask at kappa)                   ``_past_states``
    3. EWM on the A/V hidden states -> belief tokens, L_img              ``ewm.EmotionWorldModule``
    4. keep mask + belief insertion + rebuilt 3D M-RoPE ids              ``injection.build_plan``
    5. second pass with grad on the modified sequence; logits only where
       a label exists; L = L_lm + lambda_img L_img (Eq. 10)              ``forward``

Leak-free context (Appendix D.1, "imagine from the past alone"). In the full
sequence video precedes audio, so under causal attention every audio state has
seen all video tokens, the future ones included. The EWM's context (past
tokens of both modalities) therefore comes from the past pass, whose sequence
holds only the kept (past) A/V tokens; the targets (future tokens) come from
the full-observation pass under stop-gradient. ``context_source = "full"``
reads both from the full pass (the literal Algorithm 1). The EWM sees each
modality as [past tokens ; future tokens] with T_p = the kept count.

In training, the sequences agree on their first tokens (system prompt, video
past ...), and with the keep mask the past pass is exactly the second pass's
A/V prefix (it precedes every belief token): ``_shared_passes`` computes the
second pass up to the shortest past prefix of the batch once, with grad, takes
the context states from it (continuing longer rows without grad), runs the
full-observation rest from its cache cropped where the sequences diverge, and
finishes the second pass from the cache. Exact under causal attention (a test
compares it with separate passes); off with gradient checkpointing
(transformers drops the cache there) or ``source_layer != -1``.

Inference (``generate``, ``score_candidates``) uses the same preparation with
kappa = 1 (nothing dropped), belief tokens in the same two places, left padding
and the KV cache. ``kappa < 1`` at evaluation (paper Table 2) means the model
observes only the first kappa of every A/V region: both passes see the
truncated sequence and the EWM treats all observed tokens as past.

Export for evaluation: ``model.thinker`` is the PEFT model (``save_pretrained``
writes the LoRA adapter) and ``model.ewm`` the EWM (its ``state_dict``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from affectverse_ds.config import AffectVerseConfig
from affectverse_ds.data.batch import AUDIO_TOKEN_ID, IGNORE_INDEX, IM_END_ID, PAD_TOKEN_ID, VIDEO_TOKEN_ID
from affectverse_ds.model import injection as inj
from affectverse_ds.model.backbone import load_thinker
from affectverse_ds.model.ewm import EmotionWorldModule, EWMOutput
from affectverse_ds.model.lora import apply_lora


@dataclass
class AffectVerseOutput(ModelOutput):
    """Result of one forward.

    loss: L_lm + lambda_img L_img (+ a zero-weighted term touching every trainable parameter).
    lm_loss: mean cross-entropy over the batch's answer tokens (Eq. 9).
    img_loss: Eq. 21 (0 without the EWM).
    logits: (n, V) float32, only at positions whose next token has a label, in (sample, position) order.
    label_sample: (n,) the sample of each logits row.
    sample_nll: (B,) summed NLL of each sample's answer tokens; sample_tokens: (B,) their count.
    metrics: detached scalars (imagination per step and modality, kappa, tokens dropped, belief tokens ...).
    mama_weights: (B, N_q, N_M) MAMA attention (belief mode "ewm"), else None.

    A ``ModelOutput`` (a dict) so that ZeRO-3's hooks find its tensors (see ``EWMOutput``).
    """

    loss: torch.Tensor
    lm_loss: torch.Tensor = None  # ModelOutput: every field after the first has a default of None
    img_loss: torch.Tensor = None
    logits: torch.Tensor = None
    label_sample: torch.Tensor = None
    sample_nll: torch.Tensor = None
    sample_tokens: torch.Tensor = None
    metrics: dict[str, torch.Tensor] = None
    mama_weights: torch.Tensor | None = None


@dataclass
class Prepared:
    """The modified batch handed to the decoder."""

    inputs_embeds: torch.Tensor  # (B, L', d)
    attention_mask: torch.Tensor  # (B, L')
    position_ids: torch.Tensor  # (3, B, L')
    labels: torch.Tensor  # (B, L')
    plan: inj.SequencePlan
    ewm: EWMOutput | None
    kappa: torch.Tensor  # (B,) float64, host


@dataclass
class ImaginationTrace:
    """The EWM's view of a fully observed batch split at kappa (Table 8 fidelity); lists are [video, audio]."""

    z: list[torch.Tensor]  # (B, T, d_w) bottleneck tokens Z_m
    lengths: list[torch.Tensor]  # (B,)
    split: list[torch.Tensor]  # (B,) T_p
    use: list[torch.Tensor]  # (B,) bool, modality present
    imagined: list[torch.Tensor]  # (B, S, N_s, d_w) rolled out from the past only


@dataclass
class _Setup:
    """Host bookkeeping of one batch (plans, kappa, modality use) and its embedded tokens."""

    embeds: torch.Tensor  # (B, L, d), towers scattered in, no grad
    kappa: torch.Tensor  # (B,) float64
    training: bool
    plan: inj.SequencePlan | None = None  # the modified sequence (second pass)
    plan0: inj.SequencePlan | None = None  # the full-observation sequence (first pass), EWM only
    plan_past: inj.SequencePlan | None = None  # the truncated A/V prefix (past pass); None: no future this step
    order: list[torch.Tensor] | None = None  # [(B, T)] x 2: plan0 columns of each modality, kept then dropped
    past_cols: list[torch.Tensor] | None = None  # [(B, T)] x 2: plan_past columns of the kept tokens
    lengths: list[torch.Tensor] | None = None  # [(B,), (B,)] video/audio tokens seen by the EWM
    split: list[torch.Tensor] | None = None  # [(B,), (B,)] T_p
    use: list[torch.Tensor] | None = None  # [(B,), (B,)] after modality dropout
    needs_states: bool = False  # the EWM reads decoder states this step
    regions: list | None = None  # inj.find_regions of the batch
    mask: torch.Tensor | None = None  # (B, L) host attention mask of the batch
    answer: torch.Tensor | None = None  # (B,) first answer column


class _StopForward(Exception):
    """Raised by a layer hook once the source layer of the full-observation pass has run."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden


class AffectVerseModel(nn.Module):
    """Thinker (+LoRA) and EWM composed; see the module docstring.

    Args:
        thinker: the PEFT-wrapped thinker (or the bare thinker when LoRA is off).
        ewm: the EWM, or None (LoRA baseline / temporal splitting only).
        cfg: the full config (``ewm`` and ``injection`` sections are read).
    """

    def __init__(self, thinker: nn.Module, ewm: EmotionWorldModule | None, cfg: AffectVerseConfig,
                 share_prefix: bool = True, min_shared_prefix: int = 64):
        super().__init__()
        self.thinker = thinker
        self.ewm = ewm
        self.cfg = cfg
        # training: compute the tokens both passes share once (exact under causal attention; see _shared_prefix);
        # below min_shared_prefix tokens the extra decoder call costs more than it saves
        self.share_prefix = share_prefix
        self.min_shared_prefix = min_shared_prefix

    # ------------------------------------------------------------------ structure

    def ewm_state_dict(self) -> dict[str, torch.Tensor]:
        """The EWM weights for the export (empty without the EWM); the LoRA adapter: ``thinker.save_pretrained``."""
        return self.ewm.state_dict() if self.ewm is not None else {}

    @property
    def core(self) -> nn.Module:
        """The Qwen2_5OmniThinkerForConditionalGeneration under the PEFT wrapper (LoRA layers live inside it)."""
        return self.thinker.get_base_model() if hasattr(self.thinker, "get_base_model") else self.thinker

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Exactly what trains: the LoRA adapters and every EWM parameter."""
        named = [(f"thinker.{n}", p) for n, p in self.thinker.named_parameters() if "lora_" in n]
        if self.ewm is not None:
            named += [(f"ewm.{n}", p) for n, p in self.ewm.named_parameters()]
        return named

    # ------------------------------------------------------------------ pieces

    @torch.no_grad()
    def _embed(self, batch: dict) -> torch.Tensor:
        """Token embeddings with the (frozen) tower outputs scattered in: (B, L, d). Towers run once per step."""
        model = self.core.model
        ids = batch["input_ids"]
        emb = model.get_input_embeddings()(ids)
        grid = batch.get("video_grid_thw")
        if batch.get("pixel_values_videos") is not None and grid is not None and grid.numel():
            video = torch.cat(model.get_video_features(batch["pixel_values_videos"], grid, return_dict=True).pooler_output)
            emb = emb.masked_scatter((ids == VIDEO_TOKEN_ID)[..., None], video.to(emb.dtype))
        feats = batch.get("input_features")
        if feats is not None and feats.shape[0]:
            audio = model.get_audio_features(feats, batch["feature_attention_mask"], return_dict=True).last_hidden_state
            emb = emb.masked_scatter((ids == AUDIO_TOKEN_ID)[..., None], audio.to(emb.dtype))
        return emb

    def _decoder(self, x, mask, pos, cache=None, source_layer: int = -1):
        """The language model (decoder + final norm, no LM head). Always given position ids.

        ``source_layer`` -1: last layer after the final norm; k: output of decoder layer k (stops there).
        Returns (hidden (B, L, d), cache).
        """
        lm = self.core.model.language_model
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

    def _kappa(self, b: int, kappa, training: bool, generator) -> torch.Tensor:
        """(B,) float64 keep ratios: given, else U[kappa_min, 1) in training with temporal splitting, else 1."""
        if kappa is not None:
            return torch.as_tensor(kappa, dtype=torch.float64).expand(b).clone()
        e = self.cfg.ewm
        if training and e.temporal_split:
            return e.kappa_min + (1.0 - e.kappa_min) * torch.rand(b, generator=generator, dtype=torch.float64)
        return torch.ones(b, dtype=torch.float64)

    def _modality_use(self, lengths: list[torch.Tensor], training: bool, generator) -> list[torch.Tensor]:
        """Modality dropout (App. D.1): with p drop one of two present modalities from the EWM, each half the time."""
        use = [lengths[0] > 0, lengths[1] > 0]
        p = self.cfg.ewm.modality_dropout
        if training and p > 0:
            both = use[0] & use[1]
            drop = (torch.rand(len(both), generator=generator) < p) & both
            video = torch.rand(len(both), generator=generator) < 0.5
            use = [use[0] & ~(drop & video), use[1] & ~(drop & ~video)]
        return use

    @staticmethod
    def _answer_cols(batch: dict, mask: torch.Tensor) -> torch.Tensor:
        """(B,) column of the first answer token: ``answer_start``, else the first label, else the end of the row."""
        if batch.get("answer_start") is not None:
            return batch["answer_start"].cpu().long()
        end = torch.where(mask.bool(), torch.arange(mask.shape[1]), -1).max(1).values + 1
        labels = batch.get("labels")
        if labels is None:
            return end
        has = labels.cpu() != IGNORE_INDEX
        first = torch.where(has, torch.arange(mask.shape[1]), mask.shape[1]).min(1).values
        return torch.where(has.any(1), first, end)

    def _setup(self, batch: dict, kappa, generator, for_generation: bool) -> _Setup:
        """Host-side bookkeeping of one batch: regions, kappa, modality use, belief counts and both plans."""
        training = self.training and not for_generation
        mask = batch["attention_mask"].cpu()
        regions = inj.find_regions(batch["input_ids"].cpu(), mask, _cpu(batch.get("video_grid_thw")),
                                   _cpu(batch.get("video_second_per_grid")),
                                   self.core.model.spatial_merge_size, self.core.config.position_id_per_seconds)
        answer = self._answer_cols(batch, mask)
        b = mask.shape[0]
        kap = self._kappa(b, kappa, training, generator)
        truncate = (self.cfg.injection.keep_mask or not training) and bool((kap < 1).any())
        keep_ratio = kap if truncate else None
        s = _Setup(self._embed(batch), kap, training, regions=regions, mask=mask, answer=answer)
        n_belief = torch.zeros(b, dtype=torch.long)
        if self.ewm is not None:
            # the full-observation pass sees everything in training, the observed prefix at evaluation
            s.plan0 = inj.build_plan(regions, mask, None, answer, None if training else keep_ratio,
                                     torch.zeros(b, dtype=torch.long), stop_after_av=True)
            s.lengths = [(s.plan0.kind == k).sum(1) for k in (inj.VIDEO, inj.AUDIO)]
            self._split_ewm(s, regions, mask, answer, kap if training else None)
            s.use = self._modality_use(s.lengths, training, generator)
            n_belief = self.ewm.belief_counts([u & (n > 0) for u, n in zip(s.use, s.lengths)])
            e = self.cfg.ewm
            s.needs_states = (e.belief in ("ewm", "pooling", "imagination") or e.lambda_img > 0) and int(sum(s.lengths).sum()) > 0
        labels = batch.get("labels")
        s.plan = inj.build_plan(regions, mask, labels.cpu() if labels is not None else None, answer, keep_ratio,
                                n_belief, self.cfg.injection.positions,
                                pad_side="left" if for_generation else "right", cut_at_answer=for_generation)
        return s

    def _split_ewm(self, s: _Setup, regions, mask, answer, kappa: torch.Tensor | None) -> None:
        """The EWM's past/future split: T_p = tokens the keep mask keeps at ``kappa`` (whole video frame groups).

        Sets ``s.split``, ``s.order`` (plan0 columns per modality, kept tokens first) and, when some token
        is dropped, ``s.plan_past`` and ``s.past_cols``. ``kappa`` None: everything observed is past.
        """
        kinds = (inj.VIDEO, inj.AUDIO)
        b = mask.shape[0]
        s.order = [_columns(s.plan0.kind == k) for k in kinds]
        if kappa is None or not bool((kappa < 1).any()):
            s.split = list(s.lengths)
            return
        past = inj.build_plan(regions, mask, None, answer, kappa, torch.zeros(b, dtype=torch.long),
                              stop_after_av=True)
        s.split = [(past.kind == k).sum(1) for k in kinds]
        if all(bool((t == n).all()) for t, n in zip(s.split, s.lengths)):
            return
        s.plan_past = past
        s.past_cols = [_columns(past.kind == k) for k in kinds]
        # plan0 columns per modality: the kept tokens (in plan_past order), then the dropped ones
        for m, k in enumerate(kinds):
            o0 = s.plan0.orig_col.gather(1, s.order[m]).clamp(min=0)  # original columns, in plan0 order
            kept = past.orig_col.gather(1, s.past_cols[m]).clamp(min=0)
            is_real = (torch.arange(kept.shape[1])[None] < s.split[m][:, None]).long()
            kept_col = torch.zeros(b, s.plan0.n_cols, dtype=torch.long).scatter_add_(1, kept, is_real)
            is_kept = kept_col.gather(1, o0) > 0  # the original columns the keep mask keeps
            valid = torch.arange(o0.shape[1])[None] < s.lengths[m][:, None]
            rank = torch.where(valid, (~is_kept).long(), 2)  # kept 0, dropped 1, padding 2; stable sort
            s.order[m] = s.order[m].gather(1, torch.argsort(rank, dim=1, stable=True))

    def _full_observation_states(self, s: _Setup, grad: bool = False) -> torch.Tensor:
        """Step 2: decoder states of the full-observation sequence (plan0), no grad unless asked: (B, L0, d)."""
        return self._states(s, s.plan0, grad)

    def _past_states(self, s: _Setup, grad: bool = False) -> torch.Tensor:
        """The past pass: decoder states of the truncated A/V prefix (plan_past): (B, Lp, d)."""
        return self._states(s, s.plan_past, grad)

    def _states(self, s: _Setup, plan: inj.SequencePlan, grad: bool) -> torch.Tensor:
        dev = s.embeds.device
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            x0 = inj.gather_embeddings(plan, s.embeds, None)
            h, _ = self._decoder(x0, plan.attention_mask.to(dev), plan.position_ids.to(dev),
                                 source_layer=self.cfg.ewm.source_layer)
        return h

    def _context_grad(self, s: _Setup) -> bool:
        """L_img reaches LoRA through the context states (``ewm.img_grad_to_lora``, training only)."""
        return s.training and self.cfg.ewm.img_grad_to_lora

    def _uses_past_pass(self, s: _Setup) -> bool:
        return s.plan_past is not None and self.cfg.ewm.context_source == "past"

    def _ewm_states(self, s: _Setup) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Step 2 without prefix sharing: (full-observation states, past-pass states or None)."""
        grad = self._context_grad(s)
        past = self._uses_past_pass(s)
        h0 = self._full_observation_states(s, grad=grad and not past)
        return h0, (self._past_states(s, grad=grad) if past else None)

    def ewm_inputs(self, s: _Setup, h0: torch.Tensor | None,
                   h_past: torch.Tensor | None) -> list[torch.Tensor]:
        """[H_v, H_a] as the EWM reads them: per modality [past tokens ; future tokens], zero-padded.

        Past tokens come from ``h_past`` (the past pass) when given, else from ``h0``; future tokens from
        ``h0`` (the full-observation pass). Zeros when no state is needed (``h0`` None).
        """
        b, d = s.embeds.shape[0], s.embeds.shape[-1]
        if h0 is None:
            return [s.embeds.new_zeros(b, max(int(n.max()), 1), d) for n in s.lengths]
        hidden = []
        for m in range(2):
            h = _gather_cols(h0, s.order[m], s.lengths[m])
            if h_past is not None:
                width = s.past_cols[m].shape[1]
                hp = _gather_cols(h_past, s.past_cols[m], s.split[m])
                is_past = (torch.arange(width)[None] < s.split[m][:, None]).to(h.device)[..., None]
                h = torch.cat([torch.where(is_past, hp, h[:, :width]), h[:, width:]], dim=1)
            hidden.append(h)
        return hidden

    def _run_ewm(self, s: _Setup, h0: torch.Tensor | None, h_past: torch.Tensor | None, generator) -> EWMOutput:
        """Step 3: the EWM on the A/V states (see :meth:`ewm_inputs`)."""
        dev = s.embeds.device
        return self.ewm(self.ewm_inputs(s, h0, h_past), [n.to(dev) for n in s.lengths],
                        [t.to(dev) for t in s.split], [u.to(dev) for u in s.use], generator)

    # ------------------------------------------------------------------ preparation

    def prepare_inputs(self, batch: dict, kappa=None, generator: torch.Generator | None = None,
                       for_generation: bool = False) -> Prepared:
        """Embed, run the EWM, drop/insert tokens and rebuild masks, labels and 3D position ids.

        Args:
            batch: the batch contract (``data/batch.py``), tensors on the model's device.
            kappa: keep ratio (float or (B,)); None: sampled in training, 1.0 otherwise.
            generator: host RNG for kappa, modality dropout and the random-belief ablation.
            for_generation: left-padded prompt cut at the answer start, belief tokens at its end.
        """
        s = self._setup(batch, kappa, generator, for_generation)
        ewm_out = None
        if self.ewm is not None:
            ewm_out = self._run_ewm(s, *(self._ewm_states(s) if s.needs_states else (None, None)), generator)
        return self._prepared(s, ewm_out)

    def _prepared(self, s: _Setup, ewm_out: EWMOutput | None, cols: slice = slice(None)) -> Prepared:
        dev = s.embeds.device
        x = inj.gather_embeddings(s.plan, s.embeds, ewm_out.beliefs if ewm_out is not None else None, cols)
        p = s.plan
        return Prepared(x, p.attention_mask.to(dev), p.position_ids[:, :, cols].to(dev), p.labels.to(dev),
                        p, ewm_out, s.kappa)

    # ------------------------------------------------------------------ training forward

    def _shared_prefix(self, s: _Setup) -> tuple[int, int]:
        """(n0, head): columns at the start where the full-observation (n0) and the past sequence (head)
        hold the same tokens as the modified sequence, over the whole batch.

        Causal attention makes their states identical there, so the step computes ``head`` columns of the
        modified sequence once (with grad) and the other passes continue from that KV cache. (0, 0) when
        sharing does not apply.
        """
        lm = self.core.model.language_model
        if not (self.share_prefix and s.training and self.ewm is not None and s.needs_states
                and self.cfg.ewm.source_layer == -1 and not lm.gradient_checkpointing):
            return 0, 0
        has_av = (s.lengths[0] + s.lengths[1]) > 0
        if self._uses_past_pass(s):
            self._align_past(s, has_av)
        n0 = _agreement(s.plan0, s.plan, has_av)
        head = _agreement(s.plan_past, s.plan, has_av) if self._uses_past_pass(s) else n0
        head = max(head, n0)
        return (n0, head) if head >= self.min_shared_prefix else (0, 0)

    @staticmethod
    def _align_past(s: _Setup, has_av: torch.Tensor) -> None:
        """Where every row's past sequence is its modified sequence's prefix (the keep mask is on), pad each
        row on the left so all past prefixes end at one column: the shared head then holds every context
        state, and no extra pass is needed for the longer rows (the rows' lengths vary mostly by A/V, so
        the batch hardly widens)."""
        n = s.plan_past.attention_mask.sum(1)
        prefix_ok = _agreement_rows(s.plan_past, s.plan) >= n
        if not bool((prefix_ok | ~has_av).all()):
            return
        offsets = torch.where(has_av, int(n[has_av].max()) - n, 0) if bool(has_av.any()) else torch.zeros_like(n)
        if not int(offsets.max()):
            return
        s.plan, s.plan0, s.plan_past = (inj.shift_rows(p, offsets) for p in (s.plan, s.plan0, s.plan_past))
        # entries past a row's count are padding (masked by the lengths): only keep them in range
        s.order = [(o + offsets[:, None]).clamp(max=s.plan0.source.shape[1] - 1) for o in s.order]
        s.past_cols = [(c + offsets[:, None]).clamp(max=s.plan_past.source.shape[1] - 1) for c in s.past_cols]

    def _shared_passes(self, s: _Setup, n0: int, head: int, generator) -> tuple[torch.Tensor, EWMOutput]:
        """All passes with the common prefix computed once: (hidden of the modified sequence, EWM output)."""
        dev = s.embeds.device
        grad = self._context_grad(s)
        cols = slice(0, head)
        x_a = inj.gather_embeddings(s.plan, s.embeds, None, cols)
        mask2 = s.plan.attention_mask.to(dev)
        h_a, cache = self._decoder(x_a, mask2[:, cols], s.plan.position_ids[:, :, cols].to(dev), cache=_new_cache())
        past = self._uses_past_pass(s)
        h_ctx = h_a if grad else h_a.detach()
        # full-observation states: the shared n0 columns, then the rest of plan0 from the cache cropped there
        h0 = (h_a if grad and not past else h_a.detach())[:, :n0]
        if s.plan0.source.shape[1] > n0:
            h0 = torch.cat([h0, self._continue(s, s.plan0, cache, n0, mask2, grad and not past)], dim=1)
        h_past = None
        if past:  # the past pass is the modified sequence's prefix; longer rows continue past `head`
            h_past = h_ctx
            if s.plan_past.source.shape[1] > head:
                h_past = torch.cat([h_past, self._continue(s, s.plan_past, cache, head, mask2, grad)], dim=1)
        ewm_out = self._run_ewm(s, h0, h_past, generator)
        tail = self._prepared(s, ewm_out, slice(head, None))
        h_b, _ = self._decoder(tail.inputs_embeds, tail.attention_mask, tail.position_ids, cache=cache)
        return torch.cat([h_a, h_b], dim=1), ewm_out

    def _continue(self, s: _Setup, plan: inj.SequencePlan, cache, n: int, mask2: torch.Tensor,
                  grad: bool) -> torch.Tensor:
        """States of ``plan`` from column ``n`` on, after the first ``n`` columns of the modified sequence's cache.

        Runs on a copy of the cache cropped to ``n`` (the modified sequence's own cache is left as it is).
        """
        dev = s.embeds.device
        rest = slice(n, None)
        with torch.set_grad_enabled(grad):
            x = inj.gather_embeddings(plan, s.embeds, None, rest)
            mask = torch.cat([mask2[:, :n], plan.attention_mask[:, rest].to(dev)], dim=1)
            h, _ = self._decoder(x, mask, plan.position_ids[:, :, rest].to(dev), cache=_cache_copy(cache, n, not grad))
        return h

    def forward(self, batch: dict | None = None, kappa=None, generator: torch.Generator | None = None,
                **fields) -> AffectVerseOutput:
        """One training/validation forward: L = L_lm + lambda_img L_img (Eq. 10).

        Called as ``model(batch)`` or ``model(**batch)`` (the batch contract's keys).
        """
        batch = batch if batch is not None else fields
        s = self._setup(batch, kappa, generator, for_generation=False)
        n0, prefix = self._shared_prefix(s)
        if prefix:
            hidden, ewm_out = self._shared_passes(s, n0, prefix, generator)
        else:
            ewm_out = None
            if self.ewm is not None:
                ewm_out = self._run_ewm(s, *(self._ewm_states(s) if s.needs_states else (None, None)), generator)
            prep = self._prepared(s, ewm_out)
            hidden, _ = self._decoder(prep.inputs_embeds, prep.attention_mask, prep.position_ids)  # (B, L', d)
        labels = s.plan.labels.to(hidden.device)
        target = labels[:, 1:]  # (B, L'-1), label of the next token
        has = target != IGNORE_INDEX
        logits = self.core.lm_head(hidden[:, :-1][has]).float()  # (n, V): only where a label exists
        tok_nll = F.cross_entropy(logits, target[has], reduction="none")  # (n,)
        b = target.shape[0]
        label_sample = torch.arange(b, device=has.device)[:, None].expand_as(has)[has]
        sample_nll = tok_nll.new_zeros(b).index_add(0, label_sample, tok_nll)
        n_tokens = has.sum(1)
        lm_loss = tok_nll.sum() / has.sum().clamp(min=1)
        img_loss = ewm_out.img_loss if ewm_out is not None else lm_loss.new_zeros(())
        lam = self.cfg.ewm.lambda_img if self.ewm is not None else 0.0
        loss = lm_loss + lam * img_loss + (ewm_out.touch if ewm_out is not None else 0.0)
        metrics = self._metrics(s, ewm_out, n_tokens)
        metrics["shared_prefix"] = torch.tensor(float(prefix))
        return AffectVerseOutput(loss, lm_loss, img_loss, logits, label_sample, sample_nll, n_tokens, metrics,
                                 ewm_out.mama_weights if ewm_out is not None else None)

    @staticmethod
    def _metrics(s: _Setup, ewm_out: EWMOutput | None, n_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        m = {
            "kappa": s.kappa.mean().float(),
            "tokens_dropped": s.plan.n_dropped.sum().float(),
            "belief_tokens": (s.plan.kind == inj.BELIEF).sum().float(),
            "seq_len": s.plan.attention_mask.sum(1).float().mean(),
            "answer_tokens": n_tokens.sum().detach().float(),
        }
        if ewm_out is not None:
            m.update(ewm_out.metrics)
        return m

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def imagination_trace(self, batch: dict, kappa: float) -> ImaginationTrace:
        """Full observation, split at ``kappa`` (no dropout): what the EWM imagines vs the real future."""
        if self.ewm is None:
            raise RuntimeError("imagination_trace needs the EWM (ewm.enabled=true)")
        s = self._setup(batch, None, None, for_generation=True)
        b, dev = s.embeds.shape[0], s.embeds.device
        # the same split as training: whole video frame groups, context from the past pass (ewm.context_source)
        self._split_ewm(s, s.regions, s.mask, s.answer, torch.full((b,), float(kappa), dtype=torch.float64))
        hidden = self.ewm_inputs(s, *(self._ewm_states(s) if s.needs_states else (None, None)))
        lengths = [n.to(dev) for n in s.lengths]
        split = [t.to(dev) for t in s.split]
        use = [n > 0 for n in lengths]
        z = [self.ewm.project(hidden[m], m) for m in range(2)]
        past = [(torch.arange(z[m].shape[1], device=dev)[None] < split[m][:, None]) & use[m][:, None]
                for m in range(2)]
        return ImaginationTrace(z, lengths, split, use, self.ewm.rollout(z, past))

    def _prefill(self, batch: dict, kappa: float):
        prep = self.prepare_inputs(batch, kappa, for_generation=True)
        hidden, cache = self._decoder(prep.inputs_embeds, prep.attention_mask, prep.position_ids, cache=_new_cache())
        # next position per sample: running max over real tokens + 1 (all three dims)
        pos = prep.position_ids.masked_fill(prep.attention_mask[None] == 0, -1)
        next_pos = pos.amax(dim=(0, 2)) + 1  # (B,)
        return prep, hidden[:, -1], cache, next_pos

    def _step(self, tokens: torch.Tensor, mask: torch.Tensor, next_pos: torch.Tensor, cache):
        """Decode ``tokens`` (B, n) after the cache: returns hidden (B, n, d), cache."""
        n = tokens.shape[1]
        x = self.core.model.get_input_embeddings()(tokens)
        pos = (next_pos[:, None] + torch.arange(n, device=tokens.device)[None])[None].expand(3, -1, -1)
        return self._decoder(x, mask, pos, cache=cache)

    @torch.no_grad()
    def generate(self, batch: dict, max_new_tokens: int = 32, kappa: float = 1.0,
                 eos_token_id: int = IM_END_ID, pad_token_id: int = PAD_TOKEN_ID) -> torch.Tensor:
        """Greedy decoding with the KV cache, belief tokens injected as in training.

        The prompt is each sample up to its ``answer_start`` (answer tokens, if any, are ignored).
        Returns (B, T) new token ids; after a sample's EOS the row holds ``pad_token_id``.
        """
        prep, last, cache, next_pos = self._prefill(batch, kappa)
        mask = prep.attention_mask
        b = mask.shape[0]
        done = torch.zeros(b, dtype=torch.bool, device=mask.device)
        out = []
        for _ in range(max_new_tokens):
            tok = self.core.lm_head(last).argmax(-1)  # (B,)
            tok = torch.where(done, torch.full_like(tok, pad_token_id), tok)
            out.append(tok)
            done |= tok == eos_token_id
            if bool(done.all()):
                break
            mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
            hidden, cache = self._step(tok[:, None], mask, next_pos, cache)
            last, next_pos = hidden[:, -1], next_pos + 1
        return torch.stack(out, dim=1) if out else torch.zeros(b, 0, dtype=torch.long, device=mask.device)

    @torch.no_grad()
    def score_candidates(self, batch: dict, candidates: list[list[int]], kappa: float = 1.0) -> torch.Tensor:
        """Log-likelihood of each candidate answer (token ids, e.g. the label words + ``<|im_end|>``) per sample.

        Returns (B, C) float32 sums of token log-probabilities (divide by ``len(candidates[c])`` to normalise).

        Two decoder calls whatever C: the prompt (prepared as for ``generate``, belief tokens injected) followed
        by the tokens every candidate starts with (e.g. "The character's emotional state is"), once per sample;
        then the KV cache repeated per candidate and all candidate suffixes in one right-padded, masked pass.
        The cache grows C-fold for that pass (B*C rows of the prompt's keys and values).
        """
        if any(len(t) == 0 for t in candidates):
            raise ValueError("score_candidates: every candidate needs at least one token")
        if not candidates:
            return torch.zeros(batch["attention_mask"].shape[0], 0, device=batch["attention_mask"].device)
        # input j of a candidate is its token j, whose state predicts token j + 1; the first n_shared inputs
        # are the same for every candidate, so their states are computed once per sample
        n_shared = min(_common_prefix(candidates), max(len(t) for t in candidates) - 1)
        head, cache, mask, next_pos = self._prefill_shared(batch, kappa, candidates[0][:n_shared])
        b, dev, c = head.shape[0], head.device, len(candidates)
        # head[:, i] (i = 0 .. n_shared) predicts token i of every candidate long enough
        tgt = torch.zeros(n_shared + 1, c, dtype=torch.long)
        valid = torch.zeros(n_shared + 1, c, dtype=torch.bool)
        for k, toks in enumerate(candidates):
            m = min(n_shared + 1, len(toks))
            tgt[:m, k], valid[:m, k] = torch.tensor(toks[:m], dtype=torch.long), True
        rest = [k for k, t in enumerate(candidates) if len(t) - 1 > n_shared]
        logp = F.log_softmax(self.core.lm_head(head).float(), dim=-1)  # (B, n_shared + 1, V)
        picked = logp.gather(-1, tgt.to(dev)[None].expand(b, -1, -1))
        scores = (picked * valid.to(dev)[None]).sum(1)  # (B, C)
        if rest:
            tail, tail_tgt, tail_valid = self._suffix_states(cache, mask, next_pos,
                                                             [candidates[k][n_shared:] for k in rest])
            logp = F.log_softmax(self.core.lm_head(tail[tail_valid]).float(), dim=-1)
            tok = logp.gather(-1, tail_tgt[tail_valid][:, None]).squeeze(-1)
            row = torch.arange(tail.shape[0], device=dev)[:, None].expand_as(tail_valid)[tail_valid]
            scores[:, rest] += tok.new_zeros(tail.shape[0]).index_add(0, row, tok).view(b, len(rest))
        return scores

    def _prefill_shared(self, batch: dict, kappa: float, shared: list[int]):
        """The prompt (as ``_prefill``) with ``shared`` token ids appended, in one decoder call.

        Returns the states of the prompt's last token and of the appended tokens (B, 1 + n, d), the cache,
        its attention mask (B, L' + n) and the next position id per sample (B,).
        """
        prep = self.prepare_inputs(batch, kappa, for_generation=True)
        x, mask, pos = prep.inputs_embeds, prep.attention_mask, prep.position_ids
        b, n = mask.shape[0], len(shared)
        next_pos = pos.masked_fill(mask[None] == 0, -1).amax(dim=(0, 2)) + 1  # (B,) as in _prefill
        if n:
            ids = torch.tensor(shared, device=x.device)
            x = torch.cat([x, self.core.model.get_input_embeddings()(ids)[None].expand(b, -1, -1).to(x.dtype)], 1)
            mask = torch.cat([mask, mask.new_ones(b, n)], dim=1)
            extra = next_pos[:, None] + torch.arange(n, device=x.device)[None]
            pos = torch.cat([pos, extra[None].expand(3, -1, -1)], dim=2)
        hidden, cache = self._decoder(x, mask, pos, cache=_new_cache())
        # contiguous: lm_head on the strided view is several times slower (CPU)
        return hidden[:, -(n + 1):].contiguous(), cache, mask, next_pos + n

    def _suffix_states(self, cache, mask: torch.Tensor, next_pos: torch.Tensor, suffixes: list[list[int]]):
        """Feed each of the K ``suffix[:-1]`` after the cache of every sample, all in one decoder call.

        The cache (B rows) is repeated to B*K rows (sample-major, in place) and the suffixes right-padded to
        the longest; padding is masked out and, coming after every real token, never seen by one (causal).
        Returns states (B*K, n, d), their targets ``suffix[1:]`` (B*K, n) and the real positions (B*K, n).
        """
        b, k, dev = mask.shape[0], len(suffixes), mask.device
        n = max(len(t) for t in suffixes) - 1
        inp = torch.full((k, n), PAD_TOKEN_ID, dtype=torch.long)
        tgt = torch.zeros(k, n, dtype=torch.long)
        valid = torch.zeros(k, n, dtype=torch.bool)
        for j, toks in enumerate(suffixes):
            m = len(toks) - 1
            inp[j, :m], tgt[j, :m], valid[j, :m] = torch.tensor(toks[:-1]), torch.tensor(toks[1:]), True
        inp, tgt, valid = (t.to(dev).repeat(b, 1) for t in (inp, tgt, valid))  # (B*K, n)
        cache.batch_repeat_interleave(k)
        full_mask = torch.cat([mask.repeat_interleave(k, dim=0), valid.to(mask.dtype)], dim=1)
        hidden, _ = self._step(inp, full_mask, next_pos.repeat_interleave(k), cache)
        return hidden, tgt, valid


def _cpu(t: torch.Tensor | None) -> torch.Tensor | None:
    return t.cpu() if t is not None else None


def _common_prefix(seqs: list[list[int]]) -> int:
    """Length of the longest token prefix all sequences share."""
    n = min(len(t) for t in seqs)
    for i in range(n):
        if any(t[i] != seqs[0][i] for t in seqs):
            return i
    return n


def _new_cache():
    from transformers import DynamicCache

    return DynamicCache()


def _cache_copy(cache, n: int, detach: bool = True):
    """A cache over the first ``n`` positions of the same keys/values (detached unless asked): another pass
    extends it without touching the original."""
    from transformers import DynamicCache

    def cut(t):
        t = t[:, :, :n]
        return t.detach() if detach else t

    return DynamicCache([(cut(layer.keys), cut(layer.values)) for layer in cache.layers])


def _columns(hit: torch.Tensor) -> torch.Tensor:
    """(B, T) columns of the hits of each row, in order, zero-padded (T = max hits, at least 1)."""
    width = max(int(hit.sum(1).max()) if hit.numel() else 0, 1)
    return torch.argsort((~hit).int(), dim=1, stable=True)[:, :width]


def _gather_cols(h: torch.Tensor, cols: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """h (B, L, d) at columns ``cols`` (B, T); entries at or beyond ``lengths`` (B,) are zero: (B, T, d)."""
    valid = (torch.arange(cols.shape[1])[None] < lengths[:, None]).to(h.device)
    idx = cols.to(h.device)[..., None].expand(-1, -1, h.shape[-1])
    return torch.gather(h, 1, idx) * valid[..., None].to(h.dtype)


def _agreement_rows(pa: inj.SequencePlan, p2: inj.SequencePlan) -> torch.Tensor:
    """(B,) leading columns where ``pa`` and ``p2`` hold the same tokens (or padding in both)."""
    n = min(pa.source.shape[1], p2.source.shape[1])
    real_a, real2 = pa.attention_mask[:, :n].bool(), p2.attention_mask[:, :n].bool()
    same = (pa.orig_col[:, :n] == p2.orig_col[:, :n]) & (p2.orig_col[:, :n] >= 0) & real2 & real_a
    return (same | (~real_a & ~real2)).long().cumprod(1).sum(1)


def _agreement(pa: inj.SequencePlan, p2: inj.SequencePlan, has_av: torch.Tensor) -> int:
    """Leading columns where ``pa`` holds the same tokens as ``p2`` in every row with A/V (``pa``'s rows
    without A/V are never read), at most the narrower plan's width."""
    n = min(pa.source.shape[1], p2.source.shape[1])
    return int(torch.where(has_av, _agreement_rows(pa, p2), n).min())


def build_model(cfg: AffectVerseConfig, device: torch.device | str = "cpu") -> AffectVerseModel:
    """Frozen thinker from ``cfg.backbone``, LoRA (``cfg.lora``), EWM (``cfg.ewm``), composed.

    Only :meth:`AffectVerseModel.trainable_parameters` require grad afterwards (checked).
    """
    return assemble_model(load_thinker(cfg.backbone, device), cfg)


def assemble_model(thinker: nn.Module, cfg: AffectVerseConfig) -> AffectVerseModel:
    """Compose an already loaded, frozen thinker with LoRA and the EWM (on the thinker's device)."""
    device = next(thinker.parameters()).device
    if cfg.backbone.gradient_checkpointing:
        thinker.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # transformers drops the KV cache of checkpointed layers in training (a recomputed layer would write it
        # twice), and the shared-prefix pass continues both passes from that cache: it is switched off
        logging.getLogger(__name__).warning(
            "backbone.gradient_checkpointing=true: the shared-prefix optimisation is off (no KV cache under "
            "checkpointing); each step runs the full-observation and the second pass separately")
    if cfg.lora.enabled:
        thinker = apply_lora(thinker, cfg.lora)
    ewm = None
    if cfg.ewm.enabled:
        ewm = EmotionWorldModule(cfg.ewm, thinker.config.text_config.hidden_size).to(device)
    model = AffectVerseModel(thinker, ewm, cfg, share_prefix=not cfg.backbone.gradient_checkpointing)
    named = {id(p) for _, p in model.trainable_parameters()}
    grad = {id(p) for p in model.parameters() if p.requires_grad}
    if named != grad:
        raise RuntimeError("trainable_parameters() does not match the parameters that require grad")
    return model
