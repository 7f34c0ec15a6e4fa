"""Scoring and writing on rank 0: ``<out>/<benchmark>.json``, ``predictions/*.jsonl``, ``summary.md`` and plots."""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affectverse_ds.benchmarks import Benchmark, get_benchmark
from affectverse_ds.config import AffectVerseConfig
from affectverse_ds.eval import plots, report
from affectverse_ds.eval.gold import GoldSet, read_gold
from affectverse_ds.eval.inference import EvalPlan, RankOutput, RunResult
from affectverse_ds.eval.intervals import score_interval
from affectverse_ds.eval.merge import fidelity_by_setting
from affectverse_ds.eval.predictions import PredictionSet, write_predictions
from affectverse_ds.eval.report import ImaginationRow, RunScore
from affectverse_ds.eval.unibench import ScoreReport, ScoringContext, score_predictions
from affectverse_ds.eval.wheel import load_wheels, wheel_dir_for
from affectverse_ds.model.export import model_config, resolve_checkpoint

PLOTS_DIR = "plots"


@dataclass
class ScoredRun:
    """A gathered run with its score report and sample counts."""

    run: RunResult
    report: ScoreReport
    counts: dict[str, Any]
    predictions_file: str
    interval: tuple[float, float] = (math.nan, math.nan)  # 95 % bootstrap interval of the main score


def score_run(run: RunResult, bench: Benchmark, gold: GoldSet, ctx: ScoringContext, pred_path: Path) -> ScoredRun:
    """Score one gathered run: samples not evaluated (unreadable media, builder rejects) score as empty."""
    preds = PredictionSet(pred_path)
    for s in run.samples:
        preds.add(s.name, s.prediction)
    rep = score_predictions(bench, gold.labels, preds, ctx)
    evaluated = set(preds.entries)
    not_evaluated = sorted(set(gold.in_shards) - evaluated)
    # a run cut short by --max-batches left samples out: they are not media failures (those it met were skipped
    # by the loader, loader_skipped)
    media_failed, left_out = ([], not_evaluated) if run.cut_short else (not_evaluated, [])
    counts = {
        "samples": len(gold.labels.labels), "in_shards": len(gold.in_shards), "evaluated": len(evaluated),
        "media_failed": len(media_failed), "media_failed_names": media_failed,
        "left_out_by_max_batches": len(left_out),
        "loader_skipped": run.loader_skipped,
        "build_rejected": len(gold.build_rejected), "build_rejected_reasons": dict(gold.build_rejected),
        # rejected without a label in the manifest (e.g. the scanner found no media): cannot be scored
        "build_rejected_unlabelled": sorted(set(gold.build_rejected) - set(gold.labels.labels)),
        "unreadable_labels": dict(gold.labels.rejected),
        "scored": rep.scored, "skipped": rep.skipped, "missing": rep.missing,
    }
    return ScoredRun(run, rep, counts, str(pred_path), score_interval(bench, gold.labels, preds, ctx))


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
                                s.report.metric, group, *s.interval))
    return out


def write_benchmark_json(path: Path, name: str, runs: list[ScoredRun], fixed: str,
                         unverified: dict[str, str] | None = None) -> Path:
    """``<out>/<benchmark>.json``: every run's score report, counts and predictions, the best-per-benchmark pick,
    and the checkpoints evaluated unverified (label -> why: a step folder without COMPLETE)."""
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
        "best_per_benchmark": best, "unverified_checkpoints": dict(unverified or {}),
        "runs": [{
            "model": s.run.model, "modality": s.run.modality, "keep_ratio": s.run.keep_ratio,
            "mode": s.run.mode_used, "score": None if math.isnan(s.report.main) else s.report.main,
            "interval_95": [None if math.isnan(v) else round(v, 4) for v in s.interval],  # bootstrap over clips
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
    unverified = {ref.label: ref.unverified for ref in map(resolve_checkpoint, plan.checkpoints) if ref.unverified}
    files = [write_benchmark_json(out_dir / f"{name}.json", name, runs, fixed, unverified)
             for name, runs in scored.items()]
    imagination = [row for (model, _b, setting, k), sums in fidelity_by_setting(merged).items()
                   for row in sums.rows(model, setting, k)]
    plot_dir = out_dir / PLOTS_DIR
    figures: list[str] = []
    kappas = sorted({s.keep_ratio for s in scores}, reverse=True)
    if len(kappas) > 1:
        files.append(plots.plot_keep_ratio(scores, fixed, plot_dir / "keep_ratio.png"))
        figures.append(f"![score vs keep ratio]({PLOTS_DIR}/keep_ratio.png)")
    if any(r.n > 0 for r in imagination):
        files.append(plots.plot_imagination(imagination, plot_dir / "imagination.png"))
        figures.append(f"![imagination fidelity vs step]({PLOTS_DIR}/imagination.png)")
    for (model, bench), sums in merged.mama.items():
        mean = sums.mean()
        if mean is None:
            continue
        path = plot_dir / f"mama_{model}_{bench}.png"
        n_steps = cfg_steps(cfg, plan, model)
        files.append(plots.plot_mama(mean, n_steps, path, title=f"MAMA attention, {model}, {report.display(bench)} "
                                                                   f"(mean of {sums.n} A+V+T samples)"))
        figures.append(f"![MAMA {model} {bench}]({PLOTS_DIR}/{path.name})")
    files.append(write_summary(out_dir, scores, imagination, scored, fixed, figures, list(unverified.values())))
    return EvalOutcome(merged.runs, fixed, scores, imagination, files, scored)


def cfg_steps(cfg: AffectVerseConfig, plan: EvalPlan, model_label: str) -> int:
    """Rollout steps S of a checkpoint (from its own config)."""
    for path in plan.checkpoints:
        ref = resolve_checkpoint(path)
        if ref.label == model_label:
            return model_config(cfg, ref.export_dir).ewm.rollout_steps
    return cfg.ewm.rollout_steps

def write_summary(out_dir: Path, scores: list[RunScore], imagination: list[ImaginationRow],
                  scored: dict[str, list[ScoredRun]], fixed: str, figures: list[str],
                  warnings: list[str] = ()) -> Path:
    """``summary.md``: warnings, Table 1 (kappa = 1, or the largest evaluated), Table 2, Table 8, counts and
    figures."""
    top = max(s.keep_ratio for s in scores) if scores else 1.0
    sections = [("Warnings", "\n".join(f"- {w}" for w in warnings))] if warnings else []
    sections += [("Table 1: main results (MER-UniBench main scores, %)",
                 (f"Keep ratio {top:g}. " if top != 1.0 else "")
                 + "Discrete: HIT rate; sentiment: weighted F1 on non-zero GT; OV-MERD+: set F "
                 "(docs/evaluation.md).\n\n" + report.format_table1(report.table1_rows(scores, fixed, top)))]
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
