"""The figures of an evaluation run: score vs keep ratio, imagination fidelity vs step, MAMA attention (paper
Fig. 3) and a clip's prediction trajectory (paper Fig. 7). PNG files through matplotlib's Agg backend."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from affectverse_ds.eval.report import (PREDICTOR_NAMES, SETTING_NAMES, STREAM_NAMES, ImaginationRow, RunScore,
                                        display, order_benchmarks)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _band(ax, x, low, high, color) -> None:
    """A shaded interval where one was computed (NaN-free), else nothing."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    if len(low) == len(x) and np.isfinite(low).all() and np.isfinite(high).all():
        ax.fill_between(x, low, high, color=color, alpha=0.15, linewidth=0)


def plot_keep_ratio(scores: Sequence[RunScore], fixed: str, path: str | Path) -> Path:
    """Score vs keep ratio (Table 2 as a figure): one panel per benchmark, every evaluated model on the same
    axes (one colour per model, one line style per setting; the fixed checkpoint drawn thickest), each line
    with its 95 % bootstrap interval over test clips as a band.

    Raises:
        ValueError: ``fixed`` has no score.
    """
    if not any(s.model == fixed for s in scores):
        raise ValueError(f"no scores of model {fixed!r} to plot")
    plt = _pyplot()
    benches = order_benchmarks({s.benchmark for s in scores})
    models = list(dict.fromkeys(s.model for s in scores))
    colours = {m: f"C{i % 10}" for i, m in enumerate(models)}
    styles = ["-", "--", ":", "-."]
    cols = min(3, len(benches))
    rows = math.ceil(len(benches) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax, bench in zip(axes.flat, benches):
        mine = [s for s in scores if s.benchmark == bench]
        settings = list(dict.fromkeys(s.modality for s in mine))
        for model in models:
            for j, setting in enumerate(settings):
                pts = sorted((s for s in mine if s.model == model and s.modality == setting), key=lambda s: s.keep_ratio)
                if not pts:
                    continue
                x = [s.keep_ratio for s in pts]
                ax.plot(x, [s.score for s in pts], marker="o", color=colours[model], linestyle=styles[j % 4],
                        linewidth=2.2 if model == fixed else 1.2,
                        label=f"{model} {SETTING_NAMES.get(setting, setting)} ({setting})")
                _band(ax, x, [s.low for s in pts], [s.high for s in pts], colours[model])
        metric = next((s.metric for s in mine if s.metric), "")
        ax.set_title(display(bench))
        ax.set_xlabel("keep ratio \u03ba")
        ax.set_ylabel(f"{metric} (%)" if metric else "score (%)")
        ax.invert_xaxis()  # the paper reads from full observation (1.0) to 0.1
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(benches):]:
        ax.axis("off")
    fig.suptitle(f"Score vs keep ratio, 95% bootstrap intervals over clips (fixed: {fixed})")
    return _save(fig, path, plt)


def plot_imagination(rows: Sequence[ImaginationRow], path: str | Path) -> Path:
    """Imagination fidelity vs rollout step: cosine (left) and MSE (right), every model, setting and split
    point on the same axes (one colour each), one line style per predictor, stream marked; 95 % bootstrap
    intervals over clips as bands."""
    plt = _pyplot()
    rows = [r for r in rows if r.n > 0 and r.cos]
    if not rows:
        raise ValueError("no imagination statistics to plot")
    fig, (ax_c, ax_m) = plt.subplots(1, 2, figsize=(10, 3.8))
    styles = {"ewm": "-", "repeat_last": "--", "mean_observed": ":"}
    markers = {"v": "o", "a": "s"}
    groups = list(dict.fromkeys((r.model, r.modality, round(r.keep_ratio, 9)) for r in rows))
    colours = {g: f"C{i % 10}" for i, g in enumerate(groups)}
    for r in rows:
        group = (r.model, r.modality, round(r.keep_ratio, 9))
        steps = np.arange(1, len(r.cos) + 1)
        tag = f"{r.model} {r.modality} \u03ba={r.keep_ratio:g} " if len(groups) > 1 else ""
        label = f"{tag}{STREAM_NAMES.get(r.stream, r.stream)}: {PREDICTOR_NAMES.get(r.predictor, r.predictor)}"
        kw = dict(color=colours[group], linestyle=styles.get(r.predictor, "-"), marker=markers.get(r.stream))
        ax_c.plot(steps, r.cos, label=label, **kw)
        ax_m.plot(steps, r.mse, label=label, **kw)
        _band(ax_c, steps, r.cos_low, r.cos_high, colours[group])
        _band(ax_m, steps, r.mse_low, r.mse_high, colours[group])
    for ax, name in ((ax_c, "cosine to real future \u2191"), (ax_m, "MSE to real future \u2193")):
        ax.set_xlabel("rollout step")
        ax.set_ylabel(name)
        ax.set_xticks(range(1, max(len(r.cos) for r in rows) + 1))
        ax.grid(alpha=0.3)
    ax_m.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # outside: the lines stay visible
    fig.suptitle("Imagination fidelity vs rollout step (95% bootstrap intervals over clips)")
    return _save(fig, path, plt)


