"""The evaluator: checkpoints -> predictions on the test shards -> MER-UniBench scores, tables and plots.

    python launch/evaluate.py --checkpoint CKPT [CKPT ...] --config CONFIG [--benchmarks ...] \\
        [--modality avt,at,vt] [--keep-ratio 1.0,0.7,0.5,0.3,0.1] [--mode generate|rank] [--out results]

For every checkpoint, benchmark and modality setting, each rank reads its share of the test split
(``data.loader.build_eval_loader``: sample ``g`` goes to rank ``g % world``), and for every keep ratio
kappa (the model observes only the first kappa of each audio/video region, EVALUATION.md) predicts:

* ``generate``: greedy decoding with the KV cache, belief tokens injected as in training
  (``AffectVerseModel.generate``); the answer is read by the scorer's extractor;
* ``rank``: the log-likelihood of every closed-set candidate answer (the benchmark's trained
  target sentence for each class), batched (``AffectVerseModel.score_candidates``); the most
  likely candidate is the prediction. Open-vocabulary benchmarks have no candidates and are
  generated (the run records ``mode_used``).

Results are gathered on rank 0 and scored with the scorer (``eval.unibench``) against the labels
stored in the shards; test samples the shard builder rejected (``manifest.parquet``) and samples
whose media cannot be read at evaluation are counted, listed, and scored as empty predictions,
never a crash. Rank 0 writes ``<out>/<benchmark>.json``, ``<out>/predictions/...jsonl`` (our
predictions format, rescorable with ``python -m affectverse_ds.eval.unibench score``),
``<out>/summary.md`` (Tables 1, 2 and 8) and ``<out>/plots/*.png``.

Imagination fidelity (Table 8) needs the model to expose the EWM's view of a fully observed clip
split at kappa (:func:`imagination_trace`); MAMA attention (Fig. 3) is read from the inference
preparation at kappa = 1.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import tarfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from affectverse_ds.benchmarks import Benchmark, Label, LabelTable, get_benchmark
from affectverse_ds.config import AffectVerseConfig, load_config
from affectverse_ds.data import schema
from affectverse_ds.data.batch import IM_END_ID, PAD_TOKEN_ID, to_device
from affectverse_ds.eval import report
from affectverse_ds.eval.predictions import Prediction, PredictionSet, write_predictions
from affectverse_ds.eval.report import ImaginationRow, RunScore
from affectverse_ds.eval.unibench import ScoreReport, ScoringContext, score_predictions
from affectverse_ds.eval.wheel import load_wheels, wheel_dir_for
from affectverse_ds.train import distributed as dist

EXPORT_DIR = "export"
STEP_RE = re.compile(r"^step_\d{6,}$")
MODEL_SECTIONS = ("lora", "ewm", "injection")  # what a checkpoint's own config decides; the rest is the user's
PREDICTORS = ("ewm", "repeat_last", "mean_observed")
STREAMS = ("v", "a")
MAMA_SAMPLES = 16  # dual-modality samples averaged per heatmap (Fig. 3 shows a handful of validation clips)
PLOTS_DIR = "plots"


# ----------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint to evaluate: its label in the tables and its ``export/`` folder."""

    label: str
    export_dir: Path


def resolve_checkpoint(path: str | Path) -> CheckpointRef:
    """Accept a ``step_NNNNNN/`` folder (its ``export/`` is used) or an ``export/`` folder itself.

    Raises:
        FileNotFoundError: neither layout (no ``config.yaml`` in the export folder).
    """
    path = Path(path)
    export = path / EXPORT_DIR if (path / EXPORT_DIR).is_dir() else path
    if not (export / "config.yaml").is_file():
        raise FileNotFoundError(f"{path}: not a checkpoint (expected step_NNNNNN/export/config.yaml "
                                f"or export/config.yaml)")
    if export.name == EXPORT_DIR and STEP_RE.match(export.parent.name):
        label = export.parent.name
        run = export.parent.parent
        if run.name == "checkpoints" and run.parent.name:
            label = f"{run.parent.name}@{label}"  # runs/demo/ewm/checkpoints/step_N -> ewm@step_N
    elif export.name == EXPORT_DIR:
        label = export.parent.name or EXPORT_DIR
    else:
        label = export.name
    return CheckpointRef(label, export)


def model_config(cfg: AffectVerseConfig, export_dir: str | Path) -> AffectVerseConfig:
    """The config a checkpoint is evaluated with: its own model sections (LoRA, EWM, injection: they
    must match the weights), the user's backbone location, data, eval and train sections."""
    saved = load_config(Path(export_dir) / "config.yaml")
    return dataclasses.replace(cfg, **{name: getattr(saved, name) for name in MODEL_SECTIONS})


