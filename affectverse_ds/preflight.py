"""Checks a long command runs before any expensive work, so a wrong path fails in seconds, not after minutes.

Each check returns ``None`` or one line naming the problem and its fix. :func:`require` runs a list
of them and raises :class:`PreflightError` carrying every failing line; the entry points
(`launch/train.py`, `launch/evaluate.py`, `data_prep/build_shards.py`, the demo, `bench/*.py`) call
the command-level bundles below (:func:`for_training`, :func:`for_evaluation`, ...).

What is checked: the backbone folder (config, weights, tokenizer), the shard folder (non-empty, and
holding the benchmark splits the config asks for), the emotion wheel tables (parsed), the output
folder (writable), free disk for the expected output, and the launcher's world size against the
config's global batch.
"""
from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Callable, Iterable, Sequence

GiB = 1 << 30
MiB = 1 << 20
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model")
WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.safetensors.index.json")


class PreflightError(RuntimeError):
    """One or more preflight checks failed; ``lines`` holds one line per problem."""

    def __init__(self, lines: Sequence[str]):
        self.lines = list(lines)
        super().__init__("\n".join(f"preflight: {line}" for line in self.lines))


Check = Callable[[], "str | None"]


def require(checks: Iterable[Check]) -> None:
    """Run every check; raise :class:`PreflightError` with all failing lines (none: return)."""
    failed = [line for line in (check() for check in checks) if line]
    if failed:
        raise PreflightError(failed)


# ----------------------------------------------------------------------------- single checks

def backbone(path: str | Path, weights: bool = True) -> str | None:
    """A Hugging Face checkpoint folder with config.json, a tokenizer and (if ``weights``) weight files."""
    path = Path(path)
    tiny = f"`python -m affectverse_ds.tools.make_tiny_backbone {path}` for the embedded tiny one"
    if not path.is_dir():
        return (f"backbone folder {path} does not exist: download Qwen/Qwen2.5-Omni-7B there "
                f"(huggingface-cli download Qwen/Qwen2.5-Omni-7B --local-dir {path}) or run {tiny}")
    if not (path / "config.json").is_file():
        return f"backbone folder {path} has no config.json: point backbone.path at a checkpoint folder, or run {tiny}"
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        return (f"backbone folder {path} has no tokenizer ({' / '.join(TOKENIZER_FILES)}): the download is "
                f"incomplete; download the tokenizer files of Qwen/Qwen2.5-Omni-7B into it")
    if weights and not any(any(path.glob(g)) for g in WEIGHT_GLOBS):
        return f"backbone folder {path} has no weights (*.safetensors): the download is incomplete; download it again"
    return None


def shards(shard_dir: str | Path, wanted: dict[str, Sequence[str]]) -> str | None:
    """A shard folder with sizes.json and, for each benchmark, shards of each of its wanted splits."""
    from affectverse_ds.data import schema
    from affectverse_ds.data.loader import LoaderError, read_sizes

    shard_dir = Path(shard_dir)
    build = "build them with `python -m data_prep.build_shards ... --out {}`".format(shard_dir)
    if not shard_dir.is_dir() or not any(shard_dir.iterdir()):
        return f"shard folder {shard_dir} is missing or empty: {build}, or set data.shard_dir"
    try:
        sizes = read_sizes(shard_dir)
    except (LoaderError, ValueError) as err:
        return f"shard folder {shard_dir}: {err}"
    missing = []
    for bench, splits in sorted(wanted.items()):
        for split in splits:  # the loader's own pattern: benchmark-split-NNNNNN.tar, listed in sizes.json
            pattern = schema.SHARD_PATTERN.split("{index")[0].format(benchmark=bench, split=split) + "*.tar"
            if not any(p.name in sizes for p in shard_dir.glob(pattern)):
                missing.append(pattern)
    if missing:
        return (f"shard folder {shard_dir}: {', '.join(missing)} matches nothing listed in sizes.json, and the "
                f"config or command asks for it: {build}, or change data.train_benchmarks / data.eval_benchmarks")
    return None


