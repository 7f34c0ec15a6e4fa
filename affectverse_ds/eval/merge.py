"""Rank outputs gathered on rank 0 -> one output: samples concatenated per run, statistics added."""
from __future__ import annotations

from typing import Iterable

from affectverse_ds.eval.inference import RankOutput, RunResult
from affectverse_ds.eval.probes import FidelitySums, MamaSums


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
            index[key].cut_short |= run.cut_short
        for key, sums in part.fidelity.items():
            merged.fidelity.setdefault(key, FidelitySums()).merge(sums)
        for key, sums in part.mama.items():
            merged.mama.setdefault(key, MamaSums()).merge(sums)
    return merged


def fidelity_by_setting(merged: RankOutput) -> dict[tuple[str, str, str, float], FidelitySums]:
    """Table 8 pools the benchmarks: (model, '*', setting, kappa) -> sums over every benchmark."""
    pooled: dict[tuple[str, str, str, float], FidelitySums] = {}
    for (model, _bench, setting, k), sums in merged.fidelity.items():
        pooled.setdefault((model, "*", setting, k), FidelitySums()).merge(sums)
    return pooled
