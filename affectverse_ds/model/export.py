"""The trainable-only export of a checkpoint, written by training and read by evaluation, prediction and benches.

Layout of ``<step_NNNNNN>/export/`` (``train.checkpoint.save_checkpoint`` writes it on rank 0)::

    lora/             PEFT adapter (``adapter_model.safetensors`` + ``adapter_config.json``), when LoRA is on
    ewm.safetensors   the EWM weights, when the EWM is on
    config.yaml       the resolved config: its LoRA / EWM / injection sections describe the weights

Reading it back builds the model its config describes and loads the weights strictly; a missing,
truncated or foreign weight file is a one-line :class:`CheckpointError` naming the file.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from affectverse_ds.config import AffectVerseConfig, dump_config, load_config

EXPORT_DIR = "export"
STEP_RE = re.compile(r"^step_(\d{6,})$")  # a checkpoint folder: step_000100, as step_tag names it
MODEL_SECTIONS = ("lora", "ewm", "injection")  # what a checkpoint's own config decides; the rest is the user's
EWM_FILE = "ewm.safetensors"
ADAPTER_FILE = Path("lora") / "adapter_model.safetensors"
COMPLETE = "COMPLETE"  # train/checkpoint.py writes it into a step folder last, once every rank has saved


def step_tag(step: int) -> str:
    """The folder name of the checkpoint saved at ``step`` (what :data:`STEP_RE` matches)."""
    return f"step_{step:06d}"


class CheckpointError(ValueError):
    """A checkpoint export that cannot be loaded (missing, unreadable or mismatched weights); one line."""


def export_trainable(model, cfg: AffectVerseConfig, out: str | Path) -> Path:
    """LoRA adapter in PEFT format, EWM weights in safetensors, the config: all evaluation needs beside the backbone."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.lora.enabled:
        model.thinker.save_pretrained(out / "lora")
    ewm_state = model.ewm_state_dict()
    if ewm_state:
        save_file({k: v.detach().contiguous().cpu() for k, v in ewm_state.items()}, str(out / EWM_FILE))
    dump_config(cfg, out / "config.yaml")
    return out


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint to evaluate: its label in the tables, its ``export/`` folder, and why it is unverified
    (a step folder without COMPLETE: an interrupted save) or "" ."""

    label: str
    export_dir: Path
    unverified: str = dataclasses.field(default="", compare=False)  # a note on the reference, not its identity


def resolve_checkpoint(path: str | Path) -> CheckpointRef:
    """Accept a ``step_NNNNNN/`` folder (its ``export/`` is used) or an ``export/`` folder itself.

    Raises:
        FileNotFoundError: neither layout (no ``config.yaml`` in the export folder).
    """
    path = Path(path)
    export = path / EXPORT_DIR if (path / EXPORT_DIR).is_dir() else path
    if not (export / "config.yaml").is_file():
        raise FileNotFoundError(f"{path}: not a checkpoint (expected step_NNNNNN/export/config.yaml "
                                f"or export/config.yaml)")
    if export.name == EXPORT_DIR and STEP_RE.match(export.parent.name):
        label = export.parent.name
        run = export.parent.parent
        if run.name == "checkpoints" and run.parent.name:
            label = f"{run.parent.name}@{label}"  # runs/demo/ewm/checkpoints/step_N -> ewm@step_N
    elif export.name == EXPORT_DIR:
        label = export.parent.name or EXPORT_DIR
    else:
        label = export.name
    unverified = ""
    if export.name == EXPORT_DIR and STEP_RE.match(export.parent.name) and not (export.parent / COMPLETE).is_file():
        unverified = f"{export.parent}: no {COMPLETE} marker (an interrupted save?): its export is evaluated unverified"
    return CheckpointRef(label, export, unverified)


def model_config(cfg: AffectVerseConfig, export_dir: str | Path) -> AffectVerseConfig:
    """The config a checkpoint is evaluated with: its own model sections (LoRA, EWM, injection: they
    must match the weights), the user's backbone location, data, eval and train sections."""
    saved = load_config(Path(export_dir) / "config.yaml")
    return dataclasses.replace(cfg, **{name: getattr(saved, name) for name in MODEL_SECTIONS})


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a truncated or non-safetensors file is a one-line CheckpointError."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(err).splitlines()[0]})") from None


def load_trained_weights(model, export_dir: str | Path) -> None:
    """Load a checkpoint export (``lora/`` PEFT adapter, ``ewm.safetensors``) into a freshly built model.

    Raises:
        FileNotFoundError: a weight file the checkpoint config calls for is absent.
        CheckpointError: a weight file that cannot be read, or whose tensors do not match the model.
    """
    from peft import set_peft_model_state_dict

    export_dir = Path(export_dir)
    adapter = export_dir / ADAPTER_FILE
    if model.cfg.lora.enabled:
        if not adapter.is_file():
            raise FileNotFoundError(f"{adapter}: LoRA is enabled in the checkpoint config but has no adapter")
        try:
            result = set_peft_model_state_dict(model.thinker, read_weights(adapter))
        except RuntimeError as err:  # shape mismatch
            raise CheckpointError(f"{adapter}: does not fit the model ({str(err).splitlines()[-1].strip()})") from None
        if result.unexpected_keys:
            raise CheckpointError(f"{adapter}: tensors the model does not have: {result.unexpected_keys[:3]} ...")
        missing = [k for k in result.missing_keys if "lora_" in k]
        if missing:
            raise CheckpointError(f"{adapter}: LoRA tensors missing from the adapter: {missing[:3]} ...")
    ewm_file = export_dir / EWM_FILE
    if model.ewm is not None:
        if not ewm_file.is_file():
            raise FileNotFoundError(f"{ewm_file}: the EWM is enabled in the checkpoint config but has no weights")
        state = read_weights(ewm_file)
        prefix = "ewm."
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
        try:
            model.ewm.load_state_dict(state, strict=True)
        except RuntimeError as err:  # missing / unexpected keys, shape mismatch
            detail = " ".join(line.strip() for line in str(err).splitlines()[1:3])
            raise CheckpointError(f"{ewm_file}: does not fit the model's EWM ({detail[:300]})") from None


def load_checkpoint_model(ref: CheckpointRef, cfg: AffectVerseConfig, device: torch.device | str):
    """Build the model a checkpoint describes and load its trained weights; returns (model, its config)."""
    from affectverse_ds.model.affect_model import build_model  # loads transformers: only when a model is built

    mcfg = model_config(cfg, ref.export_dir)
    model = build_model(mcfg, device)
    load_trained_weights(model, ref.export_dir)
    model.eval()
    return model, mcfg