def wheels(wheel_dir: str | Path) -> str | None:
    """The emotion wheel tables parse (``format.csv``, ``synonym.xlsx``, ``wheel1-5.xlsx``)."""
    from affectverse_ds.eval.wheel import load_wheels

    try:
        load_wheels(wheel_dir)
    except Exception as err:  # any parse failure is this check's answer; the line names it
        return (f"emotion wheels at {wheel_dir} are not readable ({type(err).__name__}: {err}): leave "
                f"eval.wheel_dir / --wheel-dir unset for the packaged ones, or point it at a folder with "
                f"format.csv, synonym.xlsx, wheel1-5.xlsx")
    return None


def present(path: str | Path | None, what: str, fix: str) -> str | None:
    """``path`` exists (a file or folder)."""
    return None if path and Path(path).exists() else f"{what} {path} not found: {fix}"


def writable(out_dir: str | Path) -> str | None:
    """The output folder can be created and written."""
    out_dir = Path(out_dir)
    probe = out_dir / f".preflight-{uuid.uuid4().hex}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        return f"output folder {out_dir} is not writable ({err.strerror}): choose another folder or fix its permissions"
    return None


def free_disk(path: str | Path, need_bytes: int, what: str) -> str | None:
    """At least ``need_bytes`` free on the file system that will hold ``path``."""
    existing = Path(path).resolve()
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < need_bytes:
        return (f"{existing} has {free / GiB:.1f} GiB free, {what} needs about {need_bytes / GiB:.1f} GiB: "
                f"free disk space or write elsewhere")
    return None


def world_size(train_cfg, world: int) -> str | None:
    """The launcher's world size makes the config's global batch (micro_batch x grad_accum x world)."""
    from affectverse_ds.config import ConfigError, check_world

    try:
        check_world(train_cfg, world)
    except ConfigError as err:
        return (f"{err}: launch {train_cfg.global_batch // max(1, train_cfg.micro_batch * train_cfg.grad_accum)} "
                f"ranks, or set train.grad_accum / train.global_batch to match {world}")
    return None


# ----------------------------------------------------------------------------- estimates

