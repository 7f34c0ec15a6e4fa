"""The typed config tree: defaults <- YAML file <- ``key=value`` overrides, validated before anything is built.

Over 400 lines on purpose: the whole tree, every field with its comment, is one file a user reads (STYLE rule 2).

Every subsystem has one dataclass; :class:`AffectVerseConfig` holds them all. A
wrong key, a value of the wrong type or an inconsistent combination raises
:class:`ConfigError` with a one-line message naming the key. The resolved
config is written into the run directory (:func:`dump_config`).

Why hand-written and not OmegaConf (not installed) or pydantic: ``pydantic.TypeAdapter`` over these dataclasses
silently ignores an unknown key (``data.bogus=1`` passes) and reports multi-line errors, so it would need
``extra="forbid"`` on every class plus a message wrapper: no less code than :func:`from_dict`.
"""
from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from affectverse_ds import safe_yaml

class ConfigError(ValueError):
    """A config key, type or value is wrong; the message names the key."""


@dataclass
class DataConfig:
    """Where shards are and how samples become model inputs."""

    shard_dir: str = "artifacts/shards"
    # benchmark -> mixing weight over its train splits (the paper merges all train splits)
    train_benchmarks: dict[str, float] = field(default_factory=lambda: {
        "mer2023": 1.0, "mer2024": 1.0, "meld": 1.0, "iemocap": 1.0, "cmumosi": 1.0,
        "cmumosei": 1.0, "sims": 1.0, "simsv2": 1.0,
    })
    eval_benchmarks: list[str] = field(default_factory=lambda: [
        "mer2023", "mer2024", "meld", "iemocap", "cmumosi", "cmumosei", "sims", "simsv2", "ovmerd",
    ])
    # the rate `predict` samples frames at and the planner assumes; training and evaluation take each sample's
    # own rate from its shard (the builder's DecodeConfig: 3 FPS): the shards decide, this does not
    fps: float = 3.0
    frame_size: int = 224  # frames enter the model at this side (shards store 224 px)
    sample_rate: int = 16000  # Qwen2.5-Omni's Whisper feature extractor takes 16 kHz audio, nothing else
    max_seq_len: int = 1024
    max_audio_seconds: float = 30.0  # Whisper's window; longer audio is capped by the token budget
    min_frames: int = 2  # one temporal patch of the vision tower
    # training only: this fraction of A+V samples loses video or audio (half each) from the LLM input, so the
    # A+T / V+T evaluation settings are not inputs the model never saw (the paper's modality dropout acts on
    # the EWM only; this is its input-side counterpart, off in the paper preset)
    input_modality_dropout: float = 0.0
    num_workers: int = 2
    shuffle_buffer: int = 200


@dataclass
class BackboneConfig:
    """The frozen Qwen2.5-Omni thinker."""

    path: str = "artifacts/tiny_backbone"  # local directory (a download of Qwen/Qwen2.5-Omni-7B, or the tiny one)
    # thinker config JSON used to build the architecture on the meta device (summary CLI) without weights
    arch_config: str | None = None
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = "auto"
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    gradient_checkpointing: bool = False