def load_trained_weights(model, export_dir: str | Path) -> None:
    """Load a checkpoint export (``lora/`` PEFT adapter, ``ewm.safetensors``) into a freshly built model.

    Raises:
        RuntimeError: an adapter or EWM tensor that the model does not have, or a missing one.
    """
    from safetensors.torch import load_file

    export_dir = Path(export_dir)
    adapter = export_dir / "lora" / "adapter_model.safetensors"
    if model.cfg.lora.enabled:
        if not adapter.is_file():
            raise FileNotFoundError(f"{adapter}: LoRA is enabled in the checkpoint config but has no adapter")
        from peft import set_peft_model_state_dict

        state = load_file(str(adapter))
        result = set_peft_model_state_dict(model.thinker, state)
        if result.unexpected_keys:
            raise RuntimeError(f"{adapter}: tensors the model does not have: {result.unexpected_keys[:3]} ...")
        missing = [k for k in result.missing_keys if "lora_" in k]
        if missing:
            raise RuntimeError(f"{adapter}: LoRA tensors missing from the adapter: {missing[:3]} ...")
    ewm_file = export_dir / "ewm.safetensors"
    if model.ewm is not None:
        if not ewm_file.is_file():
            raise FileNotFoundError(f"{ewm_file}: the EWM is enabled in the checkpoint config but has no weights")
        state = load_file(str(ewm_file))
        prefix = "ewm."
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
        model.ewm.load_state_dict(state, strict=True)


def load_checkpoint_model(ref: CheckpointRef, cfg: AffectVerseConfig, device: torch.device | str):
    """Build the model a checkpoint describes and load its trained weights; returns (model, its config)."""
    from affectverse_ds.model.affect_model import build_model

    mcfg = model_config(cfg, ref.export_dir)
    model = build_model(mcfg, device)
    load_trained_weights(model, ref.export_dir)
    model.eval()
    return model, mcfg


# ----------------------------------------------------------------------------- ground truth


@dataclass
class GoldSet:
    """The ground truth of one benchmark's test split as the shards hold it.

    Args:
        labels: name -> label of every test sample in the shards, plus the builder's rejected ones
            that have a label (scored as empty predictions).
        in_shards: names present in the shards.
        build_rejected: name -> reason, test items the shard builder rejected (``manifest.parquet``).
    """

    labels: LabelTable
    in_shards: list[str]
    build_rejected: dict[str, str] = field(default_factory=dict)


def label_from_json(data: dict | None) -> Label | None:
    """A :class:`Label` from the shard/manifest JSON (``emo``, ``val``, ``openset``); None when absent."""
    if not data:
        return None
    openset = data.get("openset")
    val = data.get("val")
    return Label(emo=data.get("emo"), val=float(val) if val is not None else None,
                 openset=tuple(openset) if openset is not None else None)


def read_gold(shard_dir: str | Path, bench: Benchmark, split: str | None = None) -> GoldSet:
    """Labels of a test split from its shards' JSON members (media bytes are skipped, not decoded),
    and the items the builder rejected from ``manifest.parquet`` when there is one."""
    from affectverse_ds.data.loader import list_shards

    split = split or bench.test_split
    labels: dict[str, Label] = {}
    rejected_labels: dict[str, str] = {}
    in_shards: list[str] = []
    for shard in list_shards(shard_dir, bench.name, [split]):
        with tarfile.open(shard.path) as tar:
            for member in tar:
                if not member.name.endswith("." + schema.META_EXT):
                    continue
                try:
                    meta = json.load(tar.extractfile(member))
                    label = label_from_json(meta["label"])
                    name = str(meta["name"])
                except (KeyError, ValueError, TypeError, AttributeError) as err:
                    rejected_labels[member.name] = f"unreadable metadata: {err}"
                    continue
                in_shards.append(name)
                if label is not None:
                    labels[name] = label
    rejected = _manifest_rejected(Path(shard_dir), bench.name, split)
    for name, (label, _reason) in rejected.items():
        if label is not None and name not in labels:
            labels[name] = label
    return GoldSet(LabelTable(labels, rejected_labels), in_shards,
                   {name: reason for name, (_label, reason) in rejected.items()})


def _manifest_rejected(shard_dir: Path, benchmark: str, split: str) -> dict[str, tuple[Label | None, str]]:
    path = shard_dir / schema.MANIFEST_FILE
    if not path.is_file():
        return {}
    import pyarrow.parquet as pq

    out = {}
    for row in pq.read_table(path).to_pylist():
        if row["benchmark"] != benchmark or row["split"] != split or row["status"] == "accepted":
            continue
        try:
            label = label_from_json(json.loads(row["label"])) if row.get("label") else None
        except (ValueError, TypeError):
            label = None
        out[str(row["name"])] = (label, str(row.get("reason") or ""))
    return out


# ----------------------------------------------------------------------------- predicting


@dataclass(frozen=True)
class Candidate:
    """A closed-set answer for rank mode: its text (the trained target) and what it predicts."""

    text: str
    prediction: Prediction


def candidate_answers(bench: Benchmark) -> list[Candidate] | None:
    """The candidate answers of a closed-set benchmark (None for open-vocabulary ones).

    Each is the benchmark's own target sentence, so rank mode compares exactly the answers the
    model was trained to give.
    """
    if bench.group == "discrete":
        return [Candidate(bench.target(Label(emo=c)), Prediction(text=bench.target(Label(emo=c)), items=(c,)))
                for c in bench.classes]
    if bench.group == "sentiment":
        out = []
        for word, val in (("positive", 1.0), ("negative", -1.0), ("neutral", 0.0)):
            text = bench.target(Label(val=val))
            out.append(Candidate(text, Prediction(text=text, sentiment=word)))
        return out
    return None


