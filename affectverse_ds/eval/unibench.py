"""MER-UniBench scorer: ground truth + predictions -> the protocol's main score, and the conventional ones.

    python -m affectverse_ds.eval.unibench score --benchmark NAME --labels LABEL_FILE \\
        --predictions PATH [--wheel-dir DIR] [--json]

``--labels`` is the benchmark's label file; its folder is read as the processed root and the
benchmark's test split (docs/evaluation.md) is scored. ``--wheel-dir`` defaults to the emotion
wheels shipped with the package. ``--predictions`` is one file or a directory
of per-epoch files: then every epoch is printed, with the last one as the fixed checkpoint
and the best one labelled best-of-N. Scores are printed in percent.
"""
from __future__ import annotations

import argparse
import json
import math
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from affectverse_ds.benchmarks import Benchmark, Label, LabelTable, get_benchmark
from affectverse_ds.eval import metrics
from affectverse_ds.eval.extract import Extractor, LexiconExtractor, SentimentMapper, closed_class
from affectverse_ds.eval.predictions import Prediction, PredictionSet, epoch_of, prediction_files, read_predictions
from affectverse_ds.eval.wheel import PACKAGED_WHEEL_DIR, EmotionWheels, load_wheels


@dataclass
class ScoreReport:
    """Scores of one predictions file on one benchmark (scores in percent).

    Args:
        benchmark: registry name.
        file: predictions file scored.
        metric: name of the main score (``hit``, ``wf1_nonzero`` or ``ov_f``).
        main: the main score.
        secondary: the protocol's other scores (``acc2`` for sentiment, ``p`` and ``r`` for open set).
        per_wheel: per-wheel main score (wheel groups only).
        scored: samples the main score averages over; skipped: the other GT samples.
        missing: GT names without a prediction (scored as an empty prediction).
        extra: predicted names that are not in the GT.
        duplicates: predicted names given more than once (last entry kept).
        rejected_labels: GT entries the benchmark's label loader refused.
        conventional: closed-set / regression metrics reported beside the main score.
        epoch: epoch parsed from the file name, if any.
        best_of: number of files compared in a directory run (None for a single file).
        is_best: True for the best file of a directory run.
    """

    benchmark: str
    file: str
    metric: str
    main: float
    secondary: dict[str, float] = field(default_factory=dict)
    per_wheel: list[float] | None = None
    scored: int = 0
    skipped: int = 0
    missing: int = 0
    extra: int = 0
    duplicates: list[str] = field(default_factory=list)
    rejected_labels: int = 0
    conventional: dict[str, float] = field(default_factory=dict)
    epoch: int | None = None
    best_of: int | None = None
    is_best: bool = False

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict; NaN (nothing scored) becomes null."""
        return _json_safe(self.__dict__)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _pct(value: float) -> float:
    return 100.0 * value


# ----------------------------------------------------------------------------- reading one prediction

def predicted_words(prediction: Prediction | None, extractor: Extractor) -> list[str]:
    """Emotion words of a prediction: its items, else words extracted from its answer; [] when missing."""
    if prediction is None:
        return []
    if prediction.items is not None:
        return list(prediction.items)
    if prediction.text is not None:
        return extractor.extract(prediction.text)
    return [prediction.sentiment] if prediction.sentiment else []


def predicted_sentiment(prediction: Prediction | None, mapper: SentimentMapper, extractor: Extractor) -> str:
    """Polarity word of a prediction: given directly, else mapped from its words or answer text."""
    if prediction is None:
        return ""
    if prediction.sentiment is not None:
        return prediction.sentiment
    if prediction.items is not None:
        return mapper(prediction.items)
    return mapper.from_text(prediction.text or "", extractor)


# ----------------------------------------------------------------------------- scoring

@dataclass
class ScoringContext:
    """What scoring needs besides GT and predictions.

    Args:
        wheels: the G_w tables.
        extractor: free text -> emotion words (default: the lexicon extractor over the tables).
    """

    wheels: EmotionWheels
    extractor: Extractor | None = None
    mapper: SentimentMapper = field(init=False)

    def __post_init__(self) -> None:
        if self.extractor is None:
            self.extractor = LexiconExtractor.from_wheels(self.wheels)
        self.mapper = SentimentMapper(self.wheels)


def score_predictions(bench: Benchmark, labels: LabelTable, preds: PredictionSet, ctx: ScoringContext) -> ScoreReport:
    """Score one predictions file against the GT of a benchmark, as docs/evaluation.md says.

    Args:
        bench: the benchmark (its group selects the protocol).
        labels: its test-split GT.
        preds: the predictions; a GT name without one is scored as an empty prediction.
        ctx: wheels and extractor.

    Returns:
        The :class:`ScoreReport`.
    """
    names = list(labels.labels)
    samples = [preds.entries.get(n) for n in names]
    report = score_lists(bench, [labels.labels[n] for n in names], samples, ctx)
    report.file = str(preds.path)
    report.missing = sum(p is None for p in samples)
    report.extra = len(set(preds.entries) - set(names))
    report.duplicates = list(preds.duplicates)
    report.rejected_labels = len(labels.rejected)
    report.epoch = epoch_of(preds.path)
    return report


def score_lists(bench: Benchmark, gts: Sequence[Label], samples: Sequence[Prediction | None],
                ctx: ScoringContext) -> ScoreReport:
    """The protocol's scores of aligned GT and predictions (None: missing, scored as empty); no file fields."""
    scorer = {"discrete": _score_discrete, "sentiment": _score_sentiment, "openset": _score_openset}[bench.group]
    return scorer(bench, list(gts), list(samples), ctx)