def memory_labels(n_steps: int, n_future: int) -> list[str]:
    """Tick labels of the MAMA memory [video steps 1..S ; audio steps 1..S], N_s tokens per step."""
    return [f"{m}{s + 1}.{j + 1}" for m in ("V", "A") for s in range(n_steps) for j in range(n_future)]


def modality_mass(weights: np.ndarray) -> np.ndarray:
    """(N_q, 2): each belief token's attention mass on the video half and the audio half of the memory."""
    half = weights.shape[1] // 2
    return np.stack([weights[:, :half].sum(1), weights[:, half:].sum(1)], axis=1)


def plot_mama(weights: np.ndarray, n_steps: int, path: str | Path, title: str = "") -> Path:
    """Paper Fig. 3: belief-to-memory attention (left) and its modality-level mass per belief token (right).

    Args:
        weights: (N_q, N_M) head-averaged MAMA attention, memory laid out [video steps ; audio steps]
            (N_M = 2 S N_s), rows summing to 1.
        n_steps: S, to draw the step and modality boundaries.
        path: PNG to write.
        title: figure title (e.g. model, benchmark and sample count).
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[1] % (2 * n_steps):
        raise ValueError(f"MAMA weights {weights.shape} do not split into 2 x {n_steps} steps")
    plt = _pyplot()
    n_q, n_m = weights.shape
    n_future = n_m // (2 * n_steps)
    fig, (ax_h, ax_b) = plt.subplots(1, 2, figsize=(max(8.0, 0.22 * n_m + 4), 0.45 * n_q + 2.2),
                                     gridspec_kw={"width_ratios": [4, 1]})
    image = ax_h.imshow(weights, aspect="auto", cmap="viridis")
    ax_h.set_yticks(range(n_q), [f"B{i + 1}" for i in range(n_q)])
    labels = memory_labels(n_steps, n_future)
    stride = max(1, n_m // 24)
    ax_h.set_xticks(range(0, n_m, stride), labels[::stride], rotation=90, fontsize=7)
    for k in range(1, 2 * n_steps):
        ax_h.axvline(k * n_future - 0.5, color="white", linewidth=0.6 if k % n_steps else 1.8)
    ax_h.set_xlabel("memory token (modality, step.token)")
    ax_h.set_title("belief \u2192 memory attention")
    fig.colorbar(image, ax=ax_h, fraction=0.03)
    mass = modality_mass(weights)
    y = np.arange(n_q)
    ax_b.barh(y, mass[:, 0], color="tab:blue", label="video")
    ax_b.barh(y, mass[:, 1], left=mass[:, 0], color="tab:orange", label="audio")
    ax_b.set_yticks(y, [f"B{i + 1}" for i in range(n_q)])
    ax_b.invert_yaxis()  # same row order as the heatmap
    ax_b.set_xlim(0, max(1.0, float(mass.sum(1).max())))
    ax_b.set_title("modality mass")
    ax_b.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=2)
    if title:
        fig.suptitle(title)
    return _save(fig, path, plt)


def plot_trajectory(ratios: Sequence[float], predictions: Sequence[Sequence[str]], path: str | Path,
                    title: str = "") -> Path:
    """Paper Fig. 7: the predicted emotion words at each observed fraction (one marker per word and ratio)."""
    if len(ratios) != len(predictions):
        raise ValueError(f"{len(ratios)} ratios but {len(predictions)} predictions")
    plt = _pyplot()
    none = "(no emotion)"
    words = list(dict.fromkeys(w for p in predictions for w in (p or [none])))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(ratios) + 2), 0.4 * len(words) + 1.8))
    for r, pred in zip(ratios, predictions):
        for w in pred or [none]:
            ax.scatter(100 * r, words.index(w), s=60, color="tab:red" if not pred else "tab:blue")
    ax.set_yticks(range(len(words)), words)
    ax.set_xticks([100 * r for r in ratios], [f"{100 * r:.0f}%" for r in ratios])
    ax.set_xlabel("observed fraction of the clip")
    ax.set_ylim(-0.7, len(words) - 0.3)
    ax.grid(alpha=0.3)
    ax.set_title(title or "Prediction vs observation ratio")
    return _save(fig, path, plt)


def _save(fig, path: str | Path, plt) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # keeps legends placed outside the axes
    plt.close(fig)
    return path
