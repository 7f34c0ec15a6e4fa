"""The ablation experiment's statistics and tables: arms, seed t-intervals, clip bootstraps (``eval.intervals``),
the paired comparisons, Table 8 rows and the markdown, all from per-clip data (``per_clip.json``'s ``raw``)."""
from __future__ import annotations

import argparse
import math

import numpy as np

from affectverse_ds import demo
from affectverse_ds.eval import intervals, metrics

# the arms: Table 3's rows the demo trains, and (f) with the literal Algorithm 1 context
ARMS = {**demo.ARMS, "f_full": ("ewm_full", "AffectVerse, Algorithm 1's full-pass context",
                                 [*demo.ARMS["f"][2], "ewm.context_source=full"])}
EWM_ARMS = ("f", "f_full")
COMPARISONS = (("f", "b"), ("f", "a"), ("b", "a"), ("f", "f_full"))  # (arm, minus this arm)


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


def bootstrap_interval(per_clip: np.ndarray, n_boot: int = intervals.RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
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


def bootstrap_score_interval(hits: np.ndarray, base: np.ndarray | None = None, n_boot: int = intervals.RESAMPLES,
                             seed: int = 0) -> tuple[float, float, float]:
    """(score, low, high): 95% percentile bootstrap over clips of :func:`wheel_score`, or of the paired
    difference to ``base`` (the same resampled clips for both), by ``eval.intervals``."""

    def stat(idx):
        value = wheel_score(hits[idx])
        return value - wheel_score(base[idx]) if base is not None else value

    return intervals.bootstrap(stat, len(hits), n_boot, seed)


def summarise(raw: dict, args: argparse.Namespace) -> dict:
    """Means and 95% intervals (across seeds; bootstrap over clips) per variant, arm and keep ratio, and the
    paired comparisons of :data:`COMPARISONS`."""
    out: dict = {}
    for variant, arms in raw.items():
        res = out.setdefault(variant, {"scores": [], "comparisons": [], "table8": []})
        for kappa in args.keep_ratios:
            k = f"{kappa:g}"
            per_seed, clip_mean = {}, {}
            for arm, seeds in arms.items():
                per_seed[arm], clip_mean[arm], _ = seed_scores_and_clip_hits(seeds, k)
            for arm in arms:
                mean, lo, hi = t_interval(per_seed[arm])
                res["scores"].append({"keep_ratio": kappa, "arm": arm, "seeds": per_seed[arm], "mean": mean,
                                      "t95": [lo, hi], "boot95": list(bootstrap_score_interval(clip_mean[arm])[1:]),
                                      "n_clips": len(clip_mean[arm])})
            for arm, other in COMPARISONS:
                if arm in arms and other in arms:
                    if sorted(arms[arm], key=int) != sorted(arms[other], key=int):
                        raise SystemExit(f"arms {arm} and {other} have different seeds: cannot pair them")
                    diff = [x - y for x, y in zip(per_seed[arm], per_seed[other])]
                    res["comparisons"].append({
                        "keep_ratio": kappa, "arm": arm, "minus": other, "seeds": diff,
                        "t95": list(t_interval(diff)),
                        "paired_boot95": list(bootstrap_score_interval(clip_mean[arm], clip_mean[other]))})
            for arm in EWM_ARMS:
                if arm in arms and kappa < 1.0:
                    res["table8"] += table8_rows(arms[arm], arm, k)
    return out


def seed_scores_and_clip_hits(seeds: dict, k: str, order: list[str] | None = None):
    """An arm's per-seed scores at keep ``k`` (seeds in ``order``, default all by number), its (clips, wheels)
    hits averaged over those seeds (the NaN pattern is the labels', the same every seed) and the clip names."""
    order = order or sorted(seeds, key=int)
    names = sorted(seeds[order[0]]["hits"][k])
    hits = np.array([[seeds[s]["hits"][k][n] for n in names] for s in order]).mean(0)
    return [seeds[s]["score"][k] for s in order], hits, names


def against(raw: dict, other: dict, keep_ratios: list[float]) -> list[dict]:
    """Each arm of this experiment minus the same arm of ``other`` (another run of it, e.g. before a code
    change), per variant and keep ratio: the t-interval of the per-seed differences (seed i against seed i:
    the same initialisation and data order) and the paired clip bootstrap (the same test clips)."""
    rows = []
    for variant in raw.keys() & other.keys():
        for arm in [a for a in raw[variant] if a in other[variant]]:
            seeds = sorted(raw[variant][arm].keys() & other[variant][arm].keys(), key=int)
            for kappa in keep_ratios:
                k = f"{kappa:g}"
                if not seeds or any(k not in other[variant][arm][s]["score"] for s in seeds):
                    raise SystemExit(f"({arm}) of variant {variant}: the other run has no common seed evaluated "
                                     f"at keep {k}")
                here, here_hits, names = seed_scores_and_clip_hits(raw[variant][arm], k, seeds)
                there, there_hits, there_names = seed_scores_and_clip_hits(other[variant][arm], k, seeds)
                if names != there_names:
                    raise SystemExit(f"({arm}) of variant {variant} was tested on other clips in the two runs")
                diff = [x - y for x, y in zip(here, there)]
                rows.append({"variant": variant, "keep_ratio": kappa, "arm": arm, "seeds": seeds, "here": here,
                             "there": there, "t95": list(t_interval(diff)),
                             "paired_boot95": list(bootstrap_score_interval(here_hits, there_hits))})
    return rows


def against_markdown(rows: list[dict], here: str, there: str) -> str:
    lines = [f"# {here} minus {there}: each arm against itself (HIT points, A+V+T)", "",
             "| variant | keep | arm | here | there | mean difference | 95% t (seeds) | 95% paired bootstrap (clips) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['keep_ratio']:g} | ({r['arm']}) | {np.mean(r['here']):.2f} | "
                     f"{np.mean(r['there']):.2f} | {r['t95'][0]:+.2f} | {_iv(r['t95'])} | {_iv(r['paired_boot95'])} |")
    return "\n".join(lines) + "\n"


def table8_rows(seeds: dict, name: str, k: str) -> list[dict]:
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
                row = {"arm": name, "keep_ratio": float(k), "stream": stream, "metric": metric, "predictor": p,
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
    lines = [f"# Table 3 ablation on affectdyn: arms {', '.join(args.arms)}; {args.seeds} seeds; "
             f"{args.n_train} train / {args.n_test} test clips", "",
             "Arms: " + "; ".join(f"({a}) {ARMS[a][1]}" for a in args.arms), ""]
    if getattr(args, "override", None):
        lines += ["Every arm also trained with: " + " ".join(f"`{o}`" for o in args.override), ""]
    for variant, res in summary.items():
        lines += [f"## variant `{variant}`: HIT rate (A+V+T), mean over seeds", "",
                  "| keep | arm | mean | per seed | 95% t (seeds) | 95% bootstrap (clips) |", "|---|---|---|---|---|---|"]
        for r in res["scores"]:
            seeds = " ".join(f"{s:.1f}" for s in r["seeds"])
            lines.append(f"| {r['keep_ratio']:g} | ({r['arm']}) | {r['mean']:.2f} | {seeds} | {_iv(r['t95'])} | "
                         f"{_iv(r['boot95'])} |")
        lines += ["", f"### variant `{variant}`: paired comparisons (HIT points)", "",
                  "| keep | comparison | mean difference | 95% t (seeds) | 95% paired bootstrap (clips) |",
                  "|---|---|---|---|---|"]
        for r in res["comparisons"]:
            lines.append(f"| {r['keep_ratio']:g} | ({r['arm']}) - ({r['minus']}) | {r['t95'][0]:+.2f} | "
                         f"{_iv(r['t95'])} | {_iv(r['paired_boot95'])} |")
        lines += ["", f"### variant `{variant}`: Table 8 (mean over rollout steps; EWM minus baseline intervals)", "",
                  "| arm | keep | stream | metric | predictor | mean | 95% t | 95% bootstrap | "
                  "EWM minus this: t | EWM minus this: bootstrap |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["table8"]:
            lines.append(f"| ({r['arm']}) | {r['keep_ratio']:g} | {r['stream']} | {r['metric']} | {r['predictor']} | "
                         f"{r['mean']:.4f} | {_iv(r['t95'])} | {_iv(r['boot95'])} | "
                         f"{_iv(r['ewm_minus_this_t95']) if 'ewm_minus_this_t95' in r else ''} | "
                         f"{_iv(r['ewm_minus_this_boot95']) if 'ewm_minus_this_boot95' in r else ''} |")
        lines.append("")
    return "\n".join(lines)
