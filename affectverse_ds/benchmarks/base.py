"""What every benchmark provides, and the registry that finds them by name.

Each benchmark lives in its own file (``benchmarks/<name>.py``) and registers one
:class:`Benchmark`. Adding a benchmark is adding one file and one import line in
``benchmarks/__init__.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

Group = Literal["discrete", "sentiment", "openset"]


@dataclass(frozen=True)
class Label:
    """A sample's ground truth. ``emo``: class word; ``val``: score; ``openset``: word list."""

    emo: str | None = None
    val: float | None = None
    openset: tuple[str, ...] | None = None

    def to_json(self) -> dict:
        return {"emo": self.emo, "val": self.val, "openset": list(self.openset) if self.openset is not None else None}


@dataclass
class RawItem:
    """One annotated item as found on disk, before any decoding.

    Args:
        name: the sample name in the label file.
        split: split name (``train``, ``test1`` ...).
        label: parsed label, or None when ``reject`` says why not.
        reject: reason the item cannot be used (the builder records it in the manifest), else None.
        video: video file, or None when missing (then ``reject`` usually says so).
        audio: separate audio file (16 kHz wav of the processed layout), or None to take audio from the video.
        subtitle: transcript text ('' when none).
        segment: (start, end) seconds to cut from ``video`` (IEMOCAP official dialog videos), else None.
        crop: 'left' / 'right' half of the frame to keep (IEMOCAP's speaking actor), else None.
        notes: non-fatal remarks the manifest keeps for an accepted item (subtitle repaired, no valence...).
        shape: which known release shape the scanner read (``meld.official: train/train_sent_emo.csv``).
    """

    name: str
    split: str
    label: "Label | None"
    reject: str | None = None
    video: Path | None = None
    audio: Path | None = None
    subtitle: str = ""
    segment: tuple[float, float] | None = None
    crop: Literal["left", "right"] | None = None
    notes: list[str] = field(default_factory=list)
    shape: str | None = None


class LabelError(ValueError):
    """A label entry that cannot be turned into a :class:`Label` (unknown class, NaN score...)."""


class SplitAbsent(KeyError):
    """The benchmark (or the release the user has) has no such split: nothing to build, nothing lost."""


class LayoutNotFound(FileNotFoundError):
    """A scanner did not find the file its layout needs; the message names what it looked for and what is there."""

    def __init__(self, what: str, folder: Path, looked_for: tuple[str, ...]):
        self.folder, self.looked_for = Path(folder), tuple(looked_for)
        super().__init__(f"{what} not found: looked for {' or '.join(looked_for)} in {folder}; "
                         f"found {folder_listing(folder)}")


def folder_listing(folder: Path, limit: int = 8) -> str:
    """The first entries of a folder, for messages (``a.csv, video/, ... (12 more)``)."""
    folder = Path(folder)
    if not folder.is_dir():
        return "no such folder"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not names:
        return "an empty folder"
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names) - limit} more)" if len(names) > limit else "")


@dataclass
class Benchmark:
    """One benchmark: its name, group, label vocabulary, label files and prompt/target templates.

    Args:
        name: registry key (``mer2023``).
        group: scoring family (docs/evaluation.md).
        process_dir: folder name of the MER-UniBench processed layout (``mer2023-dataset-process``).
        classes: closed-set answer words (discrete group), or the sentiment words.
        test_split: the split scored by MER-UniBench.
        train_splits: splits used for training.
        load_labels: ``(process_root, split) -> LabelTable`` for the processed layout.
        question: the user question of the prompt.
        target: ``Label -> answer string`` (the assistant turn).
        synthetic: True only for generated benchmarks (``affectdyn``).
        scanners: per on-disk layout, a function listing every annotated item of a split.
    """

    name: str
    group: Group
    process_dir: str
    classes: tuple[str, ...]
    test_split: str
    train_splits: tuple[str, ...]
    load_labels: Callable[[Path, str], "LabelTable"]
    question: str
    target: Callable[[Label], str]
    synthetic: bool = False
    # layout name ("unibench", "official") -> (root, split) -> every annotated item of that split
    scanners: dict[str, Callable[[Path, str], list[RawItem]]] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def process_dirs(self) -> tuple[str, ...]:
        """Folder names of the processed layout, the release's own name first (``extra['process_dirs']``)."""
        return tuple(self.extra.get("process_dirs", (self.process_dir,)))


REGISTRY: dict[str, Benchmark] = {}


def register(bench: Benchmark) -> Benchmark:
    if bench.name in REGISTRY:
        raise ValueError(f"benchmark {bench.name!r} registered twice")
    REGISTRY[bench.name] = bench
    return bench


def get_benchmark(name: str) -> Benchmark:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


