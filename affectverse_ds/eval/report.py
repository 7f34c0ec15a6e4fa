"""Tables and plots of an evaluation run, laid out like the paper: pure writers, no model and no torch.

* :func:`format_table1` - paper Table 1: benchmarks as columns plus Mean, one row per model x modality
  setting; a fixed checkpoint and best-per-benchmark rows, each labelled.
* :func:`format_table2` - paper Table 2: the keep-ratio sweep, one row per benchmark x setting
  (Full / No Audio / No Video), keep ratios as columns plus Avg, one block per benchmark group
  with its group average.
* :func:`format_table8` - paper Table 8: per-rollout-step imagination cosine and MSE per stream
  (video, audio), beside the two no-learning baselines on the same futures.
* the figures (keep ratio, imagination, MAMA, trajectory) are drawn by ``eval/plots.py``.

Scores are percentages; NaN means "nothing scored" and prints as an em dash.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from affectverse_ds.config import MODALITY_SETTINGS

# Column order of paper Table 1 (basic, sentiment, fine-grained) and the names it prints.
BENCHMARK_ORDER = ("mer2023", "mer2024", "meld", "iemocap", "cmumosi", "cmumosei", "sims", "simsv2", "ovmerd")
DISPLAY = {
    "mer2023": "MER2023", "mer2024": "MER2024", "meld": "MELD", "iemocap": "IEMOCAP", "cmumosi": "MOSI",
    "cmumosei": "MOSEI", "sims": "SIMS", "simsv2": "SIMS v2", "ovmerd": "OV-MERD+",
}
N_PROTOCOL_BENCHMARKS = len(BENCHMARK_ORDER)  # "Mean: the average of the nine main scores"
# modality setting -> (audio, video, text) present, as Table 1's A V T columns
SETTING_FLAGS = {name: (audio, video, text) for name, (video, audio, text) in MODALITY_SETTINGS.items()}
# Table 2's setting names
SETTING_NAMES = {"avt": "Full", "vt": "No Audio", "at": "No Video", "av": "No Text", "t": "Text only"}
GROUP_TITLES = {"sentiment": "Sentiment benchmarks", "discrete": "Classification benchmarks",
                "openset": "Open-vocabulary benchmarks"}
PREDICTOR_NAMES = {"ewm": "EWM imagination", "repeat_last": "repeat last observed",
                   "mean_observed": "mean of observed"}
STREAM_NAMES = {"v": "video", "a": "audio"}
DASH = "\u2014"


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RunScore:
    """The main score of one (model, setting, keep ratio) run on one benchmark.

    Args:
        model: checkpoint label (``step_000300``).
        modality: setting ``avt`` / ``at`` / ``vt`` (``av``, ``t`` also allowed).
        keep_ratio: kappa, the observed fraction of every audio/video region.
        benchmark: registry name.
        score: main score in percent (NaN when nothing was scored).
        metric: its name (``hit``, ``wf1_nonzero``, ``ov_f``).
        group: ``discrete`` / ``sentiment`` / ``openset``.
        low, high: 95 % bootstrap interval of the score over the test clips (NaN: not computed).
    """

    model: str
    modality: str
    keep_ratio: float
    benchmark: str
    score: float
    metric: str = ""
    group: str = ""
    low: float = math.nan
    high: float = math.nan


@dataclass
class ImaginationRow:
    """Per-step imagination fidelity of one predictor on one stream (a row of Table 8).

    Args:
        model: checkpoint label.
        modality: setting the probe ran under.
        keep_ratio: split point of the probe (observed past = first kappa of each stream).
        stream: ``v`` or ``a``.
        predictor: ``ewm``, ``repeat_last`` or ``mean_observed``.
        cos: mean cosine to the pooled real future, per rollout step.
        mse: mean MSE to the pooled real future, per rollout step.
        n: samples averaged (those with a future on this stream).
        cos_low, cos_high, mse_low, mse_high: 95 % bootstrap interval of each mean over the clips, per step
            (empty: not computed).
    """

    model: str
    modality: str
    keep_ratio: float
    stream: str
    predictor: str
    cos: list[float] = field(default_factory=list)
    mse: list[float] = field(default_factory=list)
    n: int = 0
    cos_low: list[float] = field(default_factory=list)
    cos_high: list[float] = field(default_factory=list)
    mse_low: list[float] = field(default_factory=list)
    mse_high: list[float] = field(default_factory=list)


@dataclass
class Table1Row:
    """One row of Table 1: a label, a setting, a score per benchmark and, for best-of rows, where each came from."""

    label: str
    modality: str
    values: dict[str, float]
    sources: dict[str, str] | None = None


# ----------------------------------------------------------------------------- helpers


def fmt(value: float | None, digits: int = 2) -> str:
    """A score for a table cell; None / NaN print as an em dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return f"{value:.{digits}f}"