def mapped_by_wheel(word_lists: Sequence[Sequence[str]], wheels: EmotionWheels) -> list[list[frozenset]]:
    """For each wheel, the G_w set of each sample's words."""
    return [[wheels.group_set(words, w) for words in word_lists] for w in range(wheels.n_wheels)]


def _any_wheel_count(gt_by_wheel: list[list[frozenset]]) -> int:
    """Samples with a non-empty mapped GT on at least one wheel (a wheel may map fewer)."""
    return sum(any(wheel[i] for wheel in gt_by_wheel) for i in range(len(gt_by_wheel[0]))) if gt_by_wheel else 0


def _score_discrete(bench: Benchmark, gts: list[Label], samples: list[Prediction | None],
                    ctx: ScoringContext) -> ScoreReport:
    words = [predicted_words(p, ctx.extractor) for p in samples]
    gt_sets = mapped_by_wheel([[g.emo] for g in gts], ctx.wheels)
    hit = metrics.hit_rate(gt_sets, mapped_by_wheel(words, ctx.wheels))
    classes = [closed_class(w, bench.classes, ctx.wheels) or "" for w in words]
    conventional = metrics.discrete_conventional([g.emo for g in gts], classes)
    scored = _any_wheel_count(gt_sets)
    return ScoreReport(
        benchmark=bench.name, file="", metric="hit", main=_pct(hit.mean),
        per_wheel=[_pct(v) for v in hit.per_wheel], scored=scored, skipped=len(gts) - scored,
        conventional={"wf1_all": _pct(conventional["wf1"]), "acc_all": _pct(conventional["acc"])},
    )


def _score_sentiment(bench: Benchmark, gts: list[Label], samples: list[Prediction | None],
                     ctx: ScoringContext) -> ScoreReport:
    words = [predicted_sentiment(p, ctx.mapper, ctx.extractor) for p in samples]
    polarity = [metrics.polarity_value(w) for w in words]
    values = [g.val for g in gts]
    main = metrics.sentiment_scores(values, polarity)
    # MAE / correlation need a score; a polarity stands in for samples whose prediction has none
    regression = [p.score if p is not None and p.score is not None else v for p, v in zip(samples, polarity)]
    conventional = metrics.sentiment_conventional(values, regression)
    return ScoreReport(
        benchmark=bench.name, file="", metric="wf1_nonzero", main=_pct(main.wf1_nonzero),
        secondary={"acc2": _pct(main.acc2_nonzero)}, scored=main.scored, skipped=main.skipped,
        conventional={k: (v if k in ("mae", "corr") else _pct(v)) for k, v in conventional.items()},
    )


def _score_openset(bench: Benchmark, gts: list[Label], samples: list[Prediction | None],
                   ctx: ScoringContext) -> ScoreReport:
    words = [predicted_words(p, ctx.extractor) for p in samples]
    gt_sets = mapped_by_wheel([list(g.openset or ()) for g in gts], ctx.wheels)
    prf = metrics.set_prf(gt_sets, mapped_by_wheel(words, ctx.wheels))
    scored = _any_wheel_count(gt_sets)
    return ScoreReport(
        benchmark=bench.name, file="", metric="ov_f", main=_pct(prf.f.mean),
        secondary={"p": _pct(prf.precision.mean), "r": _pct(prf.recall.mean)},
        per_wheel=[_pct(v) for v in prf.f.per_wheel], scored=scored, skipped=len(gts) - scored,
    )


# ----------------------------------------------------------------------------- files and directories

