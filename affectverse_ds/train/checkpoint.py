"""Checkpoints that describe themselves, and the small trainable-only export.

Layout of ``<out_dir>/checkpoints/step_000100/``:
  DeepSpeed's own files (trainable weights only, optimizer shards, scheduler, client state)
  rng_rank{r}.pt     each rank's RNG states (loaded with weights_only=True)
  config.yaml        the resolved config
  export/            lora/ (PEFT adapter), ewm.safetensors, config.yaml: for evaluation and sharing
  INTEGRITY.json     size and sha256 of every file above, written by rank 0 just before COMPLETE
  COMPLETE           written last, after every rank finished: only such folders count as checkpoints

Resuming reads nothing that can run code: every ``.pt`` file is loaded with ``torch.load(weights_only=True)``
and an allow-list of the three DeepSpeed classes its checkpoints hold (``DEEPSPEED_SAFE_GLOBALS``), and a
folder is used only after its integrity record checks out (``resolve_resume``).
"""
from __future__ import annotations

import contextlib
import errno
import json
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affectverse_ds.bounded import BoundedReadError, os_reason, read_bounded
from affectverse_ds.config import AffectVerseConfig, dump_config
from affectverse_ds.files import atomic_write, file_sha256
from affectverse_ds import distributed as dist
from affectverse_ds.model.export import (  # the export beside its loading: one error class, one step-folder name
    COMPLETE, STEP_RE as _STEP_RE, CheckpointError, export_trainable, step_tag)

INTEGRITY = "INTEGRITY.json"
MAX_INTEGRITY_BYTES = 16 << 20  # a record line per file: a few KB for a real checkpoint


def complete_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Finished checkpoints, oldest first (a folder without COMPLETE is an interrupted save and is ignored)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if _STEP_RE.match(p.name) and (p / COMPLETE).is_file()]
    return sorted(found, key=lambda p: int(_STEP_RE.match(p.name).group(1)))


