"""The training loop: short and linear (``out = engine(batch); engine.backward(out.loss); engine.step()``).

DeepSpeed already divides the loss by the gradient-accumulation steps; nothing
here divides again. Every rank runs the same number of micro-batches per epoch,
whole accumulation windows only (``data/run_length.py``), so ZeRO-2's collective calls
always pair up and every epoch ends on an optimizer step. The run's length comes
from one :class:`~affectverse_ds.data.run_length.RunPlan`: the loop, the scheduler, the
progress bar and the logged ETA all read it. The last step always saves a checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from affectverse_ds import safe_yaml
from affectverse_ds.config import AffectVerseConfig, dump_config, to_dict
from affectverse_ds.data.batch import AUDIO_TOKEN_ID, VIDEO_TOKEN_ID, to_device
from affectverse_ds.train import checkpoint as ckpt
from affectverse_ds.train import config_change
from affectverse_ds import distributed as dist
from affectverse_ds.train.logging import FlopCounter, MetricsLogger, device_peak_tflops, peak_memory_gb
from affectverse_ds.train.nonfinite import NonFiniteGuard


STOP_REASONS = ("end", "signal", "stop_after_steps", "nonfinite")


@dataclass
class TrainResult:
    """What a run did.

    stop_reason: "end" (the plan's last step: train.max_steps or the last epoch), "signal" (SIGTERM/SIGUSR1)
        or "stop_after_steps" (train.stop_after_steps); the last two leave the schedule unfinished.
        "nonfinite": stopped without saving (train/nonfinite.py); ``message`` says why in one line.
    skipped_steps: optimizer steps DeepSpeed skipped for a non-finite gradient (or with a non-finite loss).
    """

    steps: int
    losses: list[float] = field(default_factory=list)  # mean loss per optimizer step (over ranks and micro-batches)
    stop_reason: str = "end"
    last_checkpoint: Path | None = None
    skipped_steps: int = 0
    message: str | None = None

    @property
    def finished(self) -> bool:
        return self.stop_reason == "end"


class _StopFlag:
    """SIGTERM / SIGUSR1 (SLURM pre-emption) ask for a save at the next step boundary."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.requested = False
        self._previous = {sig: signal.signal(sig, self._handler) for sig in self.SIGNALS}

    def _handler(self, signum, _frame) -> None:
        self.requested = True

    def restore(self) -> None:
        """Put back the handlers that were there before (a process may train more than once)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _token_counts(batch) -> dict[str, int]:
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    video = int(((ids == VIDEO_TOKEN_ID) & mask).sum())
    audio = int(((ids == AUDIO_TOKEN_ID) & mask).sum())
    total = int(mask.sum())
    patches = int(batch["pixel_values_videos"].shape[0]) if "pixel_values_videos" in batch else 0
    mel = int(batch["feature_attention_mask"].sum()) if "feature_attention_mask" in batch else 0
    return {"tokens": total, "video": video, "audio": audio, "text": total - video - audio,
            "patches": patches, "mel": mel}


class Trainer:
    """Owns the engine, the loader and the bookkeeping of one run."""

    def __init__(self, cfg: AffectVerseConfig, ds_path: str | Path, resume: str | None = None,
                 allow_change: tuple[str, ...] = ()) -> None:
        from affectverse_ds.data.loader import build_train_loader, train_plan
        from affectverse_ds.model.affect_model import build_model
        from affectverse_ds.model.backbone import load_tokenizer
        from affectverse_ds.train.engine import build_engine

        self.cfg = cfg
        self.info = dist.dist_info_from_env()
        self.device = dist.pick_device(self.info)  # before the group: NCCL binds to the current CUDA device
        dist.init_distributed(self.info)
        self.out_dir = Path(cfg.train.out_dir)
        problem = ckpt.checkpoint_dir_problem(self.out_dir / "checkpoints")  # before any step is trained
        if problem:
            raise ckpt.CheckpointError(problem)
        torch.manual_seed(cfg.train.seed)  # identical EWM initialisation on every rank
        self.tokenizer = load_tokenizer(cfg.backbone.path)
        self.model = build_model(cfg, self.device)
        self.build_loader = build_train_loader
        self.plan = train_plan(cfg, self.info.world_size).run  # the run's length: computed here, once
        dist.print0(self.plan.describe(), info=self.info)
        trainable = list(self.model.trainable_parameters())
        self.engine, _, self.scheduler, self.ds_config = build_engine(
            self.model, trainable, cfg, ds_path, self.info.world_size, self.plan.total_steps, self.plan.warmup_steps)
        # model randomness (kappa, modality dropout) draws from its own generator, per rank, saved in checkpoints
        self.generator = torch.Generator().manual_seed(cfg.train.seed * 1000 + self.info.rank)
        self.flops = FlopCounter.from_model(self.model.thinker, sum(p.numel() for _, p in trainable))
        self.peak = device_peak_tflops(self.device)
        self.position = {"step": 0, "epoch": 0, "micro_in_epoch": 0}
        self.nonfinite = NonFiniteGuard(cfg.train.max_nonfinite_steps)
        if resume:
            self._resume(resume, set(allow_change))
        if self.position["micro_in_epoch"] >= self.plan.batches_per_epoch:  # saved at an epoch's last micro-batch
            self.position = {**self.position, "epoch": self.position["epoch"] + 1, "micro_in_epoch": 0}
        self.start_step = self.position["step"]
        if self.info.is_main:
            dump_config(cfg, self.out_dir / "config.yaml")
            (self.out_dir / "ds_config.json").write_text(json.dumps(self.ds_config, indent=2))

    # ------------------------------------------------------------------ resume / save

    def _resume(self, resume: str, allow_change: set[str]) -> None:
        path = ckpt.resolve_resume(self.out_dir / "checkpoints", resume, self.info)  # verified, same on every rank
        if path is None:
            return
        ckpt.check_world_size(path, self.info.world_size)  # before DeepSpeed fails on it with a traceback
        try:  # before loading: a changed weight shape would fail inside DeepSpeed with a size mismatch
            saved = safe_yaml.load_file(path / "config.yaml")
            changes = config_change.check_before_load(saved if isinstance(saved, dict) else {}, to_dict(self.cfg),
                                                      allow_change)
        except (safe_yaml.YamlRefused, config_change.ConfigChangeError) as err:
            raise ckpt.CheckpointError(str(err)) from None
        state = ckpt.load_checkpoint(self.engine, path, self.info)
        self.position = {k: state[k] for k in ("step", "epoch", "micro_in_epoch")}
        if changes:
            try:
                config_change.check_position(changes, self.position["micro_in_epoch"], self.position["step"])
                config_change.apply_optimizer(self.engine.lr_scheduler, changes, self.cfg.train.lr)
            except config_change.ConfigChangeError as err:
                raise ckpt.CheckpointError(str(err)) from None
            if self.info.is_main:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                dist.print0(config_change.record(self.out_dir, self.position["step"], path, changes), info=self.info)
        gen_state = state.get("generators", {}).get(str(self.info.rank))
        if gen_state is not None:
            self.generator.set_state(gen_state)
        dist.print0(f"resumed from {path} at step {self.position['step']}", info=self.info)

    def _save(self) -> Path:
        gens = dist.all_gather_object(self.generator.get_state())
        state = {**self.position, "config": to_dict(self.cfg),
                 "generators": {str(r): g for r, g in enumerate(gens)}}
        return ckpt.save_checkpoint(self.engine, self.model, self.cfg, self.position["step"], state, self.info)

    # ------------------------------------------------------------------ the loop

    @property
    def total_steps(self) -> int:
        return self.plan.total_steps

    def train(self) -> TrainResult:
        cfg, info = self.cfg, self.info
        stop = _StopFlag()
        result = TrainResult(steps=self.position["step"])
        logger = MetricsLogger(self.out_dir, enabled=info.is_main)
        bar = self._progress_bar()
        acc = _StepAccumulator()
        self._t_start = time.perf_counter()
        reason = "end" if self.position["step"] >= self.total_steps else None
        while reason is None:
            # start_batch: the loader skips (undecoded) exactly the micro-batches an uninterrupted run consumed
            epoch, start = self.position["epoch"], self.position["micro_in_epoch"]
            loader = self.build_loader(cfg, self.tokenizer, rank=info.rank, world=info.world_size,
                                       epoch=epoch, start_batch=start, pin_memory=self.device.type == "cuda")
            batches = iter(loader)
            for batch in batches:
                self._micro_step(batch, acc)
                self.position["micro_in_epoch"] += 1
                if acc.micro < cfg.train.grad_accum:
                    continue  # DeepSpeed stepped the optimizer only at the accumulation boundary
                self.position["step"] += 1
                epoch_end = self.position["micro_in_epoch"] == self.plan.batches_per_epoch
                if epoch_end:
                    self.position.update(epoch=epoch + 1, micro_in_epoch=0)
                scalars = acc.finish(self)
                if self.nonfinite.after_step(self.position["step"], scalars["loss/total"],
                                             self.engine.was_step_applied()) and not self.engine.was_step_applied():
                    self.engine.lr_scheduler.step()  # DeepSpeed did not: the LR stays a function of the step
                scalars["train/skipped_steps"] = float(self.nonfinite.total)
                # corrupt samples skipped so far in this epoch's loader, summed over ranks (issue #18)
                scalars["data/skipped_samples"] = float(sum(dist.all_gather_object(loader.stats.skipped)))
                result.losses.append(scalars["loss/total"])
                self._report(scalars, logger, bar)
                reason = self._after_step(stop, result, epoch_end)
                if reason is not None:
                    break
            else:
                if self.position["epoch"] == epoch:  # the loader's contract: exactly batches_per_epoch per epoch
                    got = self.position["micro_in_epoch"]
                    raise RuntimeError(f"epoch {epoch}: the train loader stopped after {got} micro-batches, "
                                       f"the plan has {self.plan.batches_per_epoch}")
            batches.close()  # a run that stops mid-epoch ends its loader workers now, not at interpreter exit
        stop.restore()
        result.steps, result.stop_reason = self.position["step"], reason
        result.skipped_steps, result.message = self.nonfinite.total, self.nonfinite.stop_message
        self._check_ranks_agree()
        logger.close()
        if bar is not None:
            bar.close()
        return result

    def _micro_step(self, batch, acc: "_StepAccumulator") -> None:
        meta_free = to_device({k: v for k, v in batch.items() if k != "meta"}, self.device)
        if acc.micro == 0:
            acc.lr = self.engine.get_lr()[0]  # the rate this optimizer step applies (the scheduler moves after it)
        out = self.engine(meta_free, generator=self.generator)
        self.engine.backward(out.loss)
        self.engine.step()
        acc.add(out, _token_counts(batch))

    def _after_step(self, stop: _StopFlag, result: TrainResult, epoch_end: bool) -> str | None:
        """Checkpointing and the stop conditions at an optimizer-step boundary; returns why the run ends, or None."""
        step, t = self.position["step"], self.cfg.train
        signalled = dist.all_reduce_max(1.0 if stop.requested else 0.0) > 0  # every rank stops at the same step
        reason = None
        if self.nonfinite.stop_message is not None:  # too many non-finite steps in a row: nothing worth saving
            reason = "nonfinite"
        elif step >= self.total_steps:  # the plan's last step: finished, whatever else asked to stop here
            reason = "end"
        elif signalled:
            reason = "signal"
        elif step - self.start_step == t.stop_after_steps:
            reason = "stop_after_steps"
        periodic = t.save_every > 0 and step % t.save_every == 0
        if reason != "nonfinite" and (reason is not None or periodic or (epoch_end and t.save_each_epoch)):
            if self.nonfinite.check_weights(self.model.trainable_parameters(), step):
                result.last_checkpoint = self._save()
            else:
                reason = "nonfinite"
        if reason == "nonfinite":
            dist.print0(f"stopping: {self.nonfinite.stop_message}", info=self.info)
        if reason in ("signal", "stop_after_steps"):
            why = "a signal (SIGTERM/SIGUSR1)" if reason == "signal" else f"train.stop_after_steps={t.stop_after_steps}"
            dist.print0(f"stopping at step {step} of {self.total_steps} ({why}): saved {result.last_checkpoint}",
                        info=self.info)
        return reason

    def _check_ranks_agree(self) -> None:
        """Trainable weights must be identical on every rank (the gradient all-reduce happened); recorded in the run dir."""
        with ckpt.whole_trainable(self.model):  # under ZeRO-3 a rank alone holds only slices
            digest = trainable_digest(self.model.trainable_parameters())
        digests = dist.all_gather_object(digest)
        if self.info.is_main:
            record = {"step": self.position["step"], "trainable_sha256_per_rank": digests}
            (self.out_dir / "final_state.json").write_text(json.dumps(record, indent=2))
        if len(set(digests)) != 1:
            raise RuntimeError(f"trainable weights differ across ranks after step {self.position['step']}: {digests}")

    def _progress_bar(self):
        if not self.info.is_main:
            return None
        from tqdm import tqdm

        return tqdm(total=self.total_steps, initial=self.position["step"], desc="train", unit="step",
                    dynamic_ncols=True)

    def _report(self, scalars: dict[str, float], logger: MetricsLogger, bar) -> None:
        step = self.position["step"]
        done = step - self.start_step
        scalars["eta_s"] = (time.perf_counter() - self._t_start) / done * (self.total_steps - step)
        if step % self.cfg.train.log_every == 0 or step == self.total_steps:
            logger.log(step, scalars)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{scalars['loss/total']:.4f}", lr=f"{scalars['lr']:.2e}")


class _StepAccumulator:
    """Sums one optimizer step's micro-batches, then reduces over ranks into the logged scalars."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.micro = 0
        self.lr = float("nan")
        self.sums: dict[str, float] = {}
        self.tokens = {"tokens": 0, "video": 0, "audio": 0, "text": 0, "patches": 0, "mel": 0}
        self.samples = 0
        self.t0 = time.perf_counter()

    def add(self, out, counts: dict[str, int]) -> None:
        self.micro += 1
        values = {"loss/total": out.loss, "loss/lm": out.lm_loss, "loss/imagine": out.img_loss, **out.metrics}
        for k, v in values.items():
            if v is not None:
                self.sums[k] = self.sums.get(k, 0.0) + float(v.detach() if isinstance(v, torch.Tensor) else v)
        for k in self.tokens:
            self.tokens[k] += counts[k]
        self.samples += 1

    def finish(self, trainer: Trainer) -> dict[str, float]:
        elapsed = time.perf_counter() - self.t0
        keys = sorted(self.sums)
        local = dist.all_reduce(torch.tensor([self.sums[k] / self.micro for k in keys]
                                             + [float(self.tokens[k]) for k in self.tokens], dtype=torch.float64))
        world = trainer.info.world_size
        means = {k: float(local[i]) / world for i, k in enumerate(keys)}
        tok = {k: float(local[len(keys) + i]) for i, k in enumerate(self.tokens)}
        samples = self.samples * trainer.cfg.train.micro_batch * world
        flops = trainer.flops.step_flops(int(tok["tokens"]), int(tok["mel"]), int(tok["patches"]))
        scalars = {
            **means,
            "lr": self.lr,
            "grad_norm": _grad_norm(trainer.engine),
            "step_time_s": elapsed,
            "samples_per_s": samples / elapsed,
            "tokens_per_s/text": tok["text"] / elapsed,
            "tokens_per_s/audio": tok["audio"] / elapsed,
            "tokens_per_s/video": tok["video"] / elapsed,
            "tflops_per_device": flops / elapsed / world / 1e12,
            "mfu": (flops / elapsed / world / 1e12 / trainer.peak) if trainer.peak else None,
            "peak_memory_gb": peak_memory_gb(trainer.device),
        }
        self.reset()
        return scalars


def trainable_digest(named_params) -> str:
    h = hashlib.sha256()
    for name, p in sorted(named_params, key=lambda x: x[0]):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def _grad_norm(engine) -> float | None:
    norm = engine.get_global_grad_norm()
    if norm is None:
        return None
    return float(norm.item() if isinstance(norm, torch.Tensor) else norm)