def load_gt(bench: Benchmark, label_file: str | Path) -> LabelTable:
    """The test-split GT of a benchmark, from its label file (its folder is the processed root).

    Args:
        bench: the benchmark.
        label_file: e.g. ``.../mer2023-dataset-process/label-6way.npz`` or OV-MERD+'s ``ovlabel.csv``.

    Returns:
        The benchmark's :class:`LabelTable` of its test split.
    """
    label_file = Path(label_file)
    if not label_file.is_file():
        raise FileNotFoundError(f"label file not found: {label_file}")
    return bench.load_labels(label_file.parent, bench.test_split)


def score_path(bench: Benchmark, labels: LabelTable, path: str | Path, ctx: ScoringContext) -> list[ScoreReport]:
    """Score one predictions file, or every per-epoch file of a directory (then marking the best).

    Args:
        bench: the benchmark.
        labels: its test-split GT.
        path: a predictions file, or a directory of them (see :func:`prediction_files`).
        ctx: wheels and extractor.

    Returns:
        One report per file, in epoch order.
    """
    path = Path(path)
    if not path.is_dir():
        return [score_predictions(bench, labels, read_predictions(path), ctx)]
    files = prediction_files(path, bench.group)
    if not files:
        raise FileNotFoundError(f"{path}: no prediction files for a {bench.group} benchmark")
    reports = [score_predictions(bench, labels, read_predictions(f), ctx) for f in files]
    best = best_report(reports)
    for report in reports:
        report.best_of, report.is_best = len(reports), report is best
    return reports


def best_report(reports: Sequence[ScoreReport]) -> ScoreReport:
    """The report with the highest main score (the earliest on ties; NaN never wins)."""
    return max(reports, key=lambda r: -math.inf if math.isnan(r.main) else r.main)


def format_report(report: ScoreReport) -> str:
    """One human-readable line per scored file."""
    epoch = f" epoch {report.epoch}" if report.epoch is not None else ""
    parts = [f"{report.benchmark}{epoch} {Path(report.file).name}: {report.metric} {report.main:.2f}"]
    parts += [f"{k} {v:.2f}" for k, v in report.secondary.items()]
    if report.per_wheel is not None:
        parts.append("per wheel " + " ".join(f"{v:.2f}" for v in report.per_wheel))
    parts.append(f"scored {report.scored} skipped {report.skipped} missing {report.missing} "
                 f"extra {report.extra} duplicates {len(report.duplicates)}")
    if report.conventional:
        parts.append("conventional " + " ".join(f"{k} {v:.2f}" for k, v in report.conventional.items()))
    return " | ".join(parts)


def format_summary(reports: Sequence[ScoreReport]) -> list[str]:
    """The fixed (last) and best-of-N lines of a directory run."""
    best, last = best_report(reports), reports[-1]
    return [
        f"fixed checkpoint (last file){_epoch_text(last)}: {last.metric} {last.main:.2f}",
        f"best-of-{len(reports)} (selected per benchmark){_epoch_text(best)}: {best.metric} {best.main:.2f}"
        f" ({Path(best.file).name})",
    ]


def _epoch_text(report: ScoreReport) -> str:
    return f", epoch {report.epoch}" if report.epoch is not None else ""


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser (one ``score`` command)."""
    parser = argparse.ArgumentParser(prog="python -m affectverse_ds.eval.unibench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="score predictions against a benchmark's test split")
    score.add_argument("--benchmark", required=True, help="registry name, e.g. mer2023, cmumosi, ovmerd")
    score.add_argument("--labels", required=True, type=Path, help="the benchmark's label file")
    score.add_argument("--predictions", required=True, type=Path, help="a predictions file or a directory of them")
    score.add_argument("--wheel-dir", type=Path, default=PACKAGED_WHEEL_DIR,
                       help="folder with format.csv, synonym.xlsx, wheel1-5.xlsx (default: the packaged MER-UniBench wheels)")
    score.add_argument("--json", action="store_true", help="print one JSON object per scored file")
    return parser


def run_score(args: argparse.Namespace) -> list[ScoreReport]:
    """Score as the ``score`` command says and print the result; returns the reports."""
    bench = get_benchmark(args.benchmark)
    ctx = ScoringContext(load_wheels(args.wheel_dir))
    reports = score_path(bench, load_gt(bench, args.labels), args.predictions, ctx)
    if args.json:
        for report in reports:
            print(json.dumps(report.to_json()))
        return reports
    for report in reports:
        print(format_report(report))
        if report.duplicates:
            print(f"  duplicate names (last entry kept): {', '.join(report.duplicates)}")
    if len(reports) > 1 or Path(args.predictions).is_dir():
        print("\n".join(format_summary(reports)))
    return reports


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for a missing file, unknown benchmark or bad input)."""
    args = build_parser().parse_args(argv)
    try:
        run_score(args)
    except (OSError, KeyError, ValueError, pickle.UnpicklingError) as err:  # a refused pickle says so, in one line
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
