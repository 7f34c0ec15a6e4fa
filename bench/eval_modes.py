"""Evaluation speed: ``rank`` vs ``generate`` side by side on the same test shards and checkpoint.

    .venv/bin/python bench/eval_modes.py                         # self-contained: tiny backbone, fixture shards
    .venv/bin/python bench/eval_modes.py --checkpoint CKPT --config CONFIG --benchmarks mer2023 cmumosi \\
        [--max-batches 20] [--repeats 2] [--max-new-tokens N]

Without ``--checkpoint`` the bench builds its own inputs in a temporary folder: raw fixture clips
(``data_prep.make_fixtures``) turned into real test shards by the shard builder, and a tiny-backbone
checkpoint exported as training does. Both modes then run through the evaluator's own code path
(``eval.evaluate``, no imagination probe, nothing written) on exactly the same batches.

Reported per mode: samples/s of the model calls alone (``generate`` / ``score_candidates``) and of the
whole run (loading and encoding the shards included), best of ``--repeats``; then the ratio
rank / generate. ``generate`` runs until ``<|im_end|>`` or ``eval.max_new_tokens``: an untrained tiny
model rarely stops early, so its run is close to the worst case; ``--max-new-tokens auto`` caps it at
the longest candidate answer, which is what a trained model emits.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from affectverse_ds import preflight  # noqa: E402
from affectverse_ds.benchmarks import get_benchmark  # noqa: E402
from affectverse_ds.config import load_config  # noqa: E402
from affectverse_ds.eval import evaluate as ev  # noqa: E402

DEFAULT_BENCHMARKS = ("meld", "cmumosi")  # one discrete, one sentiment: both closed-set


def build_inputs(folder: Path, benchmarks: list[str], n: int, backbone: Path) -> tuple[Path, Path]:
    """Fixture test shards (real builder) and a tiny checkpoint; returns (config file, checkpoint)."""
    from affectverse_ds.config import dump_config
    from affectverse_ds.data.shards import build_shards
    from affectverse_ds.model.affect_model import build_model
    from affectverse_ds.model.export import export_trainable
    from data_prep.make_fixtures import make_fixture

    shards = folder / "shards"
    for name in benchmarks:
        bench = get_benchmark(name)
        root = make_fixture(name, "unibench", folder / "raw" / name, n=n, seed=1)
        build_shards(name, "unibench", root, bench.test_split, shards, progress=False)
    cfg = load_config(REPO / "launch" / "configs" / "tiny.yaml",
                      [f"backbone.path={backbone}", f"data.shard_dir={shards}", "data.num_workers=0"])
    torch.manual_seed(0)
    model = build_model(cfg, "cpu")
    ckpt = folder / "ckpt" / "step_000001"
    export_trainable(model, cfg, ckpt / "export")
    config = dump_config(cfg, folder / "bench.yaml")
    return config, ckpt


def longest_candidate(cfg, benchmarks: list[str]) -> int:
    """Tokens of the longest closed-set answer (with ``<|im_end|>``): what a trained model generates."""
    from affectverse_ds.model.backbone import load_tokenizer

    tok = load_tokenizer(cfg.backbone.path)
    return max(len(ids) for b in benchmarks
               for ids in ev.candidate_token_ids(tok, ev.candidate_answers(get_benchmark(b)) or []))


def time_mode(cfg, ckpt: str, benchmarks: list[str], mode: str, max_batches: int | None, repeats: int):
    """Best-of-``repeats`` (model seconds, wall seconds, samples) for one mode."""
    best = None
    for _ in range(repeats):
        plan = ev.EvalPlan([ckpt], benchmarks=benchmarks, modalities=cfg.eval.modalities, keep_ratios=[1.0],
                           mode=mode, max_batches=max_batches, probe=False, write=False)
        start = time.perf_counter()
        outcome = ev.evaluate(cfg, plan)
        wall = time.perf_counter() - start
        model_s = sum(r.seconds for r in outcome.runs)
        samples = sum(len(r.samples) for r in outcome.runs)
        if best is None or model_s < best[0]:
            best = (model_s, wall, samples)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="step_NNNNNN/ or export/ (default: a tiny fixture checkpoint)")
    p.add_argument("--config", help="config with data.shard_dir (required with --checkpoint)")
    p.add_argument("--benchmarks", nargs="+", default=list(DEFAULT_BENCHMARKS))
    p.add_argument("--n", type=int, default=8, help="fixture samples per benchmark (self-contained mode)")
    p.add_argument("--max-batches", type=int, default=None, help="batches per benchmark (default: all)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-new-tokens", default=None, help="generate's cap: a number, or 'auto' (longest candidate)")
    p.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    args = p.parse_args(argv)
    closed = [b for b in args.benchmarks if ev.candidate_answers(get_benchmark(b))]
    if closed != args.benchmarks:
        print(f"note: open-vocabulary benchmarks have no candidates and are left out: "
              f"{sorted(set(args.benchmarks) - set(closed))}")
    with tempfile.TemporaryDirectory(prefix="eval_modes_") as tmp:
        if args.checkpoint:
            if not args.config:
                p.error("--config is required with --checkpoint")
            config, ckpt = Path(args.config), args.checkpoint
            checks = preflight.evaluation_checks(load_config(config, args.overrides), tmp, args.benchmarks, [ckpt])
            preflight.exit_on_failure(lambda: preflight.require(checks))
        else:
            from affectverse_ds.tools.make_tiny_backbone import make_tiny_backbone

            backbone = REPO / "artifacts" / "tiny_backbone"
            if not (backbone / "config.json").is_file():
                backbone = make_tiny_backbone(Path(tmp) / "backbone", seed=0)
            print(f"building fixture shards ({args.n} per benchmark) and a tiny checkpoint ...")
            config, ckpt = build_inputs(Path(tmp), closed, args.n, backbone)
        overrides = list(args.overrides)
        cfg = load_config(config, overrides)
        if args.max_new_tokens == "auto":
            overrides.append(f"eval.max_new_tokens={longest_candidate(cfg, closed)}")
        elif args.max_new_tokens:
            overrides.append(f"eval.max_new_tokens={int(args.max_new_tokens)}")
        cfg = load_config(config, overrides)
        print(f"benchmarks {', '.join(closed)}; batch {cfg.eval.batch_size}; generate cap "
              f"{cfg.eval.max_new_tokens} tokens; device {'cuda' if torch.cuda.is_available() else 'cpu'}; "
              f"threads {torch.get_num_threads()}")
        results = {mode: time_mode(cfg, str(ckpt), closed, mode, args.max_batches, args.repeats)
                   for mode in ("generate", "rank")}
    print(f"\n{'mode':<10}{'samples':>9}{'model s':>10}{'model samples/s':>17}{'wall s':>9}{'wall samples/s':>16}")
    for mode, (model_s, wall, n) in results.items():
        print(f"{mode:<10}{n:>9}{model_s:>10.2f}{n / model_s:>17.2f}{wall:>9.2f}{n / wall:>16.2f}")
    (g_model, g_wall, g_n), (r_model, r_wall, r_n) = results["generate"], results["rank"]
    ratio = (r_n / r_model) / (g_n / g_model)
    print(f"\nrank / generate samples/s: {ratio:.2f}x (model calls), {(r_n / r_wall) / (g_n / g_wall):.2f}x (wall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
