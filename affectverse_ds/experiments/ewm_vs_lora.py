"""EWM vs the LoRA baseline on affectdyn, over seeds, with 95% intervals (issue 15, item 6).

    python -m affectverse_ds.experiments.ewm_vs_lora --seeds 3 --variants base,precursor \\
        --out runs/ewm_evidence [--n-train 720 --n-test 72] [--keep-ratios 1.0,0.85,0.7,0.5,0.3]

For every affectdyn variant (``base``; ``precursor``: a cue before the turn predicts the future) and
seed, it trains three models with the demo recipe (``launch/configs/demo.yaml``, 2 CPU ranks, the
real DeepSpeed launcher): AffectVerse with the leak-free context (``ewm.context_source=past``), the
literal Algorithm 1 (``ewm.context_source=full``) and the LoRA baseline; evaluates them with
``launch/evaluate.py`` (A+V+T, every keep ratio, rank mode); then reports

* per keep ratio the mean HIT rate over seeds with a 95% t-interval across seeds, and a paired
  bootstrap over test clips (per clip, the hit averaged over seeds; 2000 resamples) of each model's
  score and of each model minus the baseline;
* Table 8 per keep ratio and stream: cosine and MSE of the imagined future (mean over rollout steps)
  against repeat-last and mean-of-observed, computed here per clip (``imagination_trace``), with the
  same two kinds of interval for the EWM minus each baseline.

Writes ``OUT/results.json`` and ``OUT/results.md``. Training seed = ``train.seed``; the clips of a
variant are the same for every seed (data seed ``--data-seed``), so seeds vary initialisation,
kappa draws, dropout and data order.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from affectverse_ds import demo
from affectverse_ds.eval import intervals, metrics
from affectverse_ds.eval.wheel import PACKAGED_WHEEL_DIR
from affectverse_ds.train.checkpoint import latest_checkpoint

MODELS = {"ewm_past": ["ewm.context_source=past"], "ewm_full": ["ewm.context_source=full"], "lora": demo.BASELINE}
EWM_MODELS = ("ewm_past", "ewm_full")
BOOT_RESAMPLES = 2000  # over test clips (evaluation's own intervals use eval.intervals.RESAMPLES)


# ----------------------------------------------------------------------------- statistics


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): 95% Student-t interval of the mean across seeds (NaN bounds for one value)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def bootstrap_interval(per_clip: np.ndarray, n_boot: int = BOOT_RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): 95% percentile bootstrap over clips of the mean of ``per_clip`` (one value per clip),
    by ``eval.intervals``. For a paired comparison pass the per-clip differences (both models on the same clips).
    """
    x = np.asarray(per_clip, dtype=float)
    low, high = intervals.mean_interval(x, n_boot, seed)
    return float(x.mean()), float(low), float(high)


# ----------------------------------------------------------------------------- per-clip scores


def wheel_score(hits: np.ndarray) -> float:
    """MER-UniBench HIT (%) from per-clip, per-wheel hits (clips, wheels): the mean over wheels of each
    wheel's hit rate among the clips whose label maps onto it (NaN entries: not mapped), by
    ``metrics.wheel_hit_rates``. Unlike the protocol's mean, a wheel that scores no clip of a resample is
    left out rather than making the score NaN."""
    per_wheel = metrics.wheel_hit_rates(hits.T, ~np.isnan(hits.T))  # (wheels,)
    return float(np.nanmean(per_wheel))


def bootstrap_score_interval(hits: np.ndarray, base: np.ndarray | None = None, n_boot: int = BOOT_RESAMPLES,
                             seed: int = 0) -> tuple[float, float, float]:
    """(score, low, high): 95% percentile bootstrap over clips of :func:`wheel_score`, or of the paired
    difference to ``base`` (the same resampled clips for both), by ``eval.intervals``."""

    def stat(idx):
        value = wheel_score(hits[idx])
        return value - wheel_score(base[idx]) if base is not None else value

    return intervals.bootstrap(stat, len(hits), n_boot, seed)