def nanmean(values: Iterable[float]) -> float:
    """Mean of the finite values (NaN when there are none)."""
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else math.nan


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def order_benchmarks(names: Iterable[str]) -> list[str]:
    """Benchmarks in paper order; unknown names (e.g. a new benchmark) follow, alphabetically."""
    names = set(names)
    return [b for b in BENCHMARK_ORDER if b in names] + sorted(names - set(BENCHMARK_ORDER))


def display(benchmark: str) -> str:
    return DISPLAY.get(benchmark, benchmark)


def _check(mark: bool) -> str:
    return "\u2713" if mark else "\u00d7"


def _same_kappa(a: float, b: float) -> bool:
    return abs(a - b) < 1e-9


# ----------------------------------------------------------------------------- Table 1


def table1_rows(scores: Sequence[RunScore], fixed_model: str, keep_ratio: float = 1.0) -> list[Table1Row]:
    """The rows of Table 1: the fixed checkpoint per setting, then best-per-benchmark per setting.

    Best-per-benchmark rows appear only when more than one checkpoint was evaluated; each of their
    cells is the best main score over the checkpoints for that benchmark alone (AffectGPT's
    selection, which docs/evaluation.md asks to report labelled beside a fixed checkpoint).

    Args:
        scores: every run's scores.
        fixed_model: label of the fixed (final or chosen) checkpoint.
        keep_ratio: the kappa Table 1 reports (full observation).
    """
    at_kappa = [s for s in scores if _same_kappa(s.keep_ratio, keep_ratio)]
    models = list(dict.fromkeys(s.model for s in at_kappa))
    settings = list(dict.fromkeys(s.modality for s in at_kappa))
    rows = []
    for modality in settings:
        values = {s.benchmark: s.score for s in at_kappa if s.model == fixed_model and s.modality == modality}
        if values:
            rows.append(Table1Row(f"{fixed_model} (fixed checkpoint)", modality, values))
    if len(models) > 1:
        for modality in settings:
            values, sources = best_per_benchmark([s for s in at_kappa if s.modality == modality])
            rows.append(Table1Row(f"best-of-{len(models)} per benchmark", modality, values, sources))
    return rows


def model_rows(scores: Sequence[RunScore], keep_ratio: float = 1.0) -> list[Table1Row]:
    """One Table 1 row per evaluated checkpoint x setting (each checkpoint on its own, nothing selected)."""
    at_kappa = [s for s in scores if _same_kappa(s.keep_ratio, keep_ratio)]
    rows = []
    for model in dict.fromkeys(s.model for s in at_kappa):
        for modality in dict.fromkeys(s.modality for s in at_kappa):
            values = {s.benchmark: s.score for s in at_kappa if s.model == model and s.modality == modality}
            if values:
                rows.append(Table1Row(model, modality, values))
    return rows


def best_per_benchmark(scores: Sequence[RunScore]) -> tuple[dict[str, float], dict[str, str]]:
    """Per benchmark, the best score over models and the model it came from (first on ties; NaN never wins)."""
    values: dict[str, float] = {}
    sources: dict[str, str] = {}
    for s in scores:
        if math.isnan(s.score):
            values.setdefault(s.benchmark, math.nan)
            continue
        if s.benchmark not in sources or s.score > values[s.benchmark]:
            values[s.benchmark], sources[s.benchmark] = s.score, s.model
    return values, sources


