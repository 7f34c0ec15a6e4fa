"""The paper's Table 3 ablation on affectdyn, over seeds, with 95% intervals (issue 24, item 2).

    python -m affectverse_ds.experiments.ablation --arms a,b,f --seeds 5 --variants base \\
        --out runs/ablation [--n-train 720 --n-test 72] [--keep-ratios 1.0,0.7,0.5,0.3]
    python -m affectverse_ds.experiments.ablation --recompute --out runs/ablation   # the tables from per_clip.json
    python -m affectverse_ds.experiments.ablation --recompute --out runs/new --against runs/old  # arm by arm

Arms are Table 3's rows, trained with the demo recipe (``launch/configs/demo.yaml``, 900 steps on 720 clips,
2 CPU ranks, the real DeepSpeed launcher) plus each arm's overrides (``demo.ARMS``): (a) the LoRA baseline,
(b) + temporal splitting (keep-mask training, no EWM), (f) AffectVerse (the EWM with the leak-free context,
``ewm.context_source=past``, belief tokens injected); ``f_full`` is (f) with the literal Algorithm 1 context.
Rows (c)-(e) are intermediate injection variants this code does not offer as switches. For every variant
(``base``; ``precursor``: a cue before the turn predicts the future) and seed it trains each arm, evaluates
them with the evaluation entry point (A+V+T, every keep ratio, rank mode) and reports

* per keep ratio and arm the mean HIT rate over seeds with a 95% t-interval across seeds and a bootstrap over
  test clips (per clip, the hit averaged over seeds; 2000 resamples, ``eval.intervals``);
* per keep ratio the comparisons (f)-(b), (f)-(a), (b)-(a) (and (f)-(f_full)): the t-interval of the
  per-seed differences and the paired clip bootstrap (both arms on the same resampled clips);
* Table 8 for the EWM arms: cosine and MSE of the imagined future against repeat-last and mean-of-observed,
  per clip (``imagination_trace``), with the same two kinds of interval.

Writes ``OUT/per_clip.json`` (every arm's, seed's and keep ratio's per-clip hits and fidelities: every table
can be recomputed from it with ``--recompute``), ``OUT/results.json`` and ``OUT/results.md``. A rerun reuses
a finished training (and evaluation) only if what made it matches (``run_spec.json`` beside it: overrides,
shards, the recipe's text); anything else is trained again. Training seed = ``train.seed``; the clips of a
variant are the same for every seed (``--data-seed``), so seeds vary initialisation, kappa draws, dropout
and data order.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from affectverse_ds import demo
from affectverse_ds.config import ConfigError, load_config
from affectverse_ds.eval.wheel import PACKAGED_WHEEL_DIR
from affectverse_ds.experiments.ablation_tables import (ARMS, EWM_ARMS, against, against_markdown, summarise,
                                                        to_markdown)
from affectverse_ds.train.checkpoint import latest_checkpoint

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
    extra = training_overrides(args)
    keep = ",".join(f"{k:g}" for k in args.keep_ratios)
    recipe = demo.CONFIG.read_text()
    raw: dict = {}
    for variant in args.variants:
        process_dir, shards = prepare(art, args, variant)
        for seed in range(args.seeds):
            base = out / variant / f"seed{seed}"
            ckpts, trained = {}, False
            for arm in args.arms:
                tag = ARMS[arm][0]
                spec = {"overrides": [f"train.seed={seed}", *extra, *ARMS[arm][2]], "shards": str(shards),
                        "recipe": recipe}
                done = reusable(base / tag, spec)
                if done is None:  # never trained, killed, or made with other arguments: train again
                    shutil.rmtree(base / tag, ignore_errors=True)
                    done, trained = demo.train(tag, shards, base, spec["overrides"], base / "logs"), True
                    write_spec(base / tag, spec)
                ckpts[arm] = done
            results = base / "results"
            spec = {"checkpoints": [str(c) for c in ckpts.values()], "keep_ratios": keep, "wheels": str(wheel_dir)}
            if trained or reusable(results, spec, needs_checkpoint=False) is None:  # ... and their evaluation
                shutil.rmtree(results, ignore_errors=True)
                demo.evaluate(list(ckpts.values()), shards, wheel_dir, results, "avt", keep,
                              base / "logs" / "evaluate.log", None, "--no-probe")
                write_spec(results, spec)
            collect(raw.setdefault(variant, {}), results, ckpts, seed, process_dir, shards, wheel_dir, args)
    out.mkdir(parents=True, exist_ok=True)
    (out / "per_clip.json").write_text(json.dumps({"args": vars(args), "raw": raw}) + "\n")
    return write_tables(out, raw, args)


def reusable(folder: Path, spec: dict, needs_checkpoint: bool = True):
    """The finished checkpoint (or True) of ``folder`` when its ``run_spec.json`` is ``spec``; else None."""
    try:
        if json.loads((folder / "run_spec.json").read_text()) != spec:
            return None
    except (OSError, ValueError):
        return None
    return latest_checkpoint(folder / "checkpoints") if needs_checkpoint else True


def write_spec(folder: Path, spec: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run_spec.json").write_text(json.dumps(spec, indent=1) + "\n")


def collect(raw: dict, results: Path, ckpts: dict, seed: int, process_dir: Path, shards: Path, wheel_dir: Path,
            args: argparse.Namespace) -> None:
    """One seed's evaluation into ``raw`` ({arm: {seed: {"score": {k: s}, "hits": {k: {clip: [..]}},
    "fidelity": ...}}}; keep ratios as strings, the JSON form)."""
    runs = json.loads((results / "affectdyn.json").read_text())["runs"]
    labels = demo._labels(results, {arm: ARMS[arm] for arm in ckpts})
    for arm, ckpt in ckpts.items():
        entry = raw.setdefault(arm, {}).setdefault(str(seed), {"score": {}, "hits": {}})
        for r in runs:
            if r["model"] != labels[arm] or r["modality"] != "avt":
                continue
            k = f"{float(r['keep_ratio']):g}"
            entry["score"][k] = float(r["score"])
            entry["hits"][k] = clip_hits(process_dir, demo.predictions_path(results, r), wheel_dir)
        if arm in EWM_ARMS:
            fid = clip_fidelity(ckpt, str(demo.CONFIG), [f"data.shard_dir={shards}", *args.override],
                                args.keep_ratios)
            entry["fidelity"] = {f"{k:g}": v for k, v in fid.items()}


def write_tables(out: Path, raw: dict, args: argparse.Namespace) -> dict:
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


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", type=arms_list, default=["a", "b", "f"], help=f"Table 3 rows: {', '.join(ARMS)}")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--variants", type=lambda s: s.split(","), default=["base"])
    p.add_argument("--n-train", type=int, default=720)
    p.add_argument("--n-test", type=int, default=72)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--epochs", type=positive_int, default=None, help="override train.epochs of the demo recipe")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", type=override,
                   help="a config override for every arm's training on top of the recipe (repeatable; part of "
                        "what a rerun must match to reuse a training). Training only: the evaluation reads the "
                        "model sections from each checkpoint and everything else from the recipe. Refused for "
                        f"the keys the experiment sets itself: {', '.join(RESERVED)}")
    p.add_argument("--keep-ratios", type=lambda s: [float(x) for x in s.split(",")],
                   default=[1.0, 0.7, 0.5, 0.3])
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--recompute", action="store_true", help="only rewrite the tables from OUT/per_clip.json")
    p.add_argument("--against", type=Path, default=None, metavar="OTHER",
                   help="also compare each arm with the same arm of another run of this experiment (OTHER/per_clip.json, "
                        "e.g. made before a code change) into OUT/against.md and against.json")
    p.add_argument("--wheel-dir", default=str(PACKAGED_WHEEL_DIR),
                   help="MER-UniBench emotion wheels for scoring (default: the ones shipped with the package)")
    return p.parse_args(argv)


# keys each training sets itself (every arm's switches, the seed, the data, the run folder, --epochs): an override
# of one, or of the section holding it, would be silently replaced or would make every seed or arm the same training
RESERVED = tuple(sorted({o.split("=", 1)[0] for arm in ARMS.values() for o in arm[2]}
                        | {"train.seed", "train.out_dir", "train.epochs", "data.shard_dir"}))


def override(text: str) -> str:
    key = text.split("=", 1)[0].strip()
    if "=" not in text or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    hit = [r for r in RESERVED if r == key or r.startswith(key + ".")]
    if hit:
        raise argparse.ArgumentTypeError(f"{key} sets {', '.join(hit)}, which the experiment sets itself "
                                         f"(reserved: {', '.join(RESERVED)}; train.epochs: use --epochs)")
    return text


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1")
    return n


def training_overrides(args: argparse.Namespace) -> list[str]:
    """What every arm's training gets on top of the recipe, before its seed and its own switches."""
    return [*([f"train.epochs={args.epochs}"] if args.epochs else []), *args.override]