def clip_hits(process_dir: Path, predictions: Path, wheel_dir: Path) -> dict[str, list[float]]:
    """name -> per-wheel hit (100 / 0, NaN where the label maps onto no cluster of that wheel) of each clip."""
    from affectverse_ds.benchmarks import get_benchmark
    from affectverse_ds.benchmarks.base import LabelTable
    from affectverse_ds.eval.predictions import PredictionSet, read_predictions
    from affectverse_ds.eval.unibench import ScoringContext, score_predictions
    from affectverse_ds.eval.wheel import load_wheels

    bench = get_benchmark("affectdyn")
    gold = bench.load_labels(process_dir, bench.test_split).labels
    preds = read_predictions(predictions)
    ctx = ScoringContext(load_wheels(wheel_dir))
    out = {}
    for name, label in gold.items():
        one = PredictionSet(predictions)
        if name in preds.entries:
            one.add(name, preds.entries[name])
        out[name] = [float(v) for v in score_predictions(bench, LabelTable({name: label}, {}), one, ctx).per_wheel]
    return out


@torch.no_grad()
def clip_fidelity(checkpoint: Path, config: str, overrides: list[str], keep_ratios: list[float]) -> dict:
    """Table 8 per clip: {kappa: {stream: {predictor: {"cos": {name: v}, "mse": {name: v}}}}}.

    Predictors: ``ewm`` (imagined tokens, mean over rollout steps), ``repeat_last`` (the last observed token)
    and ``mean_observed`` (the mean of the observed tokens), each against the pooled real future, measured by
    evaluation's own probe (``eval.probes.trace_fidelity``).
    """
    from affectverse_ds.config import load_config
    from affectverse_ds.data.loader import build_eval_loader
    from affectverse_ds.model.export import load_checkpoint_model, resolve_checkpoint
    from affectverse_ds.model.backbone import load_tokenizer

    cfg = load_config(config, overrides)
    model, mcfg = load_checkpoint_model(resolve_checkpoint(checkpoint), cfg, "cpu")
    tok = load_tokenizer(mcfg.backbone.path)
    out: dict = {}
    for kappa in keep_ratios:
        if kappa >= 1.0:
            continue  # no future to imagine
        per = out.setdefault(kappa, {})
        for batch in build_eval_loader(cfg, tok, "affectdyn", rank=0, world=1, setting="avt"):
            names = [str(m["name"]) for m in batch["meta"]]
            add_clip_fidelity(per, model.imagination_trace(batch, kappa), names)
    return out


def add_clip_fidelity(per: dict, trace, names: list[str]) -> None:
    """One batch into ``per`` ({stream: {predictor: {"cos": {name: v}, "mse": {name: v}}}}), each clip's value
    the mean over rollout steps of evaluation's probe (``eval.probes.trace_fidelity``)."""
    from affectverse_ds.eval.probes import trace_fidelity

    for stream, pname, valid, cos, mse in trace_fidelity(trace):
        slot = per.setdefault(stream, {}).setdefault(pname, {"cos": {}, "mse": {}})
        for j, i in enumerate(torch.nonzero(valid).flatten().tolist()):
            slot["cos"][names[i]] = float(cos[j].mean())
            slot["mse"][names[i]] = float(mse[j].mean())