def format_table1(rows: Sequence[Table1Row], benchmarks: Sequence[str] | None = None) -> str:
    """Table 1 as markdown: Model | A | V | T | benchmarks | Mean, plus the best-of sources under it.

    Mean averages the benchmarks with a score; when that is not all nine protocol benchmarks, the
    header says how many ("Mean (2 of 9)"), so a partial mean is never read as the paper's.
    """
    benchmarks = order_benchmarks(benchmarks or {b for r in rows for b in r.values})
    n = len(benchmarks)
    mean_name = "Mean" if n == N_PROTOCOL_BENCHMARKS else f"Mean ({n} of {N_PROTOCOL_BENCHMARKS})"
    header = ["Model", "A", "V", "T"] + [display(b) for b in benchmarks] + [mean_name]
    body = []
    for row in rows:
        audio, video, text = SETTING_FLAGS.get(row.modality, (False, False, False))
        cells = [row.values.get(b, math.nan) for b in benchmarks]
        mean = nanmean(cells)
        partial = any(math.isnan(c) for c in cells) and not math.isnan(mean)
        body.append([row.label, _check(audio), _check(video), _check(text)] + [fmt(c) for c in cells]
                    + [fmt(mean) + ("*" if partial else "")])
    out = [markdown_table(header, body)]
    if any(any(math.isnan(r.values.get(b, math.nan)) for b in benchmarks) for r in rows):
        out.append(f"\n{DASH}: nothing scored; *: mean over the scored benchmarks only.")
    notes = [f"- {r.label}, {r.modality}: " + ", ".join(f"{display(b)} from {r.sources[b]}" for b in benchmarks
                                                          if b in r.sources)
             for r in rows if r.sources]
    if notes:
        out.append("\nBest-per-benchmark rows pick, for each benchmark separately, the best checkpoint on the "
                   "test set itself (AffectGPT's selection); they are optimistic and not one model:\n")
        out.append("\n".join(notes))
    return "\n".join(out)


# ----------------------------------------------------------------------------- Table 2


def format_table2(scores: Sequence[RunScore], model: str, keep_ratios: Sequence[float] | None = None,
                  settings: Sequence[str] = ("avt", "vt", "at")) -> str:
    """Table 2 as markdown: per group, one row per benchmark x setting over the keep ratios, Avg column,
    and the group's average rows.

    Args:
        scores: every run's scores (only ``model``'s are used).
        model: the checkpoint whose sweep is shown.
        keep_ratios: column order (default: those found, descending as in the paper).
        settings: row order of the settings (those without scores are left out).
    """
    mine = [s for s in scores if s.model == model]
    if keep_ratios is None:
        keep_ratios = sorted({s.keep_ratio for s in mine}, reverse=True)
    lookup = {(s.benchmark, s.modality, round(s.keep_ratio, 9)): s for s in mine}
    present = [m for m in settings if any(s.modality == m for s in mine)]
    present += [m for m in dict.fromkeys(s.modality for s in mine) if m not in present]
    header_k = [f"{k:g}" for k in keep_ratios]
    blocks = []
    groups = dict.fromkeys(s.group or "other" for s in mine)
    for group in [g for g in ("sentiment", "discrete", "openset") if g in groups] + \
            [g for g in groups if g not in ("sentiment", "discrete", "openset")]:
        benches = order_benchmarks({s.benchmark for s in mine if (s.group or "other") == group})
        metric = next((s.metric for s in mine if s.benchmark in benches and s.metric), "")
        rows = []
        per_setting: dict[str, list[list[float]]] = {m: [] for m in present}
        for bench in benches:
            for setting in present:
                cells = [lookup[(bench, setting, round(k, 9))].score if (bench, setting, round(k, 9)) in lookup
                         else math.nan for k in keep_ratios]
                if all(math.isnan(c) for c in cells):
                    continue
                per_setting[setting].append(cells)
                rows.append([display(bench), SETTING_NAMES.get(setting, setting)] + [fmt(c, 1) for c in cells]
                            + [fmt(nanmean(cells), 1)])
        for setting in present:
            if per_setting[setting]:
                cols = [nanmean(col) for col in zip(*per_setting[setting])]
                rows.append(["Avg.", SETTING_NAMES.get(setting, setting)] + [fmt(c, 1) for c in cols]
                            + [fmt(nanmean(cols), 1)])
        title = f"{GROUP_TITLES.get(group, group)} ({metric}, %)" if metric else GROUP_TITLES.get(group, group)
        blocks.append(f"{title}\n\n" + markdown_table(["Dataset", "Setting"] + header_k + ["Avg."], rows))
    return "\n\n".join(blocks)


