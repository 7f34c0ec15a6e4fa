"""What a run does with a non-finite loss or gradient: skip the step, count it, stop after N in a row, and
never save weights that are not finite.

The policy, in the order it acts:

1. A non-finite gradient (a NaN/inf loss gives one) never updates the weights: DeepSpeed's ZeRO optimizers
   check the global gradient norm before stepping and skip the step when it is not finite (fp32 always; bf16
   through ``bf16.check_grad_overflow``, on by default), and they all-reduce that decision, so every rank
   skips the same step. The loop reads ``engine.was_step_applied()`` and steps the LR scheduler itself for a
   skipped step, so the learning rate stays a function of the step number (as the run plan, the ETA and a
   resume assume). The step still consumes its data: the data position moves on.
2. Every step whose loss or gradient was not finite on any rank is counted (``train/skipped_steps`` in the
   metrics, ``TrainResult.skipped_steps``); ``train.max_nonfinite_steps`` of them in a row end the run with
   stop reason ``"nonfinite"`` and one line naming the step, without saving.
3. Before every save the trainable weights are checked finite on every rank (a finite gradient with a huge
   learning rate can still overflow them); if not, nothing is saved, the run ends the same way, and the
   newest COMPLETE checkpoint stays the last good one.

Every decision goes through one max all-reduce, so all ranks take it together (ZeRO pairs collectives).
"""
from __future__ import annotations

import math

import torch

from affectverse_ds import distributed as dist


class NonFiniteGuard:
    """Counts non-finite steps and says when the run must stop; call :meth:`after_step` on every rank."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0  # skipped steps in this process
        self.in_a_row = 0
        self.stop_message: str | None = None

    def after_step(self, step: int, loss: float, applied: bool) -> bool:
        """Record optimizer step ``step`` (its mean loss over ranks; whether DeepSpeed applied it).

        Returns whether the step counts as non-finite on any rank; sets ``stop_message`` at the limit."""
        bad = dist.all_reduce_max(0.0 if applied and math.isfinite(loss) else 1.0) > 0
        if not bad:
            self.in_a_row = 0
            return False
        self.total += 1
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            self.stop_message = (
                f"step {step}: {self.in_a_row} optimizer steps in a row had a non-finite loss or gradient and were "
                f"skipped (train.max_nonfinite_steps={self.limit}); stopped without saving: lower train.lr or "
                f"check the data, then --resume auto restarts from the last complete checkpoint")
        return True

    def check_weights(self, named_params, step: int) -> bool:
        """Whether every trainable weight is finite on every rank (a collective); sets ``stop_message`` if not.

        Under ZeRO-3 a rank holds a slice of each weight (``ds_tensor``): checking the slices, then taking the
        max over ranks, covers the whole weight without gathering it."""
        first_bad = next((name for name, p in named_params
                          if not torch.isfinite(getattr(p, "ds_tensor", p).detach()).all()), None)
        if dist.all_reduce_max(0.0 if first_bad is None else 1.0) == 0:
            return True
        where = f" ({first_bad} on this rank)" if first_bad else ""
        self.stop_message = (f"step {step}: trainable weights are not finite{where}; not saved, the last complete "
                             f"checkpoint is the newest good state: lower train.lr, then --resume auto")
        return False