@dataclass
class LoraConfig:
    """LoRA on the language model's attention projections (never the audio/vision towers)."""

    enabled: bool = True
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class EWMConfig:
    """The Emotion World Module (paper Sec. 3.2, Table 7) and its ablation switches."""

    enabled: bool = True
    d_w: int = 512
    n_future: int = 8  # N_s future queries per rollout step
    rollout_steps: int = 3  # S
    layers: int = 2  # imagination cross-attention layers
    heads: int = 8
    ffn_mult: int = 4
    n_belief_base: int = 4  # N_b; N_q = 2 N_b with both modalities
    mama_layers: int = 1
    n_types: int = 6
    modality_dropout: float = 0.15
    alpha_init: float = 0.1
    kappa_min: float = 0.7
    lambda_img: float = 1.0
    source_layer: int = -1  # hidden-state layer feeding the EWM (-1: last)
    context: Literal["full", "self", "cross"] = "full"
    # where the EWM's past (context) states come from in training and in the Table 8 trace:
    # "past": a pass over the truncated sequence, its A/V tokens from towers run on the clip cut at the keep point
    # (model/past_inputs.py; no past state of either modality depends on the future, raw inputs included);
    # "full": the full-observation pass, the literal reading of Algorithm 1 (audio-past states have seen
    # the future video, since video precedes audio). Future targets come from the full pass either way.
    context_source: Literal["past", "full"] = "past"
    # L_img reaches LoRA through the context states (false: H is detached, L_lm alone shapes LoRA; the targets
    # come from the same LoRA'd decoder under stop-gradient, and a trainable context lets L_img pull the A/V
    # states towards whatever is easy to predict instead of what the answer needs)
    img_grad_to_lora: bool = False
    # "imagination": Table 3 row (c), the imagined tokens pooled to N_b per modality, no MAMA
    belief: Literal["ewm", "none", "random", "pooling", "imagination"] = "ewm"
    boundary_residual: bool = True
    temporal_split: bool = True  # partial-observation training (keep ratio kappa < 1)


@dataclass
class InjectionConfig:
    """Where belief tokens enter the sequence and whether training truncates audio/video."""

    positions: int = 2  # 2: after the last A/V token and before the answer; 1: before the answer only
    keep_mask: bool = True  # token-level truncation to the first kappa of each A/V region (training only)


@dataclass
class TrainConfig:
    """Optimisation and run bookkeeping. ``global_batch`` = micro_batch x grad_accum x world size, checked at start."""

    out_dir: str = "runs/default"
    epochs: int = 3
    max_steps: int = -1  # >0: the run (and its LR schedule) has this many optimizer steps
    # >0: end this process after that many steps with a checkpoint, leaving the schedule as it is
    # (time-sliced jobs; `--resume auto` continues exactly where it stopped)
    stop_after_steps: int = -1
    micro_batch: int = 4
    grad_accum: int = 8
    global_batch: int | None = None  # None: micro_batch x grad_accum x world size
    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.03
    grad_clip: float = 1.0
    precision: Literal["bf16", "fp32"] = "bf16"
    seed: int = 42
    save_every: int = 500  # optimizer steps between checkpoints (>= 1); the last step always saves
    save_each_epoch: bool = False  # also save at the end of every epoch
    keep_last: int = 3  # complete checkpoints kept; the newest is never deleted
    log_every: int = 10
    # optimizer steps in a row with a non-finite loss or gradient (each skipped) before the run stops unsaved
    # (train/nonfinite.py has the whole policy)
    max_nonfinite_steps: int = 10


# evaluation modality setting -> (video, audio, subtitle) given to the model; "avt" is training and the paper's
# A+V+T. The one list of settings: the collator applies it, the tables print it, eval.modalities is checked on it.
MODALITY_SETTINGS: dict[str, tuple[bool, bool, bool]] = {
    "avt": (True, True, True),
    "at": (False, True, True),
    "vt": (True, False, True),
    "av": (True, True, False),
    "t": (False, False, True),
}


@dataclass
class EvalConfig:
    """Evaluation protocol (docs/evaluation.md) settings."""

    wheel_dir: str = ""  # format.csv, synonym.xlsx, wheel1-5.xlsx; "" = the wheels shipped with the package
    modalities: list[str] = field(default_factory=lambda: ["avt"])
    keep_ratios: list[float] = field(default_factory=lambda: [1.0])
    mode: Literal["generate", "rank"] = "generate"
    max_new_tokens: int = 32
    batch_size: int = 4


