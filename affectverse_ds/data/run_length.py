"""The run's length, computed once: what the loop, the scheduler, the progress bar and the ETA all use.

    samples/epoch (weighted benchmarks, from the loader's ``TrainPlan``)
    -> micro-batches per rank per epoch = floor(samples / (micro_batch x world))
    -> optimizer steps per epoch        = floor(micro-batches / grad_accum)
    -> total steps                      = train.max_steps if > 0, else steps/epoch x train.epochs
    -> warm-up steps                    = ceil(warmup_ratio x total)  (as transformers' TrainingArguments)
    (7B preset, ~44k clips on 8 GPUs, micro 4 x accum 8: 1375 micro-batches, 171 steps/epoch, 513 steps, 16 warm-up)

The last partial accumulation window of an epoch is left out: each epoch reads
``steps/epoch x grad_accum`` micro-batches per rank and the remaining (fewer than
``grad_accum``) are not read that epoch. Every optimizer step then averages the same
number of samples, DeepSpeed's accumulation boundary (counted over the whole run)
falls on every epoch end, and the schedule's length is exact. The shard order and the
shuffle change every epoch, so the samples left out differ between epochs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from affectverse_ds.config import ConfigError, TrainConfig


@dataclass(frozen=True)
class RunPlan:
    """How long a run is, in samples, micro-batches and optimizer steps.

    Args:
        samples_per_epoch: weighted samples of one epoch over all ranks.
        micro_batches_per_epoch: micro-batches one rank could make from an epoch.
        steps_per_epoch: optimizer steps per epoch.
        total_steps: optimizer steps of the run (the schedule's length).
        warmup_steps: linear warm-up steps at the start of the schedule.
        grad_accum, micro_batch, world_size: the batch shape the numbers came from.
        max_steps: whether ``total_steps`` came from ``train.max_steps`` (else from ``train.epochs``).
    """

    samples_per_epoch: int
    micro_batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    grad_accum: int
    micro_batch: int
    world_size: int
    max_steps: bool

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches each rank reads per epoch: whole accumulation windows only."""
        return self.steps_per_epoch * self.grad_accum

    @property
    def left_out_per_epoch(self) -> int:
        """Micro-batches per rank per epoch in the last partial accumulation window (not read)."""
        return self.micro_batches_per_epoch - self.batches_per_epoch

    @property
    def epochs(self) -> float:
        return self.total_steps / self.steps_per_epoch

    def describe(self) -> str:
        """The one line rank 0 prints at start."""
        length = "train.max_steps" if self.max_steps else f"{self.epochs:g} epochs"
        return (f"run plan: {self.samples_per_epoch} samples/epoch, {self.micro_batches_per_epoch} micro-batches/epoch "
                f"per rank (micro {self.micro_batch} x {self.world_size} ranks; {self.left_out_per_epoch} left out "
                f"as a partial window of accum {self.grad_accum}), {self.steps_per_epoch} optimizer steps/epoch, "
                f"{self.total_steps} total steps ({length}), {self.warmup_steps} warm-up steps")


def make_run_plan(t: TrainConfig, samples_per_epoch: int, world_size: int) -> RunPlan:
    """The plan of a run with ``samples_per_epoch`` weighted samples on ``world_size`` ranks.

    Raises:
        ConfigError: an epoch makes no optimizer step (too few samples for micro x accum x world).
    """
    micro = samples_per_epoch // (t.micro_batch * world_size)
    steps = micro // t.grad_accum
    if steps < 1:
        raise ConfigError(
            f"train.grad_accum: {samples_per_epoch} samples per epoch make no optimizer step of micro_batch "
            f"{t.micro_batch} x grad_accum {t.grad_accum} x world size {world_size} = "
            f"{t.micro_batch * t.grad_accum * world_size} samples")
    total = t.max_steps if t.max_steps > 0 else steps * t.epochs
    warmup = math.ceil(round(t.warmup_ratio * total, 6))  # round first: 0.03 x 100 is 3.0000000000000004
    return RunPlan(samples_per_epoch=samples_per_epoch, micro_batches_per_epoch=micro, steps_per_epoch=steps,
                   total_steps=total, warmup_steps=warmup, grad_accum=t.grad_accum, micro_batch=t.micro_batch,
                   world_size=world_size, max_steps=t.max_steps > 0)