def folder_bytes(path: str | Path) -> int:
    """Bytes of the regular files under ``path`` (0 when absent)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def checkpoint_bytes(backbone_dir: str | Path) -> int:
    """Expected size of one training checkpoint: the trainable part (LoRA + EWM, with Adam's two moments and
    fp32 master weights, 16 bytes a parameter) is a few percent of the backbone; 5% of its weights plus 64 MiB."""
    weights = sum(f.stat().st_size for g in ("*.safetensors", "*.bin") for f in Path(backbone_dir).glob(g))
    return weights // 20 + 64 * MiB


# ----------------------------------------------------------------------------- command bundles

def _wanted(benchmarks: Iterable[str], split_of: Callable) -> dict[str, tuple[str, ...]]:
    from affectverse_ds.benchmarks import get_benchmark

    out = {}
    for name in benchmarks:
        try:
            out[name] = tuple(split_of(get_benchmark(name)))
        except KeyError:
            out[name] = ()  # an unknown name is the config validator's to report
    return out


def training_checks(cfg, world: int) -> list[Check]:
    t, d = cfg.train, cfg.data
    wanted = _wanted(d.train_benchmarks, lambda b: b.train_splits)
    need = (t.keep_last + 1) * checkpoint_bytes(cfg.backbone.path)
    return [lambda: backbone(cfg.backbone.path), lambda: shards(d.shard_dir, wanted),
            lambda: writable(t.out_dir), lambda: checkpoint_folder(t.out_dir),
            lambda: free_disk(t.out_dir, need, "training (checkpoints)"), lambda: world_size(t, world)]


def checkpoint_folder(out_dir: str | Path) -> str | None:
    """``<out_dir>/checkpoints`` is a folder or absent (a file there would lose every step at the first save)."""
    from affectverse_ds.train.checkpoint import checkpoint_dir_problem

    return checkpoint_dir_problem(Path(out_dir) / "checkpoints")


def checkpoints(paths: Sequence[str | Path]) -> str | None:
    """Every checkpoint folder to evaluate exists."""
    missing = [str(p) for p in paths if not Path(p).is_dir()]
    if missing:
        return f"checkpoint folder(s) not found: {', '.join(missing)}: pass step_NNNNNN/ or export/ folders of a run"
    return None


def evaluation_checks(cfg, out_dir: str | Path, benchmarks: Sequence[str] | None = None,
                      ckpts: Sequence[str | Path] = ()) -> list[Check]:
    from affectverse_ds.eval.wheel import wheel_dir_for

    wanted = _wanted(benchmarks or cfg.data.eval_benchmarks, lambda b: (b.test_split,))
    return [lambda: checkpoints(ckpts), lambda: backbone(cfg.backbone.path), lambda: shards(cfg.data.shard_dir, wanted),
            lambda: wheels(wheel_dir_for(cfg.eval)), lambda: writable(out_dir),
            lambda: free_disk(out_dir, 256 * MiB, "evaluation (predictions, tables, plots)")]


def shard_build_checks(root: str | Path, out: str | Path | None, benchmark: str | None = None) -> list[Check]:
    """The raw root exists and holds files; the output is writable with room for about the raw media's size
    (the benchmark's processed folder when it has one under ``root``, else the whole root)."""
    media = Path(root)
    if benchmark:
        from affectverse_ds.benchmarks import get_benchmark

        try:
            sub = media / get_benchmark(benchmark).process_dir
            media = sub if sub.is_dir() else media
        except KeyError:
            pass  # an unknown name is the builder's to report
    def root_present() -> str | None:
        if not Path(root).is_dir() or not any(Path(root).iterdir()):
            return f"benchmark root {root} is missing or empty: download the benchmark there, or fix --root"
        return None

    if out is None:  # --dry-run writes nothing
        return [root_present]
    return [root_present, lambda: writable(out),
            lambda: free_disk(out, folder_bytes(media), f"shards of {media} (about the size of the raw media)")]


def ensure_tiny_backbone(path: str | Path) -> Path:
    """Write the embedded tiny backbone at ``path`` when it is absent or an older tiny one (as the demo does).

    A folder holding anything else (a downloaded 7B model) is never touched.
    """
    from affectverse_ds.tools.make_tiny_backbone import VERSION_FILE, is_current, make_tiny_backbone

    path = Path(path)
    if not is_current(path) and (not path.exists() or (path / VERSION_FILE).is_file()):
        make_tiny_backbone(path)
        print(f"tiny backbone written to {path}", flush=True)
    return path


def for_training(cfg, world: int | None = None) -> None:
    """Raise :class:`PreflightError` unless a training run of ``cfg`` on ``world`` ranks can start."""
    if world is None:
        from affectverse_ds.distributed import dist_info_from_env
        world = dist_info_from_env().world_size
    require(training_checks(cfg, world))


def for_evaluation(cfg, out_dir: str | Path, benchmarks: Sequence[str] | None = None,
                   ckpts: Sequence[str | Path] = ()) -> None:
    require(evaluation_checks(cfg, out_dir, benchmarks, ckpts))


def for_shard_build(root: str | Path, out: str | Path | None, benchmark: str | None = None) -> None:
    require(shard_build_checks(root, out, benchmark))


def exit_on_failure(run: Callable[[], None]) -> None:
    """Run a preflight bundle; on failure print its lines (rank 0 only) and exit with status 2."""
    try:
        run()
    except PreflightError as err:
        from affectverse_ds.distributed import dist_info_from_env

        if dist_info_from_env().is_main:  # the launchers' variables are read in one module
            print(err, file=sys.stderr, flush=True)
        raise SystemExit(2) from None
