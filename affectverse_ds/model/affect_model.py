"""AffectVerse: the frozen Qwen2.5-Omni thinker + LoRA + the Emotion World Module + belief injection, composed.

The components live beside this file; here they are wired. One training step (paper Algorithm 1), in
:meth:`AffectVerseModel.forward`:

    1. the host plan: kappa, modality dropout, the EWM's
       past/future split, the three sequence plans             ``step_plan.plan_step``
       and the towers (frozen, no grad): once on the full clip  ``thinker_io.embed``
       and (``ewm.context_source = "past"``) once on the clip
       cut at kappa, whose outputs the kept A/V tokens take     ``past_inputs.past_embeddings``
    2. full-observation pass (no grad, stopped after the last
       A/V token) and the leak-free past pass                  ``ewm_context.ewm_states``
       -- or both from one KV cache with the second pass       ``shared_prefix.shared_passes``
    3. EWM on the A/V hidden states -> belief tokens, L_img    ``ewm_context.run_ewm``
    4. keep mask + belief insertion + rebuilt 3D M-RoPE ids    ``step_plan.prepared``
    5. second pass with grad on the modified sequence; logits
       only where a label exists; L = L_lm + lambda_img L_img  ``objective.training_output``

Inference (``generate``, ``score_candidates``, ``imagination_trace``): ``decoding.py``. The only module
touching transformers internals is ``thinker_io.py``.

Export for evaluation: ``model.thinker`` is the PEFT model (``save_pretrained`` writes the LoRA adapter)
and ``model.ewm`` the EWM (its ``state_dict``).
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from affectverse_ds.config import AffectVerseConfig
from affectverse_ds.model import decoding, ewm_context, objective, past_inputs, shared_prefix, step_plan, thinker_io
from affectverse_ds.model.backbone import load_thinker
from affectverse_ds.model.ewm import EmotionWorldModule, EWMOutput
from affectverse_ds.model.lora import apply_lora
# re-exported: callers import the records (and tests the step plan, as _Setup) from here
from affectverse_ds.model.records import AffectVerseOutput, ImaginationTrace, Prepared  # noqa: F401
from affectverse_ds.model.step_plan import StepPlan as _Setup  # noqa: F401


class AffectVerseModel(nn.Module):
    """Thinker (+LoRA) and EWM composed; see the module docstring.

    Args:
        thinker: the PEFT-wrapped thinker (or the bare thinker when LoRA is off).
        ewm: the EWM, or None (LoRA baseline / temporal splitting only).
        cfg: the full config (``ewm`` and ``injection`` sections are read).
        share_prefix: compute the tokens all passes of a training step share once (``shared_prefix.py``).
        min_shared_prefix: below this many shared tokens the extra decoder call costs more than it saves.

    ``uniform_calls`` (off by default; the training engine sets it under ZeRO-3): every step calls the same
    modules in the same order whatever its clips hold. Each tower runs also when the batch lacks its stream
    (on a blank input, output dropped), the EWM's state passes run also without A/V tokens, and the prefix is
    not shared (how many decoder calls sharing makes depends on where each clip is cut). ZeRO-3 gathers a
    module's weights in its forward with a collective every rank must join, so a rank that skipped a call the
    others made would hang them. Values are those of the default mode up to float rounding.
    """

    def __init__(self, thinker: nn.Module, ewm: EmotionWorldModule | None, cfg: AffectVerseConfig,
                 share_prefix: bool = True, min_shared_prefix: int = 64):
        super().__init__()
        self.thinker = thinker
        self.ewm = ewm
        self.cfg = cfg
        self.share_prefix = share_prefix
        self.min_shared_prefix = min_shared_prefix
        self.uniform_calls = False

    # ------------------------------------------------------------------ structure

    def ewm_state_dict(self) -> dict[str, torch.Tensor]:
        """The EWM weights for the export (empty without the EWM); the LoRA adapter: ``thinker.save_pretrained``."""
        return self.ewm.state_dict() if self.ewm is not None else {}

    @property
    def core(self) -> nn.Module:
        """The Qwen2_5OmniThinkerForConditionalGeneration under the PEFT wrapper (LoRA layers live inside it)."""
        return thinker_io.core_of(self.thinker)

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Exactly what trains: the LoRA adapters and every EWM parameter."""
        named = [(f"thinker.{n}", p) for n, p in self.thinker.named_parameters() if "lora_" in n]
        if self.ewm is not None:
            named += [(f"ewm.{n}", p) for n, p in self.ewm.named_parameters()]
        return named

    # ------------------------------------------------------------------ the thinker, through thinker_io
    # every tower and decoder call of a step goes through these two methods, so tests and
    # bench/step_overhead.py can wrap them on the instance

    def _embed(self, batch: dict) -> torch.Tensor:
        return thinker_io.embed(self.core, batch, every_tower=self.uniform_calls)

    def _embed_past(self, batch: dict, base: torch.Tensor, regions, kappa: torch.Tensor) -> torch.Tensor:
        return past_inputs.past_embeddings(self.core, batch, base, regions, kappa, every_tower=self.uniform_calls)

    def _decoder(self, x, mask, pos, cache=None, source_layer: int = -1):
        return thinker_io.decode(self.core, x, mask, pos, cache, source_layer)

    # ------------------------------------------------------------------ preparation

    def _setup(self, batch: dict, kappa, generator, for_generation: bool) -> step_plan.StepPlan:
        """The embedded batch and its host plan (steps 1 and 4's bookkeeping)."""
        s = step_plan.plan_step(batch, self.cfg, kappa, generator, training=self.training and not for_generation,
                                for_generation=for_generation, geometry=thinker_io.rope_geometry(self.core),
                                belief_counts=self.ewm.belief_counts if self.ewm is not None else None,
                                every_pass=self.uniform_calls)
        cut = self.cfg.ewm.context_source == "past" and bool(s.truncated)
        # at evaluation with keep < 1 every plan is truncated: the full clip's towers are not run at all
        s.embeds = self._embed(batch) if not cut or s.needs_full_towers() else None
        if cut:
            self.observe_past(batch, s, s.kappa)
        return s

    def observe_past(self, batch: dict, s: step_plan.StepPlan, kappa: torch.Tensor) -> None:
        """The kept A/V columns of ``s.embeds`` from the towers of the clip cut at ``kappa`` (B,)
        (``past_inputs.py``); the later columns keep the full clip's (token embeddings where those were not run)."""
        base = s.embeds if s.embeds is not None else thinker_io.embed_tokens(self.core, batch["input_ids"])
        s.embeds = self._embed_past(batch, base, s.regions, kappa)

    def _split_ewm(self, s, regions, mask, answer, kappa) -> None:
        """Kept for callers of the old method (``step_plan.split_ewm``; ``self`` is not read)."""
        step_plan.split_ewm(s, regions, mask, answer, kappa)

    def ewm_inputs(self, s, h0, h_past) -> list[torch.Tensor]:
        """[H_v, H_a] as the EWM reads them (``ewm_context.ewm_inputs``)."""
        return ewm_context.ewm_inputs(s, h0, h_past)

    def _run_ewm(self, s: step_plan.StepPlan, generator) -> EWMOutput | None:
        """Steps 2-3 as separate passes (no prefix sharing); None without the EWM."""
        if self.ewm is None:
            return None
        states = ewm_context.ewm_states(self._decoder, s, self.cfg.ewm) if s.needs_states else (None, None)
        return ewm_context.run_ewm(self.ewm, s, *states, generator)

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
        return step_plan.prepared(s, self._run_ewm(s, generator))

    # ------------------------------------------------------------------ training forward

    def forward(self, batch: dict | None = None, kappa=None, generator: torch.Generator | None = None,
                **fields) -> AffectVerseOutput:
        """One training/validation forward: L = L_lm + lambda_img L_img (Eq. 10).

        Called as ``model(batch)`` or ``model(**batch)`` (the batch contract's keys).
        """
        batch = batch if batch is not None else fields
        s = self._setup(batch, kappa, generator, for_generation=False)
        sharing = (self.share_prefix and not self.uniform_calls and self.ewm is not None
                   and not thinker_io.is_checkpointing(self.core))
        n0, head = shared_prefix.prefix_columns(s, self.cfg.ewm, sharing, self.min_shared_prefix)
        if head:
            hidden, ewm_out = shared_prefix.shared_passes(self._decoder, self.ewm, s, self.cfg.ewm, n0, head,
                                                          generator)
        else:
            ewm_out = self._run_ewm(s, generator)
            prep = step_plan.prepared(s, ewm_out)
            hidden, _ = self._decoder(prep.inputs_embeds, prep.attention_mask, prep.position_ids)  # (B, L', d)
        lam = self.cfg.ewm.lambda_img if self.ewm is not None else 0.0
        return objective.training_output(s, hidden, ewm_out, lambda h: thinker_io.lm_head(self.core, h), lam, head)

    # ------------------------------------------------------------------ inference (decoding.py)

    imagination_trace = decoding.imagination_trace
    generate = decoding.generate
    score_candidates = decoding.score_candidates
    _prefill = decoding.prefill
    _step = decoding.step


