"""The training objective: L = L_lm + lambda_img L_img (Eq. 9-10) from the second pass's states, and the metrics."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from affectverse_ds.data.batch import IGNORE_INDEX
from affectverse_ds.model import injection as inj
from affectverse_ds.model.ewm import EWMOutput
from affectverse_ds.model.records import AffectVerseOutput
from affectverse_ds.model.step_plan import StepPlan


def training_output(s: StepPlan, hidden: torch.Tensor, ewm_out: EWMOutput | None, head: Callable,
                    lambda_img: float, shared_prefix: int) -> AffectVerseOutput:
    """Loss, logits and metrics of one forward.

    Args:
        hidden: (B, L', d) decoder states of the modified sequence ``s.plan``.
        head: the LM head (``thinker_io.lm_head``), applied only where a label exists.
        lambda_img: weight of L_img (0 without the EWM).
        shared_prefix: columns computed once by the shared-prefix pass (a metric; 0 when off).
    """
    labels = s.plan.labels.to(hidden.device)
    target = labels[:, 1:]  # (B, L'-1), label of the next token
    has = target != IGNORE_INDEX
    logits = head(hidden[:, :-1][has]).float()  # (n, V): only where a label exists
    tok_nll = F.cross_entropy(logits, target[has], reduction="none")  # (n,)
    b = target.shape[0]
    label_sample = torch.arange(b, device=has.device)[:, None].expand_as(has)[has]
    sample_nll = tok_nll.new_zeros(b).index_add(0, label_sample, tok_nll)
    n_tokens = has.sum(1)
    lm_loss = tok_nll.sum() / has.sum().clamp(min=1)
    img_loss = ewm_out.img_loss if ewm_out is not None else lm_loss.new_zeros(())
    loss = lm_loss + lambda_img * img_loss + (ewm_out.touch if ewm_out is not None else 0.0)
    metrics = step_metrics(s, ewm_out, n_tokens)
    metrics["shared_prefix"] = torch.tensor(float(shared_prefix))
    return AffectVerseOutput(loss, lm_loss, img_loss, logits, label_sample, sample_nll, n_tokens, metrics,
                             ewm_out.mama_weights if ewm_out is not None else None)


def step_metrics(s: StepPlan, ewm_out: EWMOutput | None, n_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Detached scalars of the step's plan (and the EWM's own metrics)."""
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