# ----------------------------------------------------------------------------- Table 8


def format_table8(rows: Sequence[ImaginationRow]) -> str:
    """Table 8 as markdown: per model, setting, keep ratio, stream and predictor, cosine and MSE at
    each rollout step, and their averages; the EWM's average over its streams closes each group.

    Baselines (same pooled futures): ``repeat_last`` predicts every future token as the last
    observed one; ``mean_observed`` as the mean of the observed ones. They do not depend on the
    step, so their per-step columns repeat.
    """
    if not rows:
        return "No imagination statistics (no sample had a future to predict)."
    n_steps = max(len(r.cos) for r in rows)
    header = (["Model", "Setting", "\u03ba", "Stream", "Predictor"] + [f"Cos s{k + 1}" for k in range(n_steps)]
              + [f"MSE s{k + 1}" for k in range(n_steps)] + ["Avg Cos \u2191", "Avg MSE \u2193", "n"])
    body = []
    keys = list(dict.fromkeys((r.model, r.modality, round(r.keep_ratio, 9)) for r in rows))
    for key in keys:
        group = [r for r in rows if (r.model, r.modality, round(r.keep_ratio, 9)) == key]
        for r in group:
            cos = list(r.cos) + [math.nan] * (n_steps - len(r.cos))
            mse = list(r.mse) + [math.nan] * (n_steps - len(r.mse))
            body.append([r.model, r.modality, f"{r.keep_ratio:g}", STREAM_NAMES.get(r.stream, r.stream),
                         PREDICTOR_NAMES.get(r.predictor, r.predictor)] + [fmt(c, 3) for c in cos]
                        + [fmt(m, 4) for m in mse] + [fmt(nanmean(r.cos), 3), fmt(nanmean(r.mse), 4), str(r.n)])
        ewm = [r for r in group if r.predictor == "ewm" and r.n > 0]
        if ewm:
            body.append([key[0], key[1], f"{key[2]:g}", "all", "EWM average"] + [""] * (2 * n_steps)
                        + [fmt(nanmean(c for r in ewm for c in r.cos), 3),
                           fmt(nanmean(m for r in ewm for m in r.mse), 4), str(sum(r.n for r in ewm))])
    return markdown_table(header, body)


# ----------------------------------------------------------------------------- summary


def format_counts(counts: Mapping[str, Mapping[str, int]]) -> str:
    """Sample counts per row label (a benchmark, or "benchmark / setting"), in the order given.

    Columns: GT samples, evaluated, media failures (in the shards but unreadable), rejected by the
    shard builder, scored and skipped by the protocol, and missing (GT without a prediction).
    """
    keys = ["samples", "evaluated", "media_failed", "build_rejected", "scored", "skipped", "missing"]
    rows = [[display(label)] + [str(c.get(k, 0)) for k in keys] for label, c in counts.items()]
    return markdown_table(["Benchmark"] + keys, rows)


def write_summary(path: str | Path, sections: Sequence[tuple[str, str]], title: str = "Evaluation summary") -> Path:
    """Write ``summary.md`` from (heading, markdown body) sections."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}\n"] + [f"## {heading}\n\n{body.rstrip()}\n" for heading, body in sections]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