def build_model(cfg: AffectVerseConfig, device: torch.device | str = "cpu") -> AffectVerseModel:
    """Frozen thinker from ``cfg.backbone``, LoRA (``cfg.lora``), EWM (``cfg.ewm``), composed.

    Only :meth:`AffectVerseModel.trainable_parameters` require grad afterwards (checked).
    """
    return assemble_model(load_thinker(cfg.backbone, device), cfg)


def assemble_model(thinker: nn.Module, cfg: AffectVerseConfig) -> AffectVerseModel:
    """Compose an already loaded, frozen thinker with LoRA and the EWM (on the thinker's device)."""
    device = next(thinker.parameters()).device
    if cfg.backbone.gradient_checkpointing:
        thinker_io.enable_gradient_checkpointing(thinker)
        # transformers drops the KV cache of checkpointed layers in training (a recomputed layer would write it
        # twice), and the shared-prefix pass continues both passes from that cache: it is switched off
        logging.getLogger(__name__).warning(
            "backbone.gradient_checkpointing=true: the shared-prefix optimisation is off (no KV cache under "
            "checkpointing); each step runs the full-observation and the second pass separately")
    if cfg.lora.enabled:
        thinker = apply_lora(thinker, cfg.lora)
    ewm = None
    if cfg.ewm.enabled:
        ewm = EmotionWorldModule(cfg.ewm, thinker_io.text_width(thinker)).to(device)
    model = AffectVerseModel(thinker, ewm, cfg, share_prefix=not cfg.backbone.gradient_checkpointing)
    named = {id(p) for _, p in model.trainable_parameters()}
    grad = {id(p) for p in model.parameters() if p.requires_grad}
    if named != grad:
        raise RuntimeError("trainable_parameters() does not match the parameters that require grad")
    return model