def checkpoint_dir_problem(ckpt_dir: str | Path) -> str | None:
    """Why checkpoints cannot be saved into ``ckpt_dir`` (something other than a folder is there), or None.

    Checked before the first step: otherwise the run trains until its first save and loses every step."""
    ckpt_dir = Path(ckpt_dir)
    if (ckpt_dir.exists() or ckpt_dir.is_symlink()) and not ckpt_dir.is_dir():
        what = "a broken symlink" if not ckpt_dir.exists() else "a file"
        return (f"{ckpt_dir} is {what}, not a folder: no checkpoint could be saved there; move it away or set "
                f"train.out_dir")
    return None


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    done = complete_checkpoints(ckpt_dir)
    return done[-1] if done else None


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors/ints/lists, so ``weights_only=True`` can load them."""
    np_name, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    return {
        "python": list(random.getstate()[1]) + [random.getstate()[0]],
        "python_gauss": random.getstate()[2],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_gauss, np_cached],
        "torch": torch.get_rng_state(),
        # this rank's own device only: ``get_rng_state_all`` would open a CUDA context on every visible GPU from
        # every rank (under the deepspeed launcher each rank sees all 8: ~0.5 GiB each, 7 of them wasted per GPU),
        # and restoring "all" fails when the resumed run sees another number of GPUs
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[-1], tuple(py[:-1]), state["python_gauss"]))
    name, keys, pos, gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        states = state["cuda"]  # [this device's]; checkpoints before 2026-12-04 listed every visible device
        torch.cuda.set_rng_state(states[torch.cuda.current_device() if len(states) > 1 else 0])


def save_checkpoint(engine, model, cfg: AffectVerseConfig, step: int, client_state: dict[str, Any],
                    info: dist.DistInfo) -> Path:
    """Save on every rank (DeepSpeed requires it), then mark complete on rank 0 and prune to ``keep_last``.

    A write that fails (the disk full, most often) is a one-line :class:`CheckpointError` naming the folder and
    the cause; the folder then has no COMPLETE, so it never counts, and nothing older is pruned."""
    ckpt_dir = Path(cfg.train.out_dir) / "checkpoints"
    tag = step_tag(step)
    path = ckpt_dir / tag
    if info.is_main:
        # saving over a folder of the same step (a resumed run reaching it again): it stops counting as complete
        # until this save has finished
        clear_marks(path)
    dist.barrier()
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, exclude_frozen_parameters=True)
        torch.save(rng_state(), path / f"rng_rank{info.rank}.pt")
        if info.is_main:
            dump_config(cfg, path / "config.yaml")
        export_gathered(model, cfg, path / "export", info)  # every rank: ZeRO-3 gathers the partitioned weights
    except (OSError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {path} not saved: {save_failure(err, path)}; it has no {COMPLETE} "
                              f"marker, so --resume auto takes the previous complete one") from None
    dist.barrier()  # every rank has written its shards and RNG state
    if info.is_main:
        try:
            write_integrity(path)
            (path / COMPLETE).write_text(f"{step}\n")
        except OSError as err:
            clear_marks(path)
            raise CheckpointError(f"checkpoint {path} not marked complete: {save_failure(err, path)}") from None
        for old in prune_list(complete_checkpoints(ckpt_dir), path, cfg.train.keep_last):
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return path


LOW_SPACE = 64 << 20  # free bytes under which a failed write is taken for a full disk


def save_failure(err: BaseException, path: Path) -> str:
    """Why a checkpoint write failed, in a few words: an OSError says its cause ("no space left on the device");
    torch.save reports a full disk as a RuntimeError from its zip writer ("unexpected pos ...", "file write
    failed"), so when the file system is (nearly) full that is what is said."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    if isinstance(err, OSError):
        reason = os_reason(err) + (f" ({err.filename})" if err.filename else "")
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            return reason
    else:
        reason = f"{type(err).__name__}: {first}"
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return reason
    return f"no space left on the device ({free >> 20} MiB free; {reason})" if free < LOW_SPACE else reason


def prune_list(complete: list[Path], newest: Path, keep_last: int) -> list[Path]:
    """The checkpoints ``keep_last`` lets go: all but ``newest`` (the one just saved, kept whatever its step
    number, e.g. after resuming from an earlier checkpoint) and the ``keep_last - 1`` latest others."""
    others = [p for p in complete if p.resolve() != newest.resolve()]
    return others[:max(0, len(others) - (keep_last - 1))]


def load_checkpoint(engine, path: Path, info: dist.DistInfo) -> dict[str, Any]:
    """Restore engine state, this rank's RNG state, and return the client state.

    ``engine`` must load through ``WeightsOnlyCheckpointEngine`` (``train/engine.py`` installs it)."""
    _, client_state = engine.load_checkpoint(str(path.parent), tag=path.name, load_module_strict=False)
    rng_file = path / f"rng_rank{info.rank}.pt"
    if rng_file.is_file():
        set_rng_state(safe_torch_load(rng_file))
    return client_state or {}


# ---------------------------------------------------------------------------- loading without running code

def deepspeed_safe_globals() -> list[type]:
    """The only non-tensor classes DeepSpeed's checkpoints hold (found with ``get_unsafe_globals_in_checkpoint``
    on ZeRO-2 and ZeRO-3 saves, fp32 and bf16): plain records and an int enum, none with custom unpickling."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [fragment_address, ZeroStageEnum, LossScaler]


def _allowed_names() -> set[str]:
    return {f"{c.__module__}.{c.__qualname__}" for c in deepspeed_safe_globals()}


def refused_globals(path: str | Path) -> list[str]:
    """Globals a ``.pt`` file would import beyond torch's weights-only set and our allow-list (a scan; nothing runs)."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported, not loaded
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from None
    return sorted(set(found) - _allowed_names())


def safe_torch_load(path: str | Path, map_location=None) -> Any:
    """``torch.load(weights_only=True)`` with the DeepSpeed allow-list; a refused file is a one-line CheckpointError."""
    try:
        with torch.serialization.safe_globals(deepspeed_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        try:
            extra = refused_globals(path)
        except CheckpointError as unreadable:
            raise unreadable from None
        if extra:
            raise CheckpointError(f"{path}: refused: it pickles objects outside the weights-only allow-list "
                                  f"({', '.join(extra)})") from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: cannot load weights-only: {first}") from None


# ---------------------------------------------------------------------------- integrity record

def _files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")
                  if p.is_file() and p.relative_to(path).as_posix() not in (COMPLETE, INTEGRITY))


def write_integrity(path: str | Path) -> Path:
    """Record the size and sha256 of every file of a checkpoint folder (rank 0, after every rank wrote, before COMPLETE)."""
    path = Path(path)
    record = {"files": {rel: {"size": (path / rel).stat().st_size, "sha256": file_sha256(path / rel)}
                        for rel in _files(path)}}
    return atomic_write(path / INTEGRITY, json.dumps(record, indent=1, sort_keys=True))


def clear_marks(path: str | Path) -> None:
    """Drop COMPLETE and the integrity record before saving again into an existing folder (same step after a
    fallback), so a save interrupted there cannot leave an old marker over new files."""
    for name in (COMPLETE, INTEGRITY):
        (Path(path) / name).unlink(missing_ok=True)


def verify_checkpoint(path: str | Path) -> str | None:
    """None if ``path`` is a complete checkpoint whose files match its integrity record and whose ``.pt`` files
    hold nothing outside the weights-only allow-list; otherwise the reason, in one line."""
    path = Path(path)
    if not path.is_dir():
        return "not a folder"
    if not (path / COMPLETE).is_file():
        return f"no {COMPLETE} marker (an interrupted save)"
    if not (path / INTEGRITY).exists():
        return f"no integrity record {INTEGRITY}"
    try:  # bounded, and a 100 000-deep record is damage like any other, not a RecursionError
        listed = json.loads(read_bounded(path / INTEGRITY, MAX_INTEGRITY_BYTES, INTEGRITY))["files"]
        assert isinstance(listed, dict)
    except BoundedReadError as err:
        return str(err).removeprefix(f"{path / INTEGRITY}: ")
    except RecursionError:
        return f"{INTEGRITY} is unreadable (nested too deeply)"
    except (ValueError, KeyError, TypeError, AssertionError):
        return f"{INTEGRITY} is unreadable"
    present = set(_files(path))
    unlisted = sorted(present - set(listed))
    if unlisted:
        return f"{unlisted[0]}: not in the integrity record"
    for rel, want in sorted(listed.items()):
        file = path / rel
        if rel not in present:
            return f"{rel}: missing"
        if not isinstance(want, dict) or file.stat().st_size != want.get("size"):
            return f"{rel}: size {file.stat().st_size} != recorded {want.get('size') if isinstance(want, dict) else '?'}"
        if file_sha256(file) != want.get("sha256"):
            return f"{rel}: sha256 differs from the record"
    for rel in sorted(present):
        if rel.endswith(".pt"):
            try:
                extra = refused_globals(path / rel)
            except CheckpointError as err:
                return str(err).removeprefix(f"{path / rel}: ")
            if extra:
                return f"{rel}: pickles objects outside the weights-only allow-list ({', '.join(extra)})"
    return None


def choose_resume(ckpt_dir: str | Path, resume: str) -> tuple[Path | None, list[str], str | None]:
    """Pure decision for ``--resume``: (folder or None to start fresh, lines to print, error or None).

    ``auto``: the newest complete checkpoint that verifies; each damaged newer one is named with its reason.
    A folder: used only if it verifies."""
    if resume != "auto":
        reason = verify_checkpoint(resume)
        return (None, [], f"--resume {resume}: {reason}") if reason else (Path(resume), [], None)
    done = complete_checkpoints(ckpt_dir)
    if not done:
        return None, ["resume auto: no complete checkpoint yet, starting fresh"], None
    notes: list[str] = []
    for path in reversed(done):
        reason = verify_checkpoint(path)
        if reason is None:
            return path, notes, None
        notes.append(f"resume auto: {path.name} is damaged ({reason}); falling back to the previous complete one")
    return None, notes, f"resume auto: no usable checkpoint in {ckpt_dir}: all {len(done)} complete ones are damaged"


def check_world_size(path: Path, world: int) -> None:
    """Refuse, in one line naming both sizes, a checkpoint that another number of ranks wrote.

    ZeRO writes one optimizer partition per rank (``zero_pp_rank_<r>_mp_rank_00_optim_states.pt``) and loads
    them by rank: on another world size DeepSpeed fails deep inside with a ``ZeRORuntimeException``. The
    trainable state is small (~35M parameters) and could be consolidated and re-split, but DeepSpeed's way
    (universal checkpoints) loads with pickle, which resume refuses; so this is refused, not resharded."""
    saved = len(list(path.glob("zero_pp_rank_*_mp_rank_00_optim_states.pt")))
    if saved and saved != world:
        raise CheckpointError(f"{path}: written by {saved} ranks, this run has {world}: ZeRO's optimizer partitions "
                              f"do not reshard; resume on {saved} ranks, or start a new run (its export/ holds the "
                              f"trained LoRA and EWM weights)")


def resolve_resume(ckpt_dir: str | Path, resume: str, info: dist.DistInfo) -> Path | None:
    """``choose_resume`` on rank 0, broadcast, so every rank resumes the same folder or raises the same error."""
    decision = choose_resume(ckpt_dir, resume) if info.is_main else None
    path, notes, error = dist.broadcast_object(
        None if decision is None else (None if decision[0] is None else str(decision[0]), decision[1], decision[2]))
    for line in notes:
        dist.print0(line, info=info)
    if error:
        raise CheckpointError(error)
    return None if path is None else Path(path)


@contextlib.contextmanager
def whole_trainable(model):
    """Inside the block every trainable weight is whole on every rank: under ZeRO-3 each rank holds a slice of
    each partitioned weight and ``GatheredParameters`` (a collective: every rank enters) assembles them;
    otherwise there is nothing to do."""
    partitioned = [p for _, p in model.trainable_parameters() if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
        yield


def export_gathered(model, cfg: AffectVerseConfig, out: str | Path, info: dist.DistInfo) -> Path:
    """``export_trainable`` of the whole weights (:func:`whole_trainable`) written by rank 0, called on every rank."""
    with whole_trainable(model):
        if info.is_main:
            export_trainable(model, cfg, out)
    return Path(out)