# ----------------------------------------------------------------------------- the experiment


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out).resolve()
    art = Path("artifacts").resolve()  # under the current folder, as the demo's
    wheel_dir = Path(args.wheel_dir)
    extra = [f"train.epochs={args.epochs}"] if args.epochs else []
    keep = ",".join(f"{k:g}" for k in args.keep_ratios)
    raw: dict = {}
    for variant in args.variants:
        process_dir, shards = prepare(art, args, variant)
        for seed in range(args.seeds):
            base = out / variant / f"seed{seed}"
            ckpts, trained = {}, False
            for name, model_extra in MODELS.items():
                done = latest_checkpoint(base / name / "checkpoints") if (base / name).is_dir() else None
                if done is None:  # a rerun reuses finished trainings (a killed one starts again)
                    shutil.rmtree(base / name, ignore_errors=True)
                    done, trained = demo.train(name, shards, base, [f"train.seed={seed}", *extra, *model_extra],
                                               base / "logs"), True
                ckpts[name] = done
            results = base / "results"
            if trained or not (results / "affectdyn.json").is_file():  # ... and their finished evaluation
                demo._run([*demo.TORCHRUN, "--nproc_per_node", "2", "--master_port", str(demo.free_port()),
                           "-m", "affectverse_ds.launch.evaluate", "--checkpoint", *(str(c) for c in ckpts.values()),
                           "--config", str(demo.CONFIG), "--benchmarks", "affectdyn", "--modality", "avt",
                           "--keep-ratio", keep, "--mode", "rank", "--no-probe", "--out", str(results),
                           f"data.shard_dir={shards}", f"eval.wheel_dir={wheel_dir}"], base / "logs" / "evaluate.log")
            runs = json.loads((results / "affectdyn.json").read_text())["runs"]
            labels = sorted({r["model"] for r in runs})
            for name, ckpt in ckpts.items():
                found = [lb for lb in labels if name in lb]  # evaluate labels checkpoints by their run folder
                if len(found) != 1:
                    raise SystemExit(f"cannot tell which evaluated model is {name}: {labels}")
                label = found[0]
                entry = raw.setdefault(variant, {}).setdefault(name, {}).setdefault(seed, {"score": {}, "hits": {}})
                for r in runs:
                    if r["model"] != label or r["modality"] != "avt":
                        continue
                    k = float(r["keep_ratio"])
                    entry["score"][k] = float(r["score"])
                    entry["hits"][k] = clip_hits(process_dir, results / r["predictions_file"]
                                                 if not Path(r["predictions_file"]).is_absolute()
                                                 else Path(r["predictions_file"]), wheel_dir)
                if name in EWM_MODELS:
                    entry["fidelity"] = clip_fidelity(ckpt, demo.CONFIG, [f"data.shard_dir={shards}"],
                                                      args.keep_ratios)
    summary = summarise(raw, args)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "summary": summary}, indent=1) + "\n")
    (out / "results.md").write_text(to_markdown(summary, args))
    return summary


