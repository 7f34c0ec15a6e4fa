"""The per-step host plan: kappa, modality dropout, the EWM's past/future split and the three sequence plans.

Pure functions of (batch tensors, config, generator): no model, no decoder, nothing on the device except
:func:`prepared`, which applies a plan to the embedded batch. The three sequences of a step (paper Alg. 1):

- ``plan0``: the full-observation sequence up to its last A/V token (first pass; the EWM's targets);
- ``plan_past``: the same prefix with only the kept (past) A/V tokens (past pass; the EWM's context);
- ``plan``: the modified sequence, keep mask applied and belief tokens inserted (second pass, with grad).

A plan that truncates the clip (``plan_past``; ``plan`` under the keep mask; ``plan0`` at evaluation with keep
< 1) is listed in ``StepPlan.truncated``. Every plan gathers from ``embeds``. Under ``ewm.context_source =
"past"``, when a plan truncates, its kept A/V columns hold the tower outputs of the clip cut at the keep point
(``past_inputs.py``) and the later columns, which only the full-observation pass reads, the full clip's: the
full-observation pass continues exactly the past the context saw. Under ``"full"`` ``embeds`` is the full clip's
towers throughout (the literal Algorithm 1).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from affectverse_ds.config import AffectVerseConfig, EWMConfig
from affectverse_ds.data.batch import IGNORE_INDEX
from affectverse_ds.model import injection as inj
from affectverse_ds.model.ewm import EWMOutput
from affectverse_ds.model.records import Prepared

KINDS = (inj.VIDEO, inj.AUDIO)  # the EWM's modality order: [video, audio]


@dataclass
class StepPlan:
    """Host bookkeeping of one batch (plans, kappa, modality use) and its embedded tokens."""

    embeds: torch.Tensor | None  # (B, L, d), towers scattered in (see the module docstring), no grad; set by the model
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
    truncated: set[str] = field(default_factory=set)  # names of the plans that see the clip cut at kappa

    def needs_full_towers(self) -> bool:
        """Some plan reads A/V tokens after the keep point (else only the cut clip's towers are needed)."""
        return any(p is not None and n not in self.truncated
                   for n, p in (("plan", self.plan), ("plan0", self.plan0), ("plan_past", self.plan_past)))


def draw_kappa(b: int, kappa, training: bool, e: EWMConfig, generator) -> torch.Tensor:
    """(B,) float64 keep ratios: given, else U[kappa_min, 1) in training with temporal splitting, else 1."""
    if kappa is not None:
        return torch.as_tensor(kappa, dtype=torch.float64).expand(b).clone()
    if training and e.temporal_split:
        return e.kappa_min + (1.0 - e.kappa_min) * torch.rand(b, generator=generator, dtype=torch.float64)
    return torch.ones(b, dtype=torch.float64)


def modality_use(lengths: list[torch.Tensor], training: bool, p: float, generator) -> list[torch.Tensor]:
    """Modality dropout (App. D.1): with p drop one of two present modalities from the EWM, each half the time."""
    use = [lengths[0] > 0, lengths[1] > 0]
    if training and p > 0:
        both = use[0] & use[1]
        drop = (torch.rand(len(both), generator=generator) < p) & both
        video = torch.rand(len(both), generator=generator) < 0.5
        use = [use[0] & ~(drop & video), use[1] & ~(drop & ~video)]
    return use


def answer_cols(batch: dict, mask: torch.Tensor) -> torch.Tensor:
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


def plan_step(batch: dict, cfg: AffectVerseConfig, kappa, generator, *, training: bool, for_generation: bool,
              geometry: tuple[int, float], belief_counts: Callable | None, every_pass: bool = False) -> StepPlan:
    """Regions, kappa, modality use, belief counts and the sequence plans of one batch (``embeds`` left None).

    Args:
        batch: the batch contract (``data/batch.py``); only its ids, masks, grids and labels are read.
        kappa: keep ratio (float or (B,)); None: drawn in training (``ewm.temporal_split``), else 1.
        generator: host RNG for kappa and modality dropout.
        training: draw kappa / modality dropout and keep the full sequence in ``plan0``.
        for_generation: left-padded prompt cut at the answer start, belief tokens at its end.
        geometry: (spatial merge size, position ids per second) of the thinker (``thinker_io.rope_geometry``).
        belief_counts: the EWM's Eq. 18 (``EmotionWorldModule.belief_counts``); None without the EWM.
        every_pass: the state passes run also when the batch holds no A/V token (their states are then unread):
            the passes of a step depend on the config and kappa's draw alone (``AffectVerseModel.uniform_calls``).
    """
    mask = batch["attention_mask"].cpu()
    regions = inj.find_regions(batch["input_ids"].cpu(), mask, _cpu(batch.get("video_grid_thw")),
                               _cpu(batch.get("video_second_per_grid")), *geometry,
                               audio_samples=_cpu(batch.get("audio_waveform_lengths")))
    answer = answer_cols(batch, mask)
    b = mask.shape[0]
    kap = draw_kappa(b, kappa, training, cfg.ewm, generator)
    truncate = (cfg.injection.keep_mask or not training) and bool((kap < 1).any())
    keep_ratio = kap if truncate else None
    s = StepPlan(None, kap, training, regions=regions, mask=mask, answer=answer)
    n_belief = torch.zeros(b, dtype=torch.long)
    if belief_counts is not None:
        # the full-observation pass sees everything in training, the observed prefix at evaluation
        s.plan0 = inj.build_plan(regions, mask, None, answer, None if training else keep_ratio,
                                 torch.zeros(b, dtype=torch.long), stop_after_av=True)
        if keep_ratio is not None and not training:
            s.truncated.add("plan0")
        s.lengths = [(s.plan0.kind == k).sum(1) for k in KINDS]
        split_ewm(s, regions, mask, answer, kap if training else None)
        s.use = modality_use(s.lengths, training, cfg.ewm.modality_dropout, generator)
        n_belief = belief_counts([u & (n > 0) for u, n in zip(s.use, s.lengths)])
        e = cfg.ewm
        reads_states = e.belief in ("ewm", "pooling", "imagination") or e.lambda_img > 0
        s.needs_states = reads_states and (every_pass or int(sum(s.lengths).sum()) > 0)
    labels = batch.get("labels")
    s.plan = inj.build_plan(regions, mask, labels.cpu() if labels is not None else None, answer, keep_ratio,
                            n_belief, cfg.injection.positions,
                            pad_side="left" if for_generation else "right", cut_at_answer=for_generation)
    if keep_ratio is not None:
        s.truncated.add("plan")
    return s


def split_ewm(s: StepPlan, regions, mask, answer, kappa: torch.Tensor | None) -> None:
    """The EWM's past/future split: T_p = tokens the keep mask keeps at ``kappa`` (whole video frame groups).

    Sets ``s.split``, ``s.order`` (plan0 columns per modality, kept tokens first) and, whenever some kappa is
    below 1, ``s.plan_past`` and ``s.past_cols``. ``kappa`` None: everything observed is past.

    The past plan exists even when no whole token falls after the cut (a short stream, kappa near 1; with
    rounding, often a whole video), so whether the past pass runs depends on kappa's draw alone, never on the
    clips. Under ZeRO-3 every rank gathers each layer's weights in each pass it runs, so a rank skipping the
    past pass because its clips kept everything would leave the other ranks waiting (it hung the ZeRO-3 launch
    test); the other clip-dependent calls are made uniform by ``AffectVerseModel.uniform_calls``. Its states
    then equal the full-observation pass's prefix, as the skipped pass's would.
    """
    b = mask.shape[0]
    s.order = [columns(s.plan0.kind == k) for k in KINDS]
    if kappa is None or not bool((kappa < 1).any()):
        s.split = list(s.lengths)
        return
    past = inj.build_plan(regions, mask, None, answer, kappa, torch.zeros(b, dtype=torch.long),
                          stop_after_av=True)
    s.split = [(past.kind == k).sum(1) for k in KINDS]
    s.plan_past = past
    s.truncated.add("plan_past")
    s.past_cols = [columns(past.kind == k) for k in KINDS]
    # plan0 columns per modality: the kept tokens (in plan_past order), then the dropped ones
    for m in range(2):
        o0 = s.plan0.orig_col.gather(1, s.order[m]).clamp(min=0)  # original columns, in plan0 order
        kept = past.orig_col.gather(1, s.past_cols[m]).clamp(min=0)
        is_real = (torch.arange(kept.shape[1])[None] < s.split[m][:, None]).long()
        kept_col = torch.zeros(b, s.plan0.n_cols, dtype=torch.long).scatter_add_(1, kept, is_real)
        is_kept = kept_col.gather(1, o0) > 0  # the original columns the keep mask keeps
        valid = torch.arange(o0.shape[1])[None] < s.lengths[m][:, None]
        rank = torch.where(valid, (~is_kept).long(), 2)  # kept 0, dropped 1, padding 2; stable sort
        s.order[m] = s.order[m].gather(1, torch.argsort(rank, dim=1, stable=True))


def uses_past_pass(s: StepPlan, e: EWMConfig) -> bool:
    """The EWM's context comes from the past pass (some token dropped, ``ewm.context_source = "past"``)."""
    return s.plan_past is not None and e.context_source == "past"


def context_grad(s: StepPlan, e: EWMConfig) -> bool:
    """L_img reaches LoRA through the context states (``ewm.img_grad_to_lora``, training only)."""
    return s.training and e.img_grad_to_lora


def prepared(s: StepPlan, ewm_out: EWMOutput | None, cols: slice = slice(None)) -> Prepared:
    """The modified sequence (``s.plan``) of the embedded batch, belief tokens inserted, on the embeds' device."""
    dev = s.embeds.device
    x = inj.gather_embeddings(s.plan, s.embeds, ewm_out.beliefs if ewm_out is not None else None, cols)
    p = s.plan
    return Prepared(x, p.attention_mask.to(dev), p.position_ids[:, :, cols].to(dev), p.labels.to(dev),
                    p, ewm_out, s.kappa)


def columns(hit: torch.Tensor) -> torch.Tensor:
    """(B, T) columns of the hits of each row, in order, zero-padded (T = max hits, at least 1)."""
    width = max(int(hit.sum(1).max()) if hit.numel() else 0, 1)
    return torch.argsort((~hit).int(), dim=1, stable=True)[:, :width]


def _cpu(t: torch.Tensor | None) -> torch.Tensor | None:
    return t.cpu() if t is not None else None