# ----------------------------------------------------------------------------- shared helpers

DISCRETE_QUESTION = "What is the emotional state of the character in this clip? Answer with one emotion word."
SENTIMENT_QUESTION = "What is the sentiment of the speaker in this clip: positive, negative or neutral?"
OPENSET_QUESTION = "Describe the emotional state of the character in this clip with a list of emotion words."
SENTIMENT_CLASSES = ("positive", "negative", "neutral")


def emotion_target(label: Label) -> str:
    """The sentence a discrete or open-set answer is trained to be (parsed back deterministically)."""
    words = list(label.openset) if label.openset is not None else [label.emo]
    return f"The character's emotional state is {', '.join(words)}."


def sentiment_word(score: float) -> str:
    return "positive" if score > 0 else "negative" if score < 0 else "neutral"


def sentiment_target(label: Label) -> str:
    """Sentiment answer: the polarity word derived from the score (the score stays in the metadata)."""
    return f"The sentiment is {sentiment_word(label.val)}."


def checked_score(value: object, name: str) -> float:
    if isinstance(value, bool):
        raise LabelError(f"{name}: score {value!r} is a bool, not a number")
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise LabelError(f"{name}: score {_short(value)} is not a number") from None
    except OverflowError:  # an int beyond float range (10**400)
        raise LabelError(f"{name}: score {_short(value)} is beyond float range") from None
    if math.isnan(score) or math.isinf(score):
        raise LabelError(f"{name}: score is {score}")
    return score


def class_from_index(classes: tuple[str, ...], value: object, name: str) -> str:
    if isinstance(value, str):
        if value not in classes:
            raise LabelError(f"{name}: unknown label {value!r}")
        return value
    if isinstance(value, bool):
        raise LabelError(f"{name}: label {value!r} is a bool, not a class index")
    if isinstance(value, float) and not value.is_integer():  # 3.7, inf, nan: no class index
        raise LabelError(f"{name}: label {value!r} is not an integer class index")
    try:
        idx = int(value)
    except (TypeError, ValueError, OverflowError):
        raise LabelError(f"{name}: label {_short(value)} is neither a class nor an index") from None
    if not 0 <= idx < len(classes):
        raise LabelError(f"{name}: class index {_short(idx)} outside 0..{len(classes) - 1}")
    return classes[idx]


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class LabelTable:
    """Labels of one split: the usable ones, and every entry that was not usable with its reason.

    ``repeated``: (name, reason) of entries whose name repeats one already in the table (an npz dict
    can hold the int key ``5`` and the string key ``'5'``); they are rejected, never dropped.
    """

    labels: dict[str, Label]
    rejected: dict[str, str]
    repeated: list[tuple[str, str]] = field(default_factory=list)


def npz_labels(
    label_file: str,
    corpus: Callable[[str], tuple[str, Callable[[str], bool]]],
    to_label: Callable[[dict, str], Label],
) -> Callable[[Path, str], LabelTable]:
    """Loader for MER-UniBench's ``.npz`` label files (pickled dicts, read with the restricted unpickler).

    Args:
        label_file: file name inside the ``<dataset>-process`` folder.
        corpus: split -> (npz member, name filter); e.g. IEMOCAP's test is Session 5 of ``whole_corpus``.
        to_label: one raw entry ``{'emo':..., 'val':...}`` -> Label (raises LabelError).
    """
    from affectverse_ds.safe_pickle import load_npz

    def load(process_root: Path, split: str) -> LabelTable:
        member, keep = corpus(split)
        path = Path(process_root) / label_file
        if not path.is_file():
            raise LayoutNotFound("label file", path.parent, (label_file,))
        archive = load_npz(path)
        if member not in archive:
            raise SplitAbsent(f"{path}: no {member!r} (has {', '.join(sorted(map(str, archive)))})")
        entries = archive[member]
        if not isinstance(entries, dict):
            raise ValueError(f"{path}: {member!r} is a {type(entries).__name__}, not a dict of entries")
        table = LabelTable({}, {})
        for key, entry in entries.items():
            name = str(key)
            if not keep(name):
                continue
            if name in table.labels or name in table.rejected:
                table.repeated.append((name, f"{name}: key {key!r} repeats a name already in {member!r}"))
                continue
            try:
                table.labels[name] = to_label(entry, name)
            except LabelError as err:
                table.rejected[name] = str(err)
            except (ArithmeticError, TypeError, ValueError) as err:  # one entry never aborts the split
                table.rejected[name] = f"{name}: unreadable label entry ({type(err).__name__}: {err})"
        return table

    return load


def plain_corpus(split: str) -> tuple[str, Callable[[str], bool]]:
    return f"{split}_corpus", lambda _name: True