def check_args(args: argparse.Namespace) -> None:
    """Refuse, with one line, before any data is made or any training started: an override the recipe does not
    take, and a folder --recompute or --against needs that holds no finished run."""
    if not args.recompute:
        for arm in args.arms:
            try:
                load_config(demo.CONFIG, [*training_overrides(args), *ARMS[arm][2]])
            except ConfigError as e:
                raise SystemExit(f"--override: {e}") from None
    for flag, folder in (("--recompute", Path(args.out) if args.recompute else None), ("--against", args.against)):
        if folder is not None:
            require_finished(folder, flag)


def require_finished(folder: Path, flag: str) -> None:
    if not (folder / "per_clip.json").is_file():
        raise SystemExit(f"{flag}: {folder} holds no per_clip.json (a finished run of this experiment writes it)")


def arms_list(text: str) -> list[str]:
    arms = text.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown arm(s) {', '.join(unknown)}; known: {', '.join(ARMS)}")
    return arms


def recompute(out: Path) -> dict:
    """The tables again from ``out/per_clip.json``, with the arguments it was made with."""
    saved = json.loads((out / "per_clip.json").read_text())
    return write_tables(out, saved["raw"], argparse.Namespace(**saved["args"]))


def compare(out: Path, other: Path) -> str:
    """``out``'s arms against ``other``'s (:func:`ablation_tables.against`), written to ``out/against.md|json``."""
    for folder in (out, other):
        require_finished(folder, "--against")
    saved, theirs = (json.loads((f / "per_clip.json").read_text()) for f in (out, other))
    # test clips are named by index: only runs on the same clips may be paired clip by clip
    differ = [k for k in ("data_seed", "n_train", "n_test") if saved["args"].get(k) != theirs["args"].get(k)]
    if differ:
        raise SystemExit(f"--against: {other} was made on other clips ({', '.join(differ)} differ); "
                         "its arms cannot be paired clip by clip")
    rows = against(saved["raw"], theirs["raw"], saved["args"]["keep_ratios"])
    if not rows:
        raise SystemExit(f"--against: {out} and {other} share no variant, arm and keep ratio")
    (out / "against.json").write_text(json.dumps({"here": str(out), "there": str(other), "rows": rows}, indent=1) + "\n")
    text = against_markdown(rows, out.name, other.name)
    (out / "against.md").write_text(text)
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    check_args(args)
    t0 = time.time()
    recompute(Path(args.out)) if args.recompute else run(args)
    print((Path(args.out) / "results.md").read_text())
    if args.against is not None:
        print(compare(Path(args.out), args.against))
    print(f"finished in {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
