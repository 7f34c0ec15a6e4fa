"""What the model hands out: the forward's result, the prepared sequence and the imagination trace."""
from __future__ import annotations

from dataclasses import dataclass

import torch
# a public base class, not an internal: ZeRO-3's hooks find tensors in a ModelOutput (a dict), see EWMOutput
from transformers.utils import ModelOutput

from affectverse_ds.model import injection as inj
from affectverse_ds.model.ewm import EWMOutput


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