@dataclass
class AffectVerseConfig:
    """The whole config tree."""

    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    ewm: EWMConfig = field(default_factory=EWMConfig)
    injection: InjectionConfig = field(default_factory=InjectionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ----------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> AffectVerseConfig:
    """Build the config: dataclass defaults, then the YAML file, then ``section.key=value`` overrides.

    Args:
        path: YAML file (or None for defaults only).
        overrides: strings ``"train.lr=1e-4"``; values are parsed as YAML scalars/lists.
    Returns:
        The validated config.
    Raises:
        ConfigError: one line naming the offending key.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = safe_yaml.load_file(path) or {}
        except safe_yaml.YamlRefused as err:
            raise ConfigError(str(err)) from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        tree = loaded
    for item in overrides:
        _apply_override(tree, item)
    cfg = _build(AffectVerseConfig, tree, prefix="")
    validate(cfg)
    return cfg


def _apply_override(tree: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not key=value")
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {part!r} is not a section")
    try:
        node[parts[-1]] = safe_yaml.loads(raw, f"override {key.strip()}") if raw.strip() else ""
    except safe_yaml.YamlRefused as err:
        raise ConfigError(str(err)) from None


# keys that are gone -> what to set instead (an old config gets a pointer, not "unknown key")
RETIRED = {"eval.reference_data": "eval.wheel_dir to the emotion_wheel folder itself (<reference_data>/emotion_wheel)"}


def _build(cls: type, values: Any, prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for name in [k for k in values if f"{prefix}{k}" in RETIRED]:
        if values[name] not in ("", None):  # empty: what every dumped config held before the key went
            raise ConfigError(f"{prefix}{name}: no longer read; set {RETIRED[prefix + name]}")
    values = {k: v for k, v in values.items() if f"{prefix}{k}" not in RETIRED}
    unknown = sorted(str(k) for k in set(values) - names)  # str: YAML keys may be numbers or null
    if unknown:
        raise ConfigError(f"{prefix}{_show(unknown[0])[1:-1]}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, f"{prefix}{name}")
    return cls(**kwargs)


# error messages show at most this much of a value: a value built from aliases may be large when expanded
_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxlist, _SHOW.maxdict, _SHOW.maxstring, _SHOW.maxother = 2, 4, 4, 60, 60


def _show(value: Any) -> str:
    return _SHOW.repr(value)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``hint``; ints are accepted where floats are expected, and every
    float must be finite (``.inf`` / ``.nan`` are valid YAML and would turn the run's losses into NaN)."""
    result = _coerce_type(value, hint, key)
    if hint is float and not math.isfinite(result):
        raise ConfigError(f"{key}: {result} is not a finite number")
    return result


def _coerce_type(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {_show(value)} is not {_type_name(hint)}")
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: {_show(value)} is not one of {', '.join(map(repr, args))}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {_show(value)}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {_show(value)}")
        return {_coerce(k, args[0], key): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{key}: {_show(value)} is too large for a float") from None
    if hint is float and isinstance(value, str):
        # PyYAML (YAML 1.1) reads "2e-4" as a string; accept numeric strings for float fields
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected float, got {_show(value)}") from None
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected {hint.__name__}, got a boolean")
    if isinstance(value, hint):
        return value
    raise ConfigError(f"{key}: expected {_type_name(hint)}, got {type(value).__name__} {_show(value)}")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


# ----------------------------------------------------------------------------- validation


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {why}")


def validate(cfg: AffectVerseConfig) -> None:
    """Cross-field checks that types alone cannot express."""
    e, t, d, lo = cfg.ewm, cfg.train, cfg.data, cfg.lora
    for key in ("d_w", "n_future", "rollout_steps", "layers", "heads", "n_belief_base", "mama_layers", "n_types"):
        _check(getattr(e, key) >= 1, f"ewm.{key}", "must be >= 1")
    _check(e.d_w % e.heads == 0, "ewm.heads", f"d_w={e.d_w} must be divisible by heads={e.heads}")
    _check(e.n_types >= 2, "ewm.n_types", "needs at least the video and audio types")
    _check(0.0 < e.kappa_min <= 1.0, "ewm.kappa_min", "must be in (0, 1]")
    _check(0.0 <= e.modality_dropout <= 1.0, "ewm.modality_dropout", "must be in [0, 1]")
    _check(e.lambda_img >= 0.0, "ewm.lambda_img", "must be >= 0")
    _check(cfg.injection.positions in (1, 2), "injection.positions", "must be 1 or 2")
    _check(lo.r >= 1 and lo.alpha > 0, "lora.r", "rank and alpha must be positive")
    _check(0.0 <= lo.dropout < 1.0, "lora.dropout", "must be in [0, 1)")
    _check(bool(lo.target_modules), "lora.target_modules", "must name at least one projection")
    _check(t.micro_batch >= 1 and t.grad_accum >= 1, "train.micro_batch", "micro_batch and grad_accum must be >= 1")
    if t.global_batch is not None:
        _check(t.global_batch % (t.micro_batch * t.grad_accum) == 0, "train.global_batch",
               f"{t.global_batch} is not a multiple of micro_batch x grad_accum = {t.micro_batch * t.grad_accum}")
    _check(t.lr > 0, "train.lr", "must be > 0")
    _check(0.0 <= t.warmup_ratio < 1.0, "train.warmup_ratio", "must be in [0, 1)")
    _check(t.epochs >= 1 or t.max_steps > 0, "train.epochs", "must be >= 1 unless max_steps is set")
    _check(t.keep_last >= 1, "train.keep_last", "must be >= 1")
    _check(t.save_every >= 1, "train.save_every", "must be >= 1 (optimizer steps between checkpoints)")
    _check(t.log_every >= 1, "train.log_every", "must be >= 1")
    _check(t.max_nonfinite_steps >= 1, "train.max_nonfinite_steps", "must be >= 1")
    _check(t.seed >= 0, "train.seed", "must be >= 0 (numpy seeds the shard order with it)")
    _check(d.num_workers >= 0, "data.num_workers", "must be >= 0 (0: load in the training process)")
    _check(d.shuffle_buffer >= 0, "data.shuffle_buffer", "must be >= 0")
    _check(d.frame_size >= 28, "data.frame_size", "must be >= 28 (one 2x2 merge of 14 px patches)")
    _check(d.sample_rate == 16000, "data.sample_rate",
           "must be 16000 (the Whisper feature extractor's rate: other rates would miscount the audio)")
    _check(d.max_audio_seconds > 0, "data.max_audio_seconds", "must be > 0")
    _check(d.min_frames >= 1, "data.min_frames", "must be >= 1")
    _check(d.max_seq_len >= 64, "data.max_seq_len", "must be >= 64")
    _check(0.0 <= d.input_modality_dropout <= 1.0, "data.input_modality_dropout", "must be in [0, 1]")
    _check(d.fps > 0, "data.fps", "must be > 0")
    _check(d.frame_size % 28 == 0, "data.frame_size", "must be a multiple of 28 (patch 14 x merge 2)")
    _check(all(w > 0 for w in d.train_benchmarks.values()), "data.train_benchmarks", "weights must be > 0")
    for m in cfg.eval.modalities:
        _check(m in MODALITY_SETTINGS, "eval.modalities", f"{m!r} is not one of {', '.join(MODALITY_SETTINGS)}")
    for k in cfg.eval.keep_ratios:
        _check(0.0 < k <= 1.0, "eval.keep_ratios", f"{k} is not in (0, 1]")


def check_world(cfg: TrainConfig, world_size: int) -> int:
    """The global batch this run uses; raises when the config states one that the world cannot make."""
    made = cfg.micro_batch * cfg.grad_accum * world_size
    if cfg.global_batch is not None and cfg.global_batch != made:
        raise ConfigError(
            f"train.global_batch: {cfg.global_batch} != micro_batch {cfg.micro_batch} x grad_accum "
            f"{cfg.grad_accum} x world size {world_size} = {made}"
        )
    return made


def to_dict(cfg: AffectVerseConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(tree: dict[str, Any]) -> AffectVerseConfig:
    cfg = _build(AffectVerseConfig, tree, prefix="")
    validate(cfg)
    return cfg


def dump_config(cfg: AffectVerseConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (the run directory's ``config.yaml``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path
