"""The evaluator: checkpoints -> predictions on the test shards -> MER-UniBench scores, tables and plots.

    python launch/evaluate.py --checkpoint CKPT [CKPT ...] --config CONFIG [--benchmarks ...] \\
        [--modality avt,at,vt] [--keep-ratio 1.0,0.7,0.5,0.3,0.1] [--mode generate|rank] [--out results]

For every checkpoint, benchmark and modality setting, each rank reads its share of the test split
(``data.loader.build_eval_loader``: sample ``g`` goes to rank ``g % world``), and for every keep ratio
kappa (the model observes only the first kappa of each audio/video region, docs/evaluation.md) predicts:

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

This module orchestrates; each job has its own module, in the order a run meets them:

    model/export.py    resolve a checkpoint folder, build its model, load its weights
    eval/inference.py  one rank's predictions (candidates, generate / rank, the probes on each batch)
    eval/probes.py     Table 8 imagination fidelity and MAMA attention sums
    eval/merge.py      rank outputs gathered on rank 0 -> one
    eval/gold.py       the test split's labels (shards) and the builder's rejects (manifest)
    eval/results.py    scoring, ``<benchmark>.json``, predictions, ``summary.md`` and plots
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from affectverse_ds.benchmarks import get_benchmark
from affectverse_ds.config import AffectVerseConfig, load_config
from affectverse_ds.data.loader import check_unique_keys, list_shards
from affectverse_ds.eval import report  # noqa: F401  (re-exported: callers use ev.report)
from affectverse_ds.eval.gold import GoldSet, label_from_json, read_gold  # noqa: F401
from affectverse_ds.eval.inference import (Candidate, EvalPlan, RankOutput, RunResult, SampleResult,  # noqa: F401
                                           candidate_answers, candidate_token_ids, decode_answers, predict_batch,
                                           run_rank)
from affectverse_ds.eval.merge import merge_outputs
from affectverse_ds.eval.probes import (MAMA_SAMPLES, PREDICTORS, STREAMS, FidelitySums, MamaSums,  # noqa: F401
                                        _pool_future, fidelity_from_trace, imagination_trace, mama_weights,
                                        probe_kappas, step_fidelity)
from affectverse_ds.eval.results import (PLOTS_DIR, EvalOutcome, ScoredRun, score_all, score_run,  # noqa: F401
                                         write_benchmark_json, write_results, write_summary)
from affectverse_ds import distributed as dist
from affectverse_ds.model.export import (EXPORT_DIR, CheckpointError, CheckpointRef, load_checkpoint_model,  # noqa: F401
                                         load_trained_weights, model_config, resolve_checkpoint)


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
    for ref in refs:  # recorded in <benchmark>.json and summary.md too
        if ref.unverified:
            dist.print0(f"[eval] warning: {ref.unverified}", info=info)
    for name in plan.benchmarks or cfg.data.eval_benchmarks:  # a repeated test sample would be scored twice
        check_unique_keys(list_shards(cfg.data.shard_dir, name, [get_benchmark(name).test_split]))
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
    device = dist.pick_device(info)  # before the group: NCCL binds to the current CUDA device
    if info.world_size > 1:
        dist.init_distributed(info)
    plan = EvalPlan(list(checkpoints), benchmarks=list(benchmarks) if benchmarks else None,
                    modalities=cfg.eval.modalities, keep_ratios=cfg.eval.keep_ratios, mode=cfg.eval.mode,
                    out_dir=out_dir, max_batches=max_batches, probe=probe)
    outcome = evaluate(cfg, plan, info, device)
    if outcome is not None:
        dist.print0(f"[eval] wrote {len(outcome.files)} files under {out_dir}/ "
                    f"(summary: {Path(out_dir) / 'summary.md'})", info=info)
    if info.world_size > 1:
        dist.shutdown()  # the other ranks wait for rank 0's writing instead of exiting under it
    return outcome
