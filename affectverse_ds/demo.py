"""`make demo`: the whole system on the embedded default, end to end, on 2 CPU cores.

    python -m affectverse_ds.demo [--quick]

tiny backbone -> synthetic `affectdyn` clips (MER-UniBench processed layout) -> shard builder ->
`deepspeed --module affectverse_ds.launch.train --ds ds_configs/zero2.json --config launch/configs/demo.yaml`
on 2 CPU ranks for three rows of the paper's Table 3: (f) AffectVerse, (a) the LoRA baseline and (b) the
control between them, keep-mask training without the EWM -> the evaluation entry point under torchrun on 2
ranks in A+V+T, A+T, V+T and at keep ratios 1.0 / 0.5 / 0.3 -> the summary, the three arms side by side
with the paired bootstrap interval of (f)-(b) and (f)-(a) over test clips, and the checks the demo exists
to show, printed whichever way they come out.

It needs no clone: the entry points run as package modules and the presets are package data, so an installed
package (`pip install .`) runs it; artifacts and runs go under the current folder.
"""
from __future__ import annotations

import argparse
import codecs
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from affectverse_ds import configs, preflight
from affectverse_ds.distributed import free_port

CONFIG = configs.LAUNCH / "demo.yaml"
DS_CONFIG = configs.DEEPSPEED / "zero2.json"
# the launchers as modules of this interpreter: their console scripts need not be on PATH or beside it (a
# scratch venv that borrows its dependencies has neither), and every rank runs this interpreter
DEEPSPEED = [sys.executable, "-m", "deepspeed.launcher.runner"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# the rows of the paper's Table 3 the demo trains (the ablation experiment trains them over seeds):
# row -> (run folder, what it is, config overrides on the demo recipe)
ARMS = {
    "f": ("ewm", "AffectVerse", ["ewm.enabled=true", "ewm.temporal_split=true"]),
    "a": ("lora", "LoRA baseline", ["ewm.enabled=false", "ewm.temporal_split=false"]),
    "b": ("keepmask", "keep-mask training, no EWM", ["ewm.enabled=false", "ewm.temporal_split=true"]),
}
RANKS = 2  # deepspeed --num_gpus / torchrun --nproc_per_node of the training and evaluation stages
DEMO_DISK = 1 << 30  # measured --quick: clips + shards 158 MB, tiny backbone 86 MB, runs 8 MB; the full demo has 2x the clips
# CPU numerics pinned to the AVX2 code paths of ATen, MKL and oneDNN: by default each picks the widest
# vector ISA of the machine (AVX-512 on one, AVX2 on another), and their float results differ in the last
# bits (measured: the same step's gradients hash differently under each library's other code path),
# which five epochs of training amplify into different scores. On any AVX2 CPU these give the same bits.
REPRODUCIBLE_CPU = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


# What the stages print that is worth a look while they run: the trainer's step bar (tqdm: percent, steps,
# elapsed<ETA, loss) and the evaluator's "[eval] <model> <benchmark> <setting>: <s> s" line per finished setting.
TRAIN_BAR = re.compile(r"^\s*(train:\s*\d+%.*?\d+/\d+ \[[^\]]*\])")  # up to tqdm's "]": other output may follow
EVAL_LINE = re.compile(r"^\[eval\] (?P<model>\S+) (?P<bench>\S+) (?P<setting>\S+): [\d.]+ s$")


class Progress:
    """Shows a stage's progress lines on the terminal while the whole output goes to its log.

    On a terminal the training bar is redrawn in place; elsewhere (a pipe, a test) a bar line is printed at
    most every ``every`` seconds, and the last one when the stage ends. ``eval_total`` (settings to run)
    turns each finished evaluation setting into "k/N".
    """

    def __init__(self, tag: str, eval_total: int = 0, every: float = 20.0, stream=None):
        self.tag, self.eval_total, self.every = tag, eval_total, every
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty()
        self.eval_done, self.last_shown, self.pending = 0, float("-inf"), ""

    def line(self, text: str) -> None:
        """One line (or ``\r`` segment) of the stage's output."""
        text = text.strip()
        if (bar := TRAIN_BAR.match(text)) is not None:
            self.pending = text = bar[1]
            now = time.monotonic()
            if self.live:
                self.stream.write(f"\r\x1b[K  [{self.tag}] {text}")
                self.stream.flush()
            elif now - self.last_shown >= self.every:
                self._print(text)
                self.pending, self.last_shown = "", now
        elif (m := EVAL_LINE.match(text)) is not None:
            self.eval_done += 1
            total = f"/{self.eval_total}" if self.eval_total else ""
            self._print(f"evaluated {self.eval_done}{total}: {m['model']} {m['bench']} {m['setting']}"
                        f" ({text.rsplit(': ', 1)[1]})")

    def close(self) -> None:
        """The last bar state stays on screen, on its own line."""
        if self.pending:
            if self.live:
                self.stream.write("\n")
            else:
                self._print(self.pending)
            self.pending = ""
        self.stream.flush()

    def _print(self, text: str) -> None:
        if self.live and self.pending:
            self.stream.write("\r\x1b[K")  # clear the bar drawn on this line; the next update redraws it
        self.stream.write(f"  [{self.tag}] {text}\n")
        self.stream.flush()


def _run(cmd: list[str], log: Path, progress: Progress | None = None) -> None:
    """Run one stage, its whole output in ``log`` and its progress lines on the terminal; a failure stops
    the demo with the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               **REPRODUCIBLE_CPU)
    print(f"$ {' '.join(cmd)}\n  (log: {log})", flush=True)
    progress = progress or Progress(log.stem)
    decoder, buffer = codecs.getincrementaldecoder("utf-8")(errors="replace"), ""
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        while chunk := os.read(proc.stdout.fileno(), 65536):
            f.write(chunk)
            f.flush()
            *segments, buffer = re.split(r"[\r\n]", buffer + decoder.decode(chunk))
            for segment in segments:
                progress.line(segment)
        progress.line(buffer + decoder.decode(b"", final=True))
        code = proc.wait()
    progress.close()
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"stage failed (exit {code}); last lines of {log}:\n{tail}")


def demo_checks(runs: Path, art: Path, wheel_dir: Path) -> list[preflight.Check]:
    """What every stage needs that can be known before the first one: the launchers, writable folders, room
    on disk, the wheels, and configs that load and make their global batch on the demo's ranks. (Backbone and
    shards are the first stage's output; train.py and evaluate.py check them when their stage starts.)"""
    def launchers() -> str | None:
        import importlib.util

        absent = [cmd[2] for cmd in (DEEPSPEED, TORCHRUN) if importlib.util.find_spec(cmd[2]) is None]
        return (f"{', '.join(absent)} not importable by {sys.executable}: install the requirements "
                f"(pip install -r requirements.txt)") if absent else None

    def stage_config(tag: str, extra: list[str]) -> str | None:
        from affectverse_ds.config import ConfigError, load_config

        try:
            cfg = load_config(CONFIG, [f"train.out_dir={runs / tag}", *extra])
        except ConfigError as err:
            return f"{CONFIG} ({tag} stage): {err}: fix the preset"
        return preflight.world_size(cfg.train, RANKS)

    return [launchers, lambda: preflight.writable(runs), lambda: preflight.writable(art),
            lambda: preflight.free_disk(art, DEMO_DISK, "the demo"), lambda: preflight.wheels(wheel_dir),
            *(lambda tag=tag, extra=extra: stage_config(tag, extra) for tag, _, extra in ARMS.values())]


def prepare_data(art: Path, n_train: int, n_test: int, seed: int) -> tuple[Path, Path]:
    """Tiny backbone, affectdyn clips and their shards (each skipped when already there).

    Returns (the processed-layout folder of the clips, the shard folder).
    """
    from affectverse_ds.data.shards import ShardLimits, build_shards
    from affectverse_ds.tools.make_tiny_backbone import is_current, make_tiny_backbone
    from affectverse_ds.benchmarks.affectdyn_gen import make_affectdyn

    backbone = art / "tiny_backbone"
    if not is_current(backbone):  # missing, or written by an older make_tiny_backbone
        make_tiny_backbone(backbone)
        print(f"tiny backbone written to {backbone}")
    raw = art / "demo" / f"raw_{n_train}_{n_test}_{seed}"
    if not (raw / "affectdyn-process" / "label.npz").is_file():
        make_affectdyn(raw, n_train, n_test, seed, workers=2, overwrite=True)
    shards = art / "demo" / f"shards_{n_train}_{n_test}_{seed}"
    for split in ("train", "test"):
        # several small shards: every rank x loader worker needs at least one
        report = build_shards("affectdyn", "unibench", raw, split, shards, workers=2, resume=True,
                              limits=ShardLimits(max_count=max(4, n_train // 10)), progress=False)
        print(f"shards: affectdyn/{split}: {report.accepted} accepted, {report.rejected} rejected, "
              f"{len(report.shards)} shards in {shards}")
    return raw / "affectdyn-process", shards


def train(tag: str, shards: Path, runs: Path, extra: list[str], logs: Path) -> Path:
    out = runs / tag
    _run([*DEEPSPEED, "--num_gpus", str(RANKS), "--master_port", str(free_port()),
          "--module", "affectverse_ds.launch.train", "--ds", str(DS_CONFIG), "--config", str(CONFIG),
          f"data.shard_dir={shards}", f"train.out_dir={out}", *extra], logs / f"train_{tag}.log",
         Progress(f"train {tag}"))
    from affectverse_ds.train.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(out / "checkpoints")
    if ckpt is None:
        raise SystemExit(f"{tag}: training finished without a complete checkpoint in {out}")
    return ckpt


def evaluate(checkpoints: list[Path], shards: Path, wheel_dir: Path, results: Path, modalities: str, keep: str,
             log: Path, progress: Progress | None = None, *flags: str) -> None:
    """The evaluation entry point over ``checkpoints`` on affectdyn's test shards in rank mode, into ``results``."""
    _run([*TORCHRUN, "--nproc_per_node", str(RANKS), "--master_port", str(free_port()),
          "-m", "affectverse_ds.launch.evaluate", "--checkpoint", *map(str, checkpoints), "--config", str(CONFIG),
          "--benchmarks", "affectdyn", "--modality", modalities, "--keep-ratio", keep, "--mode", "rank", *flags,
          "--out", str(results), f"data.shard_dir={shards}", f"eval.wheel_dir={wheel_dir}"], log, progress)


def predictions_path(results: Path, run: dict) -> Path:
    """A run's predictions file (``affectdyn.json`` names it relative to the results folder, or absolute)."""
    path = Path(run["predictions_file"])
    return path if path.is_absolute() else results / path


def chance_level(process_dir: Path, wheel_dir: Path) -> float:
    """Expected HIT rate (%) of a uniformly random class guess: the mean score of the six constant predictions."""
    from affectverse_ds.benchmarks import get_benchmark
    from affectverse_ds.eval.predictions import Prediction, PredictionSet
    from affectverse_ds.eval.unibench import ScoringContext, score_predictions
    from affectverse_ds.eval.wheel import load_wheels

    bench = get_benchmark("affectdyn")
    labels = bench.load_labels(process_dir, bench.test_split)
    ctx = ScoringContext(load_wheels(wheel_dir))
    scores = []
    for cls in bench.classes:
        preds = PredictionSet(Path(f"constant-{cls}"))
        for name in labels.labels:
            preds.add(name, Prediction(items=(cls,)))
        scores.append(score_predictions(bench, labels, preds, ctx).main)
    return sum(scores) / len(scores)  # ScoreReport.main is already in percent


def checks(results: Path, chance: float, labels: dict[str, str]) -> list[str]:
    """The demo's learning claim, measured: every arm above 2x chance in each modality setting."""
    runs = json.loads((results / "affectdyn.json").read_text())["runs"]
    score = {(r["model"], r["modality"], r["keep_ratio"]): r["score"] for r in runs}
    lines = [f"chance level (uniform random class), HIT: {chance:.2f}; 2x chance: {2 * chance:.2f}"]
    for row, model in labels.items():
        for setting in ("avt", "at", "vt"):
            s = score.get((model, setting, 1.0))
            if s is not None:
                verdict = "PASS" if s >= 2 * chance else "below 2x chance"
                lines.append(f"learning  ({row}) {model:>22} {setting:>3}  HIT {s:6.2f}  [{verdict}]")
    return lines


def three_way(results: Path, process_dir: Path, wheel_dir: Path, labels: dict[str, str]) -> list[str]:
    """Rows (a), (b), (f) side by side in A+V+T per keep ratio, with the paired bootstrap interval over test
    clips of (f)-(b) and (f)-(a), and verdicts that say only what one training seed can support."""
    from affectverse_ds.benchmarks import get_benchmark
    from affectverse_ds.eval.intervals import RESAMPLES, paired_score_interval
    from affectverse_ds.eval.predictions import read_predictions
    from affectverse_ds.eval.unibench import ScoringContext
    from affectverse_ds.eval.wheel import load_wheels

    bench = get_benchmark("affectdyn")
    gold = bench.load_labels(process_dir, bench.test_split)
    ctx = ScoringContext(load_wheels(wheel_dir))
    runs = {(r["model"], r["keep_ratio"]): r for r in json.loads((results / "affectdyn.json").read_text())["runs"]
            if r["modality"] == "avt"}

    def predictions(row: str, kappa: float):
        return read_predictions(predictions_path(results, runs[(labels[row], kappa)]))

    lines = [f"Table 3 rows on affectdyn, A+V+T, HIT (one training seed; [95% paired bootstrap over the "
             f"{len(gold.labels)} test clips, {RESAMPLES} resamples])",
             f"{'keep':>5} {'(a) LoRA':>9} {'(b) keep-mask':>14} {'(f) AffectVerse':>16}   {'(f)-(b)':>24}   "
             f"{'(f)-(a)':>24}"]
    verdicts = []
    for kappa in sorted({k for (_, k) in runs}, reverse=True):
        if any((labels[row], kappa) not in runs for row in "abf"):
            continue
        s = {row: runs[(labels[row], kappa)]["score"] for row in "abf"}
        diffs = {base: paired_score_interval(bench, gold, predictions("f", kappa), predictions(base, kappa), ctx)
                 for base in "ba"}
        cell = {base: f"{d:+6.2f} [{lo:+.2f}, {hi:+.2f}]" for base, (d, lo, hi) in diffs.items()}
        lines.append(f"{kappa:>5.1f} {s['a']:>9.2f} {s['b']:>14.2f} {s['f']:>16.2f}   {cell['b']:>24}   {cell['a']:>24}")
        d, lo, hi = diffs["b"]
        if lo > 0:
            what = "(f) scored higher than (b) on these clips, beyond clip-sampling noise"
        elif hi < 0:
            what = "(f) scored lower than (b) on these clips, beyond clip-sampling noise"
        else:
            what = "no difference between (f) and (b) shown: the interval contains 0"
        verdicts.append(f"keep {kappa:.1f}: {what}")
    return lines + [""] + verdicts + [
        "These intervals cover which test clips were drawn, not training noise: one seed per arm. Whether the",
        "EWM helps beyond keep-mask training is answered over seeds by python -m affectverse_ds.experiments.ablation",
        "(docs/ablation.md)."]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run AffectVerse end to end on the embedded default.")
    parser.add_argument("--quick", action="store_true", help="the shortened demo the slow test runs: 360 clips "
                        "instead of 720, same recipe (about 7 min)")
    parser.add_argument("--out", default="runs/demo", help="run folder (checkpoints, logs, results)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wheel-dir", type=Path, default=None, help="emotion wheel tables to score with "
                        "(default: the MER-UniBench wheels shipped with the package)")
    args = parser.parse_args(argv)
    t0 = time.time()
    n_train, n_test = (360, 72) if args.quick else (720, 72)
    runs, art = Path(args.out).resolve(), Path("artifacts").resolve()  # under the current folder
    logs = runs / "logs"
    from affectverse_ds.eval.wheel import PACKAGED_WHEEL_DIR

    wheel_dir = (args.wheel_dir or PACKAGED_WHEEL_DIR).resolve()

    print("AffectVerse-DS demo on the SYNTHETIC affectdyn benchmark (see docs/affectdyn.md)\n", flush=True)
    preflight.exit_on_failure(lambda: preflight.require(demo_checks(runs, art, wheel_dir)))
    process_dir, shards = prepare_data(art, n_train, n_test, args.seed)
    ckpts = {row: train(tag, shards, runs, extra, logs) for row, (tag, _, extra) in ARMS.items()}
    results = runs / "results"
    # the last checkpoint is the fixed one the summary's Tables 1, 2 and 8 describe: AffectVerse
    evaluate([ckpts[row] for row in ("b", "a", "f")], shards, wheel_dir, results, "avt,at,vt", "1.0,0.5,0.3",
             logs / "evaluate.log", Progress("evaluate", eval_total=len(ARMS) * 3))
    print("\n" + (results / "summary.md").read_text())
    labels = _labels(results)
    for line in checks(results, chance_level(process_dir, wheel_dir), labels):
        print(line)
    print()
    for line in three_way(results, process_dir, wheel_dir, labels):
        print(line)
    tags = [tag for tag, _, _ in ARMS.values()]
    print(f"\nplots: {results / 'plots'}\nTensorBoard: tensorboard --logdir {runs}  ({', '.join(f'{t}/tensorboard' for t in tags)})"
          f"\nmetrics: {', '.join(str(runs / t / 'metrics.jsonl') for t in tags)}"
          f"\ndemo finished in {(time.time() - t0) / 60:.1f} min")
    return 0


def _labels(results: Path, rows=None) -> dict[str, str]:
    """Table 3 row -> the evaluated model's label (evaluate labels checkpoints ``<run folder>@<step>``), for
    ``rows`` ({row: (run folder, ...)}; default :data:`ARMS`)."""
    models = {r["model"] for r in json.loads((results / "affectdyn.json").read_text())["runs"]}
    labels = {}
    for row, (tag, *_) in (ARMS if rows is None else rows).items():
        found = [m for m in models if m.split("@")[0] == tag]
        if len(found) != 1:
            raise SystemExit(f"expected one evaluated model of run {tag}, found {sorted(models)}")
        labels[row] = found[0]
    return labels


if __name__ == "__main__":
    sys.exit(main())
