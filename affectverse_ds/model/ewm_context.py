"""What the EWM reads: the passes giving its past context and future targets, gathered into [H_v, H_a].

Leak-free context (Appendix D.1, "imagine from the past alone"). In the full sequence video precedes audio,
so under causal attention every audio state has seen all video tokens, the future ones included; and the
towers run on the whole clip (the audio tower attends both ways inside 2 s chunks, the Whisper log-mel floor
is the clip-wide maximum - 8). The EWM's context (past tokens of both modalities) therefore comes from the
past pass, whose sequence holds only the kept (past) A/V tokens, embedded by towers that saw only the clip
cut at the keep point (``past_inputs.py``: the waveform's own log-mel and audio-tower pass, the kept frame
groups' own vision-tower pass); the targets (future tokens) come from the full-observation pass under
stop-gradient, over that same past followed by the future tokens of the full clip's towers. Every context
state, and so the belief tokens, is then a function of the cut clip alone (``tests/model/test_ewm_leak.py``
perturbs future pixels, future samples and the future's length and checks them bit for bit; the loader's
frame sampling and audio cap are decided on the whole clip, see ``past_inputs.py``).
``ewm.context_source = "full"`` reads both from the full pass over the full-clip towers (the literal
Algorithm 1). The EWM sees each modality as [past tokens ; future tokens] with T_p = the kept count.

This is the one place that decides where the EWM's inputs come from; the shared-prefix optimisation
(``shared_prefix.py``) computes the same two state tensors from one KV cache and hands them to
:func:`run_ewm` like :func:`ewm_states` does.

``decoder`` below is the composed model's ``_decoder`` (``thinker_io.decode`` on its thinker).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from affectverse_ds.config import EWMConfig
from affectverse_ds.model import injection as inj
from affectverse_ds.model.ewm import EmotionWorldModule, EWMOutput
from affectverse_ds.model.step_plan import StepPlan, context_grad, uses_past_pass


def pass_states(decoder: Callable, s: StepPlan, plan: inj.SequencePlan, grad: bool, source_layer: int) -> torch.Tensor:
    """Decoder states (B, L_plan, d) of ``plan``'s sequence (the full-observation or the past pass)."""
    dev = s.embeds.device
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        x0 = inj.gather_embeddings(plan, s.embeds, None)
        h, _ = decoder(x0, plan.attention_mask.to(dev), plan.position_ids.to(dev), source_layer=source_layer)
    return h


def ewm_states(decoder: Callable, s: StepPlan, e: EWMConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step 2 as separate passes: (full-observation states (B, L0, d), past-pass states (B, Lp, d) or None).

    No grad unless ``ewm.img_grad_to_lora``; then the grad flows through whichever pass gives the context.
    """
    grad = context_grad(s, e)
    past = uses_past_pass(s, e)
    h0 = pass_states(decoder, s, s.plan0, grad and not past, e.source_layer)
    return h0, (pass_states(decoder, s, s.plan_past, grad, e.source_layer) if past else None)


def ewm_inputs(s: StepPlan, h0: torch.Tensor | None, h_past: torch.Tensor | None) -> list[torch.Tensor]:
    """[H_v, H_a] as the EWM reads them: per modality [past tokens ; future tokens], zero-padded.

    Past tokens come from ``h_past`` (the past pass) when given, else from ``h0``; future tokens from
    ``h0`` (the full-observation pass). Zeros when no state is needed (``h0`` None).
    """
    b, d = s.embeds.shape[0], s.embeds.shape[-1]
    if h0 is None:
        return [s.embeds.new_zeros(b, max(int(n.max()), 1), d) for n in s.lengths]
    hidden = []
    for m in range(2):
        h = gather_cols(h0, s.order[m], s.lengths[m])
        if h_past is not None:
            width = s.past_cols[m].shape[1]
            hp = gather_cols(h_past, s.past_cols[m], s.split[m])
            is_past = (torch.arange(width)[None] < s.split[m][:, None]).to(h.device)[..., None]
            h = torch.cat([torch.where(is_past, hp, h[:, :width]), h[:, width:]], dim=1)
        hidden.append(h)
    return hidden


def run_ewm(ewm: EmotionWorldModule, s: StepPlan, h0: torch.Tensor | None, h_past: torch.Tensor | None,
            generator) -> EWMOutput:
    """Step 3: the EWM on the A/V states (see :func:`ewm_inputs`)."""
    dev = s.embeds.device
    return ewm(ewm_inputs(s, h0, h_past), [n.to(dev) for n in s.lengths],
               [t.to(dev) for t in s.split], [u.to(dev) for u in s.use], generator)


def gather_cols(h: torch.Tensor, cols: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """h (B, L, d) at columns ``cols`` (B, T); entries at or beyond ``lengths`` (B,) are zero: (B, T, d)."""
    valid = (torch.arange(cols.shape[1])[None] < lengths[:, None]).to(h.device)
    idx = cols.to(h.device)[..., None].expand(-1, -1, h.shape[-1])
    return torch.gather(h, 1, idx) * valid[..., None].to(h.dtype)
