"""One rank's predictions: every checkpoint x benchmark x modality setting x keep ratio, in ``generate``
or ``rank`` mode, with the Table 8 / MAMA probes on the same batches."""
from __future__ import annotations

import contextlib
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from transformers import WhisperFeatureExtractor

from affectverse_ds.benchmarks import Benchmark, Label, get_benchmark
from affectverse_ds.config import AffectVerseConfig
from affectverse_ds.data.batch import IM_END_ID, PAD_TOKEN_ID, to_device
from affectverse_ds.data.loader import LoaderStats, build_eval_loader
from affectverse_ds.eval.predictions import Prediction
from affectverse_ds.eval.probes import (MAMA_SAMPLES, FidelitySums, MamaSums, fidelity_from_trace, imagination_trace,
                                        mama_weights, probe_kappas)
from affectverse_ds.model.backbone import load_tokenizer
from affectverse_ds import distributed as dist
from affectverse_ds.model.export import load_checkpoint_model, resolve_checkpoint


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

    def __post_init__(self) -> None:
        # 0 or a negative count evaluated nothing and reported every clip as unreadable media
        if self.max_batches is not None and self.max_batches < 1:
            raise ValueError(f"max_batches must be a positive number of batches, not {self.max_batches}")


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
    cut_short: bool = False  # stopped at plan.max_batches: samples not evaluated were left out, not unreadable


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


def belief_rng(mcfg: AffectVerseConfig, *key) -> contextlib.AbstractContextManager:
    """Seed the "random" belief ablation (``ewm.belief=random``) for one model call, so evaluation is reproducible.

    Its beliefs are drawn from torch's CPU generator (``AffectVerseModel.generate`` / ``score_candidates`` take
    no generator); that generator is forked, seeded from ``train.seed`` and ``key`` (benchmark, setting, rank,
    batch, kappa), and restored afterwards, so the caller's RNG stream is untouched. Other models: no-op.
    """
    if not (mcfg.ewm.enabled and mcfg.ewm.belief == "random"):
        return contextlib.nullcontext()
    seed = zlib.crc32(repr((mcfg.train.seed, *key)).encode())  # stable across processes, unlike hash()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.random.fork_rng(devices=[]))
    torch.manual_seed(seed)
    return stack


def _run_setting(m: _Loaded, bench: Benchmark, setting: str, plan: EvalPlan, kappas: list[float], mode: str,
                 info: dist.DistInfo, device, out: RankOutput) -> None:
    """One rank's share of one benchmark under one setting, at every keep ratio."""
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
            for run in runs.values():
                run.cut_short = True
            break
        stats.update(batch)
        batch = to_device(batch, device)
        for k in kappas:
            start = time.perf_counter()
            with belief_rng(mcfg, bench.name, setting, info.rank, i, k):
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
                    sums.add(*got, limit=MAMA_SAMPLES)
    for run in runs.values():
        run.loader_skipped = stats.skipped
    out.runs += list(runs.values())


def run_rank(cfg: AffectVerseConfig, plan: EvalPlan, info: dist.DistInfo, device) -> RankOutput:
    """This rank's predictions for every checkpoint, benchmark, setting and keep ratio."""
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
