"""The table and plot writers of an evaluation run, on hand-made scores (no model)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from affectverse_ds.eval import plots, report
from affectverse_ds.eval.report import ImaginationRow, RunScore

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_shape(path):
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == PNG_MAGIC
    return mpimg.imread(path).shape


def _cells(markdown: str, first: str) -> list[str]:
    """The cells of the first table row whose first cell is ``first``."""
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in\n{markdown}")


def _scores() -> list[RunScore]:
    out = []
    table = {  # model -> benchmark -> score at kappa 1, setting avt
        "step_000100": {"mer2023": 70.0, "cmumosi": 80.0},
        "step_000200": {"mer2023": 74.0, "cmumosi": 78.0},
    }
    groups = {"mer2023": ("discrete", "hit"), "cmumosi": ("sentiment", "wf1_nonzero")}
    for model, scores in table.items():
        for bench, score in scores.items():
            g, m = groups[bench]
            out.append(RunScore(model, "avt", 1.0, bench, score, m, g))
            out.append(RunScore(model, "at", 1.0, bench, score - 5, m, g))
    for k, delta in ((0.5, 2.0), (0.1, 4.0)):
        for bench, (g, m) in groups.items():
            base = table["step_000200"][bench]
            out.append(RunScore("step_000200", "avt", k, bench, base - delta, m, g))
            out.append(RunScore("step_000200", "at", k, bench, base - 5 - delta, m, g))
    return out


def test_table1_fixed_and_best_rows_are_labelled_with_partial_mean():
    rows = report.table1_rows(_scores(), fixed_model="step_000200")
    labels = [(r.label, r.modality) for r in rows]
    assert labels == [("step_000200 (fixed checkpoint)", "avt"), ("step_000200 (fixed checkpoint)", "at"),
                      ("best-of-2 per benchmark", "avt"), ("best-of-2 per benchmark", "at")]
    best = rows[2]
    assert best.values == {"mer2023": 74.0, "cmumosi": 80.0}
    assert best.sources == {"mer2023": "step_000200", "cmumosi": "step_000100"}
    text = report.format_table1(rows)
    assert "Mean (2 of 9)" in text  # only 2 of the 9 protocol benchmarks: never read as the paper's mean
    fixed = _cells(text, "step_000200 (fixed checkpoint)")
    # Model, A, V, T, MER2023, MOSI, Mean (paper column order: MER2023 before MOSI)
    assert fixed == ["step_000200 (fixed checkpoint)", "\u2713", "\u2713", "\u2713", "74.00", "78.00", "76.00"]
    assert _cells(text, "best-of-2 per benchmark")[-1] == "77.00"
    assert "MOSI from step_000100" in text


def test_model_rows_one_per_checkpoint_and_setting():
    rows = report.model_rows(_scores(), keep_ratio=0.5)
    assert [(r.label, r.modality) for r in rows] == [("step_000200", "avt"), ("step_000200", "at")]
    assert rows[1].values == {"mer2023": 67.0, "cmumosi": 71.0}


def test_table1_single_checkpoint_has_no_best_rows_and_nan_is_a_dash():
    scores = [RunScore("final", "vt", 1.0, "meld", math.nan, "hit", "discrete"),
              RunScore("final", "vt", 1.0, "sims", 60.0, "wf1_nonzero", "sentiment")]
    rows = report.table1_rows(scores, fixed_model="final")
    assert [r.label for r in rows] == ["final (fixed checkpoint)"]
    cells = _cells(report.format_table1(rows), "final (fixed checkpoint)")
    assert cells[1:4] == ["\u00d7", "\u2713", "\u2713"]  # V+T: no audio
    assert cells[4:] == [report.DASH, "60.00", "60.00*"]


def test_best_per_benchmark_ignores_nan_and_keeps_first_on_ties():
    scores = [RunScore("a", "avt", 1.0, "meld", math.nan), RunScore("b", "avt", 1.0, "meld", 50.0),
              RunScore("c", "avt", 1.0, "meld", 50.0)]
    values, sources = report.best_per_benchmark(scores)
    assert values == {"meld": 50.0} and sources == {"meld": "b"}


def test_table2_rows_averages_and_group_blocks():
    text = report.format_table2(_scores(), model="step_000200")
    sentiment, classification = text.split("Classification benchmarks")
    assert "Sentiment benchmarks (wf1_nonzero, %)" in sentiment
    # MOSI Full: 78 at 1.0, 76 at 0.5, 74 at 0.1 -> Avg 76
    assert _cells(sentiment, "MOSI") == ["MOSI", "Full", "78.0", "76.0", "74.0", "76.0"]
    header = [line for line in sentiment.splitlines() if line.startswith("| Dataset")][0]
    assert "| 1 | 0.5 | 0.1 |" in header
    rows = [line for line in classification.splitlines() if line.startswith("| MER2023")]
    assert [r.split("|")[2].strip() for r in rows] == ["Full", "No Video"]
    assert _cells(classification, "MER2023")[2:] == ["74.0", "72.0", "70.0", "72.0"]
    avg = [line for line in classification.splitlines() if line.startswith("| Avg.")]
    assert len(avg) == 2 and "| No Video | 69.0 | 67.0 | 65.0 | 67.0 |" in avg[1]


def _imagination_rows() -> list[ImaginationRow]:
    return [
        ImaginationRow("m", "avt", 0.5, "v", "ewm", [0.8, 0.7, 0.6], [0.1, 0.2, 0.3], 4),
        ImaginationRow("m", "avt", 0.5, "a", "ewm", [0.6, 0.5, 0.4], [0.3, 0.4, 0.5], 2),
        ImaginationRow("m", "avt", 0.5, "v", "repeat_last", [0.5] * 3, [0.9] * 3, 4),
        ImaginationRow("m", "avt", 0.5, "v", "mean_observed", [0.55] * 3, [0.7] * 3, 4),
    ]


def test_table8_per_step_columns_baselines_and_ewm_average():
    text = report.format_table8(_imagination_rows())
    lines = [line for line in text.splitlines() if line.startswith("| m ")]
    assert len(lines) == 5
    first = [c.strip() for c in lines[0].strip("|").split("|")]
    assert first[:5] == ["m", "avt", "0.5", "video", "EWM imagination"]
    assert first[5:11] == ["0.800", "0.700", "0.600", "0.1000", "0.2000", "0.3000"]
    assert first[11:] == ["0.700", "0.2000", "4"]
    assert "repeat last observed" in text and "mean of observed" in text
    avg = [c.strip() for c in lines[-1].strip("|").split("|")]
    assert avg[3:5] == ["all", "EWM average"]
    assert avg[-3:] == ["0.600", "0.3000", "6"]  # mean over both streams' steps; 4 + 2 samples
    assert "No imagination" in report.format_table8([])


def test_plots_are_written(tmp_path):
    scores = _scores()
    p1 = plots.plot_keep_ratio(scores, "step_000200", tmp_path / "keep.png")
    p2 = plots.plot_imagination(_imagination_rows(), tmp_path / "img.png")
    weights = np.random.default_rng(0).dirichlet(np.ones(24), size=8)  # 8 beliefs, 2 x 3 steps x 4 tokens
    p3 = plots.plot_mama(weights, n_steps=3, path=tmp_path / "sub" / "mama.png", title="t")
    p4 = plots.plot_trajectory([0.1, 0.5, 1.0], [["stress"], [], ["neutral", "calm"]], tmp_path / "traj.png")
    for p in (p1, p2, p3, p4):
        h, w, _ = _png_shape(p)
        assert h > 100 and w > 100
    with pytest.raises(ValueError):
        plots.plot_keep_ratio(scores, "nope", tmp_path / "x.png")
    with pytest.raises(ValueError):
        plots.plot_mama(weights[:, :23], n_steps=3, path=tmp_path / "bad.png")
    with pytest.raises(ValueError):
        plots.plot_trajectory([0.1], [], tmp_path / "bad.png")


def test_modality_mass_splits_memory_halves():
    w = np.zeros((2, 8))
    w[0, :4] = 0.25  # all on video
    w[1, 2], w[1, 6] = 0.5, 0.5
    np.testing.assert_allclose(plots.modality_mass(w), [[1.0, 0.0], [0.5, 0.5]])
    assert plots.memory_labels(2, 2) == ["V1.1", "V1.2", "V2.1", "V2.2", "A1.1", "A1.2", "A2.1", "A2.2"]


def test_counts_and_summary(tmp_path):
    counts = {"meld": {"samples": 6, "evaluated": 4, "media_failed": 1, "build_rejected": 1, "scored": 3,
                       "skipped": 1, "missing": 2},
              "meld / at": {"samples": 6, "evaluated": 5}}
    table = report.format_counts(counts)
    assert _cells(table, "MELD") == ["MELD", "6", "4", "1", "1", "3", "1", "2"]
    assert _cells(table, "meld / at") == ["meld / at", "6", "5", "0", "0", "0", "0", "0"]
    path = report.write_summary(tmp_path / "summary.md", [("Counts", table), ("Table 1", "x")])
    text = path.read_text()
    assert text.startswith("# Evaluation summary") and "## Counts" in text and "## Table 1" in text


def _drawn(monkeypatch):
    """Capture the figures the plot functions save: [(axes, ...)] per call."""
    figures = []

    def keep(fig, path, plt):
        figures.append(fig.axes)
        return path

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def test_keep_ratio_plot_shows_every_model_with_interval_bands(monkeypatch, tmp_path):
    scores = [RunScore(s.model, s.modality, s.keep_ratio, s.benchmark, s.score, s.metric, s.group,
                       s.score - 3, s.score + 3) for s in _scores()]
    figures = _drawn(monkeypatch)
    plots.plot_keep_ratio(scores, "step_000200", tmp_path / "keep.png")
    panels = [ax for ax in figures[0] if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["MER2023", "MOSI"]
    for ax in panels:
        labels = [line.get_label() for line in ax.get_lines()]
        assert any(label.startswith("step_000100 ") for label in labels)  # not only the fixed checkpoint
        assert any(label.startswith("step_000200 ") for label in labels)
        assert len(ax.collections) == len(labels) == 4  # one band per line (2 models x 2 settings)
        widths = {line.get_linewidth() for line in ax.get_lines()}
        assert len(widths) == 2  # the fixed checkpoint drawn thicker


def test_imagination_plot_shows_every_model_with_bands(monkeypatch, tmp_path):
    rows = _imagination_rows() + [ImaginationRow("m2", "avt", 0.85, "v", "ewm", [0.9, 0.8, 0.7], [0.1] * 3, 4,
                                                 [0.85, 0.75, 0.65], [0.95, 0.85, 0.75], [0.05] * 3, [0.15] * 3)]
    figures = _drawn(monkeypatch)
    plots.plot_imagination(rows, tmp_path / "img.png")
    ax_c, ax_m = figures[0][:2]
    assert len(ax_c.get_lines()) == len(ax_m.get_lines()) == 5
    assert any(line.get_label().startswith("m2 avt \u03ba=0.85") for line in ax_c.get_lines())
    assert len(ax_c.collections) == len(ax_m.collections) == 1  # only the row with intervals has a band