def candidate_token_ids(tokenizer, candidates: Sequence[Candidate]) -> list[list[int]]:
    """Token ids of each candidate answer followed by ``<|im_end|>`` (the answer turn as trained)."""
    return [list(tokenizer(c.text, add_special_tokens=False)["input_ids"]) + [IM_END_ID] for c in candidates]


def decode_answers(tokenizer, tokens: torch.Tensor) -> list[str]:
    """Generated ids (B, T) -> answer texts, cut at ``<|im_end|>`` / padding."""
    out = []
    for row in tokens.tolist():
        for stop in (IM_END_ID, PAD_TOKEN_ID):
            if stop in row:
                row = row[:row.index(stop)]
        out.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return out


@dataclass
class SampleResult:
    """One sample's prediction in one run, as stored in the results JSON."""

    name: str
    prediction: Prediction
    candidate_logprobs: list[float] | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, **self.prediction.to_json()}
        if self.candidate_logprobs is not None:
            out["candidate_logprobs"] = self.candidate_logprobs
        return out


def predict_batch(model, batch: dict, *, mode: str, kappa: float, tokenizer, candidates: list[Candidate] | None,
                  candidate_ids: list[list[int]] | None, max_new_tokens: int) -> list[SampleResult]:
    """Predictions of one batch at one keep ratio (``rank`` needs candidates; otherwise generates)."""
    names = [str(m["name"]) for m in batch["meta"]]
    if mode == "rank" and candidates:
        scores = model.score_candidates(batch, candidate_ids, kappa=kappa).float().cpu()  # (B, C)
        best = scores.argmax(1).tolist()
        return [SampleResult(n, candidates[c].prediction, [round(float(v), 4) for v in scores[i]])
                for i, (n, c) in enumerate(zip(names, best))]
    tokens = model.generate(batch, max_new_tokens=max_new_tokens, kappa=kappa)
    return [SampleResult(n, Prediction(text=t)) for n, t in zip(names, decode_answers(tokenizer, tokens.cpu()))]


# ----------------------------------------------------------------------------- imagination fidelity (Table 8)


class FidelitySums:
    """Sums of per-sample cosine / MSE per (stream, predictor) and step, gatherable across ranks."""

    def __init__(self) -> None:
        self.cos: dict[tuple[str, str], np.ndarray] = {}
        self.mse: dict[tuple[str, str], np.ndarray] = {}
        self.n: dict[tuple[str, str], int] = defaultdict(int)

    def add(self, stream: str, predictor: str, cos: torch.Tensor, mse: torch.Tensor) -> None:
        """cos, mse: (n, S) per sample and step (only samples with a future)."""
        key = (stream, predictor)
        c, m = cos.double().sum(0).cpu().numpy(), mse.double().sum(0).cpu().numpy()
        self.cos[key] = self.cos[key] + c if key in self.cos else c
        self.mse[key] = self.mse[key] + m if key in self.mse else m
        self.n[key] += int(cos.shape[0])

    def merge(self, other: "FidelitySums") -> None:
        for key in other.cos:
            self.add_sums(key, other.cos[key], other.mse[key], other.n[key])

    def add_sums(self, key, cos: np.ndarray, mse: np.ndarray, n: int) -> None:
        self.cos[key] = self.cos[key] + cos if key in self.cos else cos.copy()
        self.mse[key] = self.mse[key] + mse if key in self.mse else mse.copy()
        self.n[key] += n

    def rows(self, model: str, modality: str, kappa: float) -> list[ImaginationRow]:
        out = []
        for stream in STREAMS:
            for predictor in PREDICTORS:
                key = (stream, predictor)
                if self.n.get(key, 0) > 0:
                    n = self.n[key]
                    out.append(ImaginationRow(model, modality, kappa, stream, predictor,
                                              (self.cos[key] / n).tolist(), (self.mse[key] / n).tolist(), n))
        return out


def _pool_future(z: torch.Tensor, split: torch.Tensor, length: torch.Tensor, n_bins: int) -> torch.Tensor:
    """AdaptiveAvgPool1D of the real future Z[T_p:L] to N_s tokens, per sample: (B, N_s, d_w) (Eq. 5's target)."""
    from affectverse_ds.model.ewm import adaptive_pool_matrix

    fut = (length - split).clamp(min=0)
    weights = adaptive_pool_matrix(split, fut, n_bins, z.shape[1]).to(z.dtype)  # (B, N_s, T)
    return weights @ z