def prepare(art: Path, args: argparse.Namespace, variant: str) -> tuple[Path, Path]:
    """The variant's clips and shards (skipped when already there)."""
    from affectverse_ds.benchmarks.affectdyn_gen import make_affectdyn
    from affectverse_ds.data.shards import ShardLimits, build_shards
    from affectverse_ds.tools.make_tiny_backbone import is_current, make_tiny_backbone

    if not is_current(art / "tiny_backbone"):  # the demo recipe's backbone; a clone alone has none yet
        make_tiny_backbone(art / "tiny_backbone")
    tag = f"{variant}_{args.n_train}_{args.n_test}_{args.data_seed}"
    raw = art / "ewm_evidence" / f"raw_{tag}"
    if not (raw / "affectdyn-process" / "label.npz").is_file():
        make_affectdyn(raw, args.n_train, args.n_test, args.data_seed, workers=2, overwrite=True, variant=variant)
    shards = art / "ewm_evidence" / f"shards_{tag}"
    for split in ("train", "test"):
        build_shards("affectdyn", "unibench", raw, split, shards, workers=2, resume=True,
                     limits=ShardLimits(max_count=max(4, args.n_train // 10)), progress=False)
    return raw / "affectdyn-process", shards


def summarise(raw: dict, args: argparse.Namespace) -> dict:
    """Means and 95% intervals (across seeds; paired bootstrap over clips) per variant, model and keep ratio."""
    out: dict = {}
    for variant, models in raw.items():
        res = out.setdefault(variant, {"scores": [], "table8": []})
        for k in args.keep_ratios:
            per_seed, clip_mean = {}, {}
            for name, seeds in models.items():
                per_seed[name] = [s["score"][k] for s in seeds.values()]
                names = sorted(next(iter(seeds.values()))["hits"][k])
                # (clips, wheels), the hit averaged over seeds (the NaN pattern is the labels', the same every seed)
                clip_mean[name] = np.array([[s["hits"][k][n] for n in names] for s in seeds.values()]).mean(0)
            for name in models:
                mean, lo, hi = t_interval(per_seed[name])
                row = {"keep_ratio": k, "model": name, "seeds": per_seed[name], "mean": mean, "t95": [lo, hi],
                       "boot95": list(bootstrap_score_interval(clip_mean[name])[1:]),
                       "n_clips": len(clip_mean[name])}
                if name != "lora" and "lora" in models:
                    diff = [a - b for a, b in zip(per_seed[name], per_seed["lora"])]
                    row["minus_lora_t95"] = list(t_interval(diff))
                    row["minus_lora_boot95"] = list(bootstrap_score_interval(clip_mean[name], clip_mean["lora"]))
                res["scores"].append(row)
            for name in EWM_MODELS:
                if name in models and k < 1.0:
                    res["table8"] += table8_rows(models[name], name, k)
    return out


def table8_rows(seeds: dict, name: str, k: float) -> list[dict]:
    rows = []
    first = next(iter(seeds.values()))["fidelity"].get(k, {})
    for stream, preds in first.items():
        for metric in ("cos", "mse"):
            clips = sorted(preds["ewm"][metric])
            per_clip = {p: np.array([[s["fidelity"][k][stream][p][metric][c] for c in clips]
                                     for s in seeds.values()]).mean(0) for p in preds}
            per_seed = {p: [float(np.mean(list(s["fidelity"][k][stream][p][metric].values())))
                            for s in seeds.values()] for p in preds}
            for p in preds:
                row = {"model": name, "keep_ratio": k, "stream": stream, "metric": metric, "predictor": p,
                       "mean": float(np.mean(per_seed[p])), "t95": list(t_interval(per_seed[p])[1:]),
                       "boot95": list(bootstrap_interval(per_clip[p])[1:]), "n_clips": len(clips)}
                if p != "ewm":
                    diff = [a - b for a, b in zip(per_seed["ewm"], per_seed[p])]
                    row["ewm_minus_this_t95"] = list(t_interval(diff))
                    row["ewm_minus_this_boot95"] = list(bootstrap_interval(per_clip["ewm"] - per_clip[p]))
                rows.append(row)
    return rows


def _iv(pair) -> str:
    lo, hi = pair[-2], pair[-1]
    return "n/a" if any(math.isnan(x) for x in (lo, hi)) else f"[{lo:.2f}, {hi:.2f}]"


def to_markdown(summary: dict, args: argparse.Namespace) -> str:
    lines = [f"# EWM vs LoRA on affectdyn: {args.seeds} seeds, {args.n_train} train / {args.n_test} test clips", ""]
    for variant, res in summary.items():
        lines += [f"## variant `{variant}`: HIT rate (A+V+T), mean over seeds", "",
                  "| keep | model | mean | 95% t (seeds) | 95% bootstrap (clips) | minus LoRA: t (seeds) | "
                  "minus LoRA: bootstrap (clips) |", "|---|---|---|---|---|---|---|"]
        for r in res["scores"]:
            lines.append(f"| {r['keep_ratio']:g} | {r['model']} | {r['mean']:.2f} | {_iv(r['t95'])} | "
                         f"{_iv(r['boot95'])} | {_iv(r['minus_lora_t95']) if 'minus_lora_t95' in r else ''} | "
                         f"{_iv(r['minus_lora_boot95']) if 'minus_lora_boot95' in r else ''} |")
        lines += ["", f"### variant `{variant}`: Table 8 (mean over rollout steps; EWM minus baseline intervals)", "",
                  "| model | keep | stream | metric | predictor | mean | 95% t | 95% bootstrap | "
                  "EWM minus this: t | EWM minus this: bootstrap |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["table8"]:
            lines.append(f"| {r['model']} | {r['keep_ratio']:g} | {r['stream']} | {r['metric']} | {r['predictor']} | "
                         f"{r['mean']:.4f} | {_iv(r['t95'])} | {_iv(r['boot95'])} | "
                         f"{_iv(r['ewm_minus_this_t95']) if 'ewm_minus_this_t95' in r else ''} | "
                         f"{_iv(r['ewm_minus_this_boot95']) if 'ewm_minus_this_boot95' in r else ''} |")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--variants", type=lambda s: s.split(","), default=["base", "precursor"])
    p.add_argument("--n-train", type=int, default=720)
    p.add_argument("--n-test", type=int, default=72)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="override train.epochs of the demo recipe")
    p.add_argument("--keep-ratios", type=lambda s: [float(x) for x in s.split(",")],
                   default=[1.0, 0.85, 0.7, 0.5, 0.3])
    p.add_argument("--out", default="runs/ewm_evidence")
    p.add_argument("--wheel-dir", default=str(PACKAGED_WHEEL_DIR),
                   help="MER-UniBench emotion wheels for scoring (default: the ones shipped with the package)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    run(args)
    print((Path(args.out) / "results.md").read_text())
    print(f"finished in {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