def step_fidelity(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample and step: cosine (per token, averaged over the N_s tokens) and MSE, exactly as the
    imagination loss measures them (Eq. 5, ``EmotionWorldModule.imagination_loss``).

    Args:
        pred: (B, S, N_s, d_w) predicted future tokens. target: (B, N_s, d_w) pooled real future.
    Returns:
        cos, mse: (B, S).
    """
    from affectverse_ds.model.ewm import EmotionWorldModule

    _, mse, cos = EmotionWorldModule.imagination_loss(pred, target)
    return cos, mse


def fidelity_from_trace(trace, sums: FidelitySums) -> None:
    """Add one batch's Table 8 statistics: the EWM's imagined tokens and the two baselines, against the
    pooled real future of each stream, for every sample whose stream has a future.

    Baselines, on the same targets: ``repeat_last`` predicts the last observed token Z[T_p - 1] at every
    future position; ``mean_observed`` the mean of the observed tokens Z[:T_p]. Both are repeated over
    the S steps (they have no notion of step).

    Args:
        trace: see :func:`imagination_trace` (``z``, ``lengths``, ``split``, ``use``, ``imagined`` per stream).
        sums: accumulator.
    """
    for m, stream in enumerate(STREAMS):
        z, length, split = trace.z[m].float(), trace.lengths[m].long(), trace.split[m].long()
        ys = trace.imagined[m].float()  # (B, S, N_s, d_w)
        valid = trace.use[m].bool() & (length - split > 0)
        if not bool(valid.any()):
            continue
        z, length, split, ys = z[valid], length[valid], split[valid], ys[valid]
        n_steps, n_future = ys.shape[1], ys.shape[2]
        target = _pool_future(z, split, length, n_future)  # (n, N_s, d_w)
        rows = torch.arange(z.shape[0], device=z.device)
        last = z[rows, (split - 1).clamp(min=0)]  # (n, d_w)
        past = (torch.arange(z.shape[1], device=z.device)[None] < split[:, None]).to(z.dtype)  # (n, T)
        mean = (past[..., None] * z).sum(1) / past.sum(1, keepdim=True).clamp(min=1)  # (n, d_w)
        for predictor, pred in (("ewm", ys),
                                ("repeat_last", last[:, None, None].expand(-1, n_steps, n_future, -1)),
                                ("mean_observed", mean[:, None, None].expand(-1, n_steps, n_future, -1))):
            cos, mse = step_fidelity(pred, target)
            sums.add(stream, predictor, cos, mse)


def imagination_trace(model, batch: dict, kappa: float):
    """The EWM's view of a fully observed batch split at ``kappa``, or None when the model has no such API.

    Expected from ``AffectVerseModel.imagination_trace(batch, kappa)`` (eval mode, no modality dropout,
    full observation so the future exists): an object with per stream [video, audio]
    ``z`` (B, T, d_w) bottleneck tokens, ``lengths`` (B,), ``split`` (B,) = T_p, ``use`` (B,) bool and
    ``imagined`` (B, S, N_s, d_w) rolled out from the past only.
    """
    probe = getattr(model, "imagination_trace", None)
    if probe is None or getattr(model, "ewm", None) is None:
        return None
    return probe(batch, kappa)


def probe_kappas(keep_ratios: Sequence[float], kappa_min: float) -> list[float]:
    """Split points for Table 8: the sweep's keep ratios below 1, else the middle of the training range
    U[kappa_min, 1) (at kappa = 1 there is no future to compare with)."""
    below = [k for k in keep_ratios if k < 1.0]
    return below or [round((kappa_min + 1.0) / 2.0, 6)]


class MamaSums:
    """Running sum of MAMA belief->memory attention over dual-modality samples (Fig. 3)."""

    def __init__(self) -> None:
        self.total: np.ndarray | None = None
        self.n = 0

    def add(self, weights: torch.Tensor, n_belief: torch.Tensor, limit: int) -> None:
        """weights (B, N_q, N_M); only samples with the full dual belief set (both modalities) count."""
        full = n_belief == n_belief.max()
        if self.n >= limit or weights is None or not bool(full.any()) or int(n_belief.max()) == 0:
            return
        w = weights[full.to(weights.device)][: limit - self.n].double().cpu().numpy()
        self.total = w.sum(0) if self.total is None else self.total + w.sum(0)
        self.n += w.shape[0]

    def merge(self, other: "MamaSums") -> None:
        if other.total is not None:
            self.total = other.total.copy() if self.total is None else self.total + other.total
            self.n += other.n

    def mean(self) -> np.ndarray | None:
        return self.total / self.n if self.n else None


def mama_weights(model, batch: dict):
    """(weights (B, N_q, N_M), n_belief (B,)) of the inference preparation at kappa = 1, or None."""
    if getattr(model, "ewm", None) is None:
        return None
    prep = model.prepare_inputs(batch, kappa=1.0, for_generation=True)
    if prep.ewm is None or prep.ewm.mama_weights is None:
        return None
    return prep.ewm.mama_weights, prep.ewm.n_belief.cpu()


# ----------------------------------------------------------------------------- one rank's work


@dataclass
class EvalPlan:
    """What to evaluate.

    Args:
        checkpoints: checkpoint folders (``step_NNNNNN/`` or ``export/``); the last is the fixed one.
        benchmarks: registry names (default: ``data.eval_benchmarks``).
        modalities: settings (``avt``, ``at``, ``vt``; default ``eval.modalities``).
        keep_ratios: kappa values (default ``eval.keep_ratios``).
        mode: ``generate`` or ``rank`` (default ``eval.mode``).
        out_dir: where results go.
        max_batches: evaluate at most this many batches per benchmark and setting on each rank
            (smoke runs, benchmarks); the samples left out count as not evaluated.
        probe: compute Table 8 statistics and MAMA heatmaps (extra forward passes).
        write: write results (rank 0); False for timing runs.
    """

    checkpoints: list[str]
    benchmarks: list[str] | None = None
    modalities: list[str] | None = None
    keep_ratios: list[float] | None = None
    mode: str | None = None
    out_dir: str = "results"
    max_batches: int | None = None
    probe: bool = True
    write: bool = True


@dataclass
class RunResult:
    """One (checkpoint, benchmark, setting, kappa) run of one rank, or gathered."""

    model: str
    benchmark: str
    modality: str
    keep_ratio: float
    mode_used: str
    samples: list[SampleResult] = field(default_factory=list)
    seconds: float = 0.0  # in the model calls only
    loader_skipped: int = 0  # samples the loader could not decode (its own count, beside ours from the names)


@dataclass
class RankOutput:
    """Everything one rank produced, sent to rank 0."""

    runs: list[RunResult] = field(default_factory=list)
    fidelity: dict[tuple[str, str, str, float], FidelitySums] = field(default_factory=dict)
    mama: dict[tuple[str, str], MamaSums] = field(default_factory=dict)


@dataclass
class _Loaded:
    """A loaded checkpoint and what encoding and decoding need."""

    label: str
    model: Any
    cfg: AffectVerseConfig
    tokenizer: Any
    extractor: Any  # Whisper feature extractor


def _run_setting(m: _Loaded, bench: Benchmark, setting: str, plan: EvalPlan, kappas: list[float], mode: str,
                 info: dist.DistInfo, device, out: RankOutput) -> None:
    """One rank's share of one benchmark under one setting, at every keep ratio."""
    from affectverse_ds.data.loader import LoaderStats, build_eval_loader

    model, mcfg, tokenizer, label = m.model, m.cfg, m.tokenizer, m.label
    loader = build_eval_loader(mcfg, tokenizer, bench.name, rank=info.rank, world=info.world_size,
                               setting=setting, extractor=m.extractor)
    candidates = candidate_answers(bench) if mode == "rank" else None
    cand_ids = candidate_token_ids(tokenizer, candidates) if candidates else None
    mode_used = "rank" if candidates else "generate"
    runs = {k: RunResult(label, bench.name, setting, k, mode_used) for k in kappas}
    probes = probe_kappas(kappas, mcfg.ewm.kappa_min) if plan.probe else []
    stats = LoaderStats()
    for i, batch in enumerate(loader):
        if plan.max_batches is not None and i >= plan.max_batches:
            break
        stats.update(batch)
        batch = to_device(batch, device)
        for k in kappas:
            start = time.perf_counter()
            runs[k].samples += predict_batch(model, batch, mode=mode, kappa=k, tokenizer=tokenizer,
                                             candidates=candidates, candidate_ids=cand_ids,
                                             max_new_tokens=mcfg.eval.max_new_tokens)
            runs[k].seconds += time.perf_counter() - start
        for k in probes:
            trace = imagination_trace(model, batch, k)
            if trace is not None:
                fidelity_from_trace(trace, out.fidelity.setdefault((label, bench.name, setting, k), FidelitySums()))
        if plan.probe and setting == "avt":
            sums = out.mama.setdefault((label, bench.name), MamaSums())
            if sums.n < MAMA_SAMPLES:
                got = mama_weights(model, batch)
                if got is not None:
                    sums.add(got[0], got[1], MAMA_SAMPLES)
    for run in runs.values():
        run.loader_skipped = stats.skipped
    out.runs += list(runs.values())


def run_rank(cfg: AffectVerseConfig, plan: EvalPlan, info: dist.DistInfo, device) -> RankOutput:
    """This rank's predictions for every checkpoint, benchmark, setting and keep ratio."""
    from affectverse_ds.model.backbone import load_tokenizer
    from transformers import WhisperFeatureExtractor

    out = RankOutput()
    tokenizer = load_tokenizer(cfg.backbone.path)
    extractor = WhisperFeatureExtractor.from_pretrained(cfg.backbone.path)
    benchmarks = plan.benchmarks or cfg.data.eval_benchmarks
    settings = plan.modalities or cfg.eval.modalities
    kappas = plan.keep_ratios or cfg.eval.keep_ratios
    mode = plan.mode or cfg.eval.mode
    for path in plan.checkpoints:
        ref = resolve_checkpoint(path)
        dist.print0(f"[eval] {ref.label}: loading {ref.export_dir}", info=info)
        model, mcfg = load_checkpoint_model(ref, cfg, device)
        loaded = _Loaded(ref.label, model, mcfg, tokenizer, extractor)
        for name in benchmarks:
            for setting in settings:
                start = time.perf_counter()
                _run_setting(loaded, get_benchmark(name), setting, plan, kappas, mode, info, device, out)
                dist.print0(f"[eval] {ref.label} {name} {setting}: {time.perf_counter() - start:.1f} s", info=info)
        del model, loaded
    return out


def merge_outputs(parts: Iterable[RankOutput]) -> RankOutput:
    """Rank outputs -> one (samples concatenated per run, sums added), rank order kept."""
    merged = RankOutput()
    index: dict[tuple, RunResult] = {}
    for part in parts:
        for run in part.runs:
            key = (run.model, run.benchmark, run.modality, run.keep_ratio)
            if key not in index:
                index[key] = RunResult(run.model, run.benchmark, run.modality, run.keep_ratio, run.mode_used)
                merged.runs.append(index[key])
            index[key].samples += run.samples
            index[key].seconds = max(index[key].seconds, run.seconds)  # ranks run side by side
            index[key].loader_skipped += run.loader_skipped
        for key, sums in part.fidelity.items():
            merged.fidelity.setdefault(key, FidelitySums()).merge(sums)
        for key, sums in part.mama.items():
            merged.mama.setdefault(key, MamaSums()).merge(sums)
    return merged


# ----------------------------------------------------------------------------- scoring and writing (rank 0)


@dataclass
class ScoredRun:
    """A gathered run with its score report and sample counts."""

    run: RunResult
    report: ScoreReport
    counts: dict[str, Any]
    predictions_file: str


def score_run(run: RunResult, bench: Benchmark, gold: GoldSet, ctx: ScoringContext, pred_path: Path) -> ScoredRun:
    """Score one gathered run: samples not evaluated (unreadable media, builder rejects) score as empty."""
    preds = PredictionSet(pred_path)
    for s in run.samples:
        preds.add(s.name, s.prediction)
    rep = score_predictions(bench, gold.labels, preds, ctx)
    evaluated = set(preds.entries)
    media_failed = sorted(set(gold.in_shards) - evaluated)
    counts = {
        "samples": len(gold.labels.labels), "in_shards": len(gold.in_shards), "evaluated": len(evaluated),
        "media_failed": len(media_failed), "media_failed_names": media_failed,
        "loader_skipped": run.loader_skipped,
        "build_rejected": len(gold.build_rejected), "build_rejected_reasons": dict(gold.build_rejected),
        # rejected without a label in the manifest (e.g. the scanner found no media): cannot be scored
        "build_rejected_unlabelled": sorted(set(gold.build_rejected) - set(gold.labels.labels)),
        "unreadable_labels": dict(gold.labels.rejected),
        "scored": rep.scored, "skipped": rep.skipped, "missing": rep.missing,
    }
    return ScoredRun(run, rep, counts, str(pred_path))


def _kappa_tag(k: float) -> str:
    return f"k{k:g}".replace(".", "p")


def score_all(merged: RankOutput, cfg: AffectVerseConfig, out_dir: Path) -> dict[str, list[ScoredRun]]:
    """Score every gathered run; writes each run's predictions (our format) under ``out_dir/predictions``."""
    ctx = ScoringContext(load_wheels(wheel_dir_for(cfg.eval)))
    golds: dict[str, GoldSet] = {}
    scored: dict[str, list[ScoredRun]] = defaultdict(list)
    for run in merged.runs:
        bench = get_benchmark(run.benchmark)
        if run.benchmark not in golds:
            golds[run.benchmark] = read_gold(cfg.data.shard_dir, bench)
        path = out_dir / "predictions" / run.benchmark / f"{run.model}_{run.modality}_{_kappa_tag(run.keep_ratio)}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_predictions(path, [(s.name, s.prediction) for s in run.samples])
        scored[run.benchmark].append(score_run(run, bench, golds[run.benchmark], ctx, path))
    return scored


def run_scores(scored: dict[str, list[ScoredRun]]) -> list[RunScore]:
    """The main score of every run, for the tables."""
    out = []
    for name, runs in scored.items():
        group = get_benchmark(name).group
        for s in runs:
            out.append(RunScore(s.run.model, s.run.modality, s.run.keep_ratio, name, s.report.main,
                                s.report.metric, group))
    return out


def write_benchmark_json(path: Path, name: str, runs: list[ScoredRun], fixed: str) -> Path:
    """``<out>/<benchmark>.json``: every run's score report, counts and predictions, and the best-per-benchmark pick."""
    bench = get_benchmark(name)
    best: dict[str, dict[str, Any]] = {}
    for s in runs:
        key = f"{s.run.modality}@{s.run.keep_ratio:g}"
        score = s.report.main
        if not math.isnan(score) and (key not in best or score > best[key]["score"]):
            best[key] = {"model": s.run.model, "score": score}
    data = {
        "benchmark": name, "group": bench.group, "test_split": bench.test_split,
        "metric": runs[0].report.metric if runs else None, "fixed_checkpoint": fixed,
        "best_per_benchmark": best,
        "runs": [{
            "model": s.run.model, "modality": s.run.modality, "keep_ratio": s.run.keep_ratio,
            "mode": s.run.mode_used, "score": None if math.isnan(s.report.main) else s.report.main,
            "report": s.report.to_json(), "counts": s.counts, "seconds": round(s.run.seconds, 3),
            "samples_per_s": round(len(s.run.samples) / s.run.seconds, 4) if s.run.seconds > 0 else None,
            "predictions_file": s.predictions_file,
            "predictions": [r.to_json() for r in s.run.samples],
        } for s in runs],
    }
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    return path


@dataclass
class EvalOutcome:
    """What rank 0 returns: the gathered runs (with timings), and when written, scores, Table 8 rows and files."""

    runs: list[RunResult]
    fixed: str
    scores: list[RunScore] = field(default_factory=list)
    imagination: list[ImaginationRow] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    scored: dict[str, list[ScoredRun]] = field(default_factory=dict)


def write_results(merged: RankOutput, cfg: AffectVerseConfig, plan: EvalPlan, fixed: str) -> EvalOutcome:
    """Score, then write the JSON files, ``summary.md`` and the plots (rank 0)."""
    out_dir = Path(plan.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scored = score_all(merged, cfg, out_dir)
    scores = run_scores(scored)
    files = [write_benchmark_json(out_dir / f"{name}.json", name, runs, fixed) for name, runs in scored.items()]
    imagination = [row for (model, _b, setting, k), sums in _fidelity_by_setting(merged).items()
                   for row in sums.rows(model, setting, k)]
    plots = out_dir / PLOTS_DIR
    figures: list[str] = []
    kappas = sorted({s.keep_ratio for s in scores}, reverse=True)
    if len(kappas) > 1:
        files.append(report.plot_keep_ratio(scores, fixed, plots / "keep_ratio.png"))
        figures.append(f"![score vs keep ratio]({PLOTS_DIR}/keep_ratio.png)")
    if any(r.n > 0 for r in imagination):
        files.append(report.plot_imagination(imagination, plots / "imagination.png"))
        figures.append(f"![imagination fidelity vs step]({PLOTS_DIR}/imagination.png)")
    for (model, bench), sums in merged.mama.items():
        mean = sums.mean()
        if mean is None:
            continue
        path = plots / f"mama_{model}_{bench}.png"
        n_steps = cfg_steps(cfg, plan, model)
        files.append(report.plot_mama(mean, n_steps, path, title=f"MAMA attention, {model}, {report.display(bench)} "
                                                                   f"(mean of {sums.n} A+V+T samples)"))
        figures.append(f"![MAMA {model} {bench}]({PLOTS_DIR}/{path.name})")
    files.append(write_summary(out_dir, scores, imagination, scored, fixed, figures))
    return EvalOutcome(merged.runs, fixed, scores, imagination, files, scored)


def cfg_steps(cfg: AffectVerseConfig, plan: EvalPlan, model_label: str) -> int:
    """Rollout steps S of a checkpoint (from its own config)."""
    for path in plan.checkpoints:
        ref = resolve_checkpoint(path)
        if ref.label == model_label:
            return model_config(cfg, ref.export_dir).ewm.rollout_steps
    return cfg.ewm.rollout_steps


def _fidelity_by_setting(merged: RankOutput) -> dict[tuple[str, str, str, float], FidelitySums]:
    """Table 8 pools the benchmarks: (model, '*', setting, kappa) -> sums over every benchmark."""
    pooled: dict[tuple[str, str, str, float], FidelitySums] = {}
    for (model, _bench, setting, k), sums in merged.fidelity.items():
        pooled.setdefault((model, "*", setting, k), FidelitySums()).merge(sums)
    return pooled


def write_summary(out_dir: Path, scores: list[RunScore], imagination: list[ImaginationRow],
                  scored: dict[str, list[ScoredRun]], fixed: str, figures: list[str]) -> Path:
    """``summary.md``: Table 1 (kappa = 1, or the largest evaluated), Table 2, Table 8, counts and figures."""
    top = max(s.keep_ratio for s in scores) if scores else 1.0
    sections = [("Table 1: main results (MER-UniBench main scores, %)",
                 (f"Keep ratio {top:g}. " if top != 1.0 else "")
                 + "Discrete: HIT rate; sentiment: weighted F1 on non-zero GT; OV-MERD+: set F "
                 "(EVALUATION.md).\n\n" + report.format_table1(report.table1_rows(scores, fixed, top)))]
    if len({s.model for s in scores}) > 1:
        sections.append((f"Every checkpoint (keep ratio {top:g})",
                         report.format_table1(report.model_rows(scores, top))))
    sections.append((f"Secondary and conventional metrics ({fixed}, keep ratio {top:g})",
                     _metrics_table(scored, fixed, top)))
    if len({s.keep_ratio for s in scores}) > 1:
        sections.append((f"Table 2: keep-ratio sweep ({fixed})", report.format_table2(scores, fixed)))
    if imagination:
        body = report.format_table8(imagination)
    else:
        body = ("Not available: the model exposes no `imagination_trace(batch, kappa)` (or has no EWM), "
                "so per-step imagination cosine/MSE could not be measured.")
    sections.append(("Table 8: imagination fidelity per rollout step (test split, pooled over benchmarks)", body))
    counts = {}
    for name in report.order_benchmarks(scored):
        for s in scored[name]:
            if s.run.model == fixed and s.run.keep_ratio == top:
                counts[f"{name} / {s.run.modality}"] = s.counts
    failed = [f"- {label}: {', '.join(c['media_failed_names'][:20])}" + (" ..." if c["media_failed"] > 20 else "")
              for label, c in counts.items() if c["media_failed"]]
    rejected = [f"- {label}: " + "; ".join(f"{n} ({r})" for n, r in list(c["build_rejected_reasons"].items())[:10])
                for label, c in counts.items() if c["build_rejected"]]
    body = report.format_counts(counts)
    if failed:
        body += "\n\nSamples whose media could not be read (scored as empty predictions):\n\n" + "\n".join(failed)
    if rejected:
        body += "\n\nTest items the shard builder rejected (scored as empty predictions):\n\n" + "\n".join(rejected)
    sections.append((f"Sample counts ({fixed}, keep ratio {top:g})", body))
    modes = sorted({(s.run.mode_used) for runs in scored.values() for s in runs})
    speed = [[s.run.model, report.display(s.run.benchmark), s.run.modality, f"{s.run.keep_ratio:g}", s.run.mode_used,
              str(len(s.run.samples)), f"{len(s.run.samples) / s.run.seconds:.2f}" if s.run.seconds > 0 else "-"]
             for name in report.order_benchmarks(scored) for s in scored[name]]
    sections.append((f"Runs (modes: {', '.join(modes)})",
                     report.markdown_table(["Model", "Benchmark", "Setting", "\u03ba", "Mode", "Samples", "Samples/s"],
                                           speed)))
    if figures:
        sections.append(("Figures", "\n\n".join(figures)))
    return report.write_summary(out_dir / "summary.md", sections)


def _metrics_table(scored: dict[str, list[ScoredRun]], model: str, keep_ratio: float) -> str:
    """Main score with the protocol's secondary scores and the conventional metrics, per benchmark x setting."""
    rows = []
    for name in report.order_benchmarks(scored):
        for s in scored[name]:
            if s.run.model != model or s.run.keep_ratio != keep_ratio:
                continue
            r = s.report
            rows.append([report.display(name), s.run.modality, f"{r.metric} {report.fmt(r.main)}",
                         " ".join(f"{k} {report.fmt(v)}" for k, v in r.secondary.items()) or "-",
                         " ".join(f"{k} {report.fmt(v, 3 if k in ('mae', 'corr') else 2)}"
                                  for k, v in r.conventional.items()) or "-"])
    return report.markdown_table(["Benchmark", "Setting", "Main", "Secondary", "Conventional"], rows)


# ----------------------------------------------------------------------------- entry


def evaluate(cfg: AffectVerseConfig, plan: EvalPlan, info: dist.DistInfo | None = None,
             device: torch.device | str | None = None) -> EvalOutcome | None:
    """Run the plan on this rank, gather on rank 0 and (there) score and write everything.

    Args:
        cfg: the user's config (data, eval, backbone location); each checkpoint brings its model sections.
        plan: checkpoints, benchmarks, settings, keep ratios, mode, output folder.
        info: rank and world size (single process when None); the process group must already be up
            when ``world_size > 1``.
        device: where the model runs (``distributed.pick_device`` when None).

    Returns:
        The :class:`EvalOutcome` on rank 0 (with ``plan.write``), None elsewhere.
    """
    if not plan.checkpoints:
        raise ValueError("no checkpoint to evaluate")
    info = info or dist.DistInfo(0, 1, 0, "127.0.0.1", 0, "single")
    device = device or dist.pick_device(info)
    refs = [resolve_checkpoint(p) for p in plan.checkpoints]  # fail fast, before any model is built
    labels = [r.label for r in refs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"checkpoint labels must differ: {labels}")
    mine = run_rank(cfg, plan, info, device)
    parts = dist.all_gather_object(mine)
    if not info.is_main:
        return None
    merged = merge_outputs(parts)
    if not plan.write:
        return EvalOutcome(merged.runs, labels[-1])
    return write_results(merged, cfg, plan, fixed=labels[-1])


def parse_list(text: str | None, cast=str) -> list | None:
    """``"a,b,c"`` -> [cast(a), cast(b), cast(c)] (None stays None)."""
    if text is None:
        return None
    return [cast(x.strip()) for x in text.split(",") if x.strip()]


def run_evaluation(config: str | Path, checkpoints: Sequence[str], *, overrides: Sequence[str] = (),
                   benchmarks: Sequence[str] | None = None, modalities: Sequence[str] | None = None,
                   keep_ratios: Sequence[float] | None = None, mode: str | None = None,
                   out_dir: str = "results", max_batches: int | None = None, probe: bool = True) -> EvalOutcome | None:
    """What ``launch/evaluate.py`` calls: load the config, start the process group when launched on
    several ranks (torchrun / deepspeed / srun), evaluate, and return rank 0's outcome.

    Command-line settings override the config's ``eval`` section (and are validated like it).
    """
    extra = list(overrides)
    if modalities is not None:
        extra.append(f"eval.modalities=[{','.join(modalities)}]")
    if keep_ratios is not None:
        extra.append(f"eval.keep_ratios=[{','.join(str(k) for k in keep_ratios)}]")
    if mode is not None:
        extra.append(f"eval.mode={mode}")
    cfg = load_config(config, extra)
    if benchmarks:
        for name in benchmarks:
            get_benchmark(name)  # unknown names fail before any model is built
    info = dist.dist_info_from_env()
    if info.world_size > 1:
        dist.init_distributed(info)
    plan = EvalPlan(list(checkpoints), benchmarks=list(benchmarks) if benchmarks else None,
                    modalities=cfg.eval.modalities, keep_ratios=cfg.eval.keep_ratios, mode=cfg.eval.mode,
                    out_dir=out_dir, max_batches=max_batches, probe=probe)
    outcome = evaluate(cfg, plan, info)
    if outcome is not None:
        dist.print0(f"[eval] wrote {len(outcome.files)} files under {out_dir}/ "
                    f"(summary: {Path(out_dir) / 'summary.md'})", info=info)
    return outcome
