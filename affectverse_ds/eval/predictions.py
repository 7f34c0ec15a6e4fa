"""Prediction files the scorer reads: our own format, and AffectGPT's released ``.npz`` outputs.

Our format (written by :func:`write_predictions`, read by :func:`read_predictions`):

* ``.jsonl``: one JSON object per line, ``{"name": ..., <fields>}``;
* ``.json``: a list of such objects, or one object ``{name: value}`` where the value is the
  answer text (str), the extracted word list (list), or an object of fields.

Fields (all optional): ``answer`` (free text, run through an extractor), ``items`` (emotion
words already extracted), ``sentiment`` (``positive`` / ``negative`` / ``neutral``), ``score``
(a predicted sentiment score, used only by the conventional MAE / correlation).

AffectGPT's format: ``*-openset.npz`` and ``*-openset-sentiment.npz`` with parallel arrays
``filenames`` and ``fileitems`` (``"[concern, worry]"``, or a polarity word), loaded with the
restricted unpickler.

A name given twice keeps its last entry (as a dict built from the file would); every
repeated name is reported.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from affectverse_ds.benchmarks.ovmerd import parse_word_list
from affectverse_ds.safe_pickle import load_npz

OPENSET_SUFFIX = "-openset.npz"
SENTIMENT_SUFFIX = "-openset-sentiment.npz"
OWN_SUFFIXES = (".jsonl", ".json")
_EPOCH = re.compile(r"(?:checkpoint|epoch|step)[_-]?0*(\d+)", re.I)


@dataclass(frozen=True)
class Prediction:
    """One sample's prediction; the scorer uses the most processed field present.

    Args:
        text: the free-text answer.
        items: emotion words already extracted from it.
        sentiment: a polarity word already mapped.
        score: a predicted sentiment score.
    """

    text: str | None = None
    items: tuple[str, ...] | None = None
    sentiment: str | None = None
    score: float | None = None

    def to_json(self) -> dict[str, Any]:
        fields = {"answer": self.text, "items": list(self.items) if self.items is not None else None,
                  "sentiment": self.sentiment, "score": self.score}
        return {k: v for k, v in fields.items() if v is not None}


@dataclass
class PredictionSet:
    """The predictions of one file.

    Args:
        path: the file read.
        entries: name -> prediction (last entry of a repeated name).
        duplicates: names that occurred more than once, each listed once, in file order.
    """

    path: Path
    entries: dict[str, Prediction] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)

    def add(self, name: str, prediction: Prediction) -> None:
        if name in self.entries and name not in self.duplicates:
            self.duplicates.append(name)
        self.entries[name] = prediction


def read_predictions(path: str | Path) -> PredictionSet:
    """Read one predictions file, in our format or AffectGPT's.

    Args:
        path: a ``.jsonl`` / ``.json`` file of ours, or an AffectGPT ``*-openset.npz`` /
            ``*-openset-sentiment.npz``.

    Returns:
        The :class:`PredictionSet`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    if path.name.endswith(".npz"):
        return _read_affectgpt(path)
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    if path.suffix == ".json":
        return _read_json(path)
    raise ValueError(f"{path}: unknown predictions format (expected .jsonl, .json or AffectGPT .npz)")


def _read_affectgpt(path: Path) -> PredictionSet:
    archive = load_npz(path)
    missing = {"filenames", "fileitems"} - set(archive)
    if missing:
        raise ValueError(f"{path}: not an AffectGPT output, no {', '.join(sorted(missing))}")
    names, items = archive["filenames"], archive["fileitems"]
    if len(names) != len(items):
        raise ValueError(f"{path}: {len(names)} filenames but {len(items)} fileitems")
    out = PredictionSet(path)
    sentiment = path.name.endswith(SENTIMENT_SUFFIX)
    for name, item in zip(names, items):
        item = str(item)
        out.add(str(name), Prediction(sentiment=item.strip().lower()) if sentiment
                else Prediction(items=parse_word_list(item)))
    return out


def _read_jsonl(path: Path) -> PredictionSet:
    out = PredictionSet(path)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                _add_record(out, json.loads(line), f"{path}:{lineno}")
    return out


def _read_json(path: Path) -> PredictionSet:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    out = PredictionSet(path)
    if isinstance(data, list):
        for i, record in enumerate(data):
            _add_record(out, record, f"{path}[{i}]")
    elif isinstance(data, dict):
        # a JSON object cannot hold a name twice after parsing, so no duplicates can show here
        for name, value in data.items():
            out.add(str(name), prediction_from_value(value, f"{path}[{name!r}]"))
    else:
        raise ValueError(f"{path}: expected a JSON list or object, got {type(data).__name__}")
    return out


def _add_record(out: PredictionSet, record: Any, where: str) -> None:
    if not isinstance(record, dict) or "name" not in record:
        raise ValueError(f"{where}: expected an object with a 'name'")
    out.add(str(record["name"]), prediction_from_value(record, where))


def prediction_from_value(value: Any, where: str = "prediction") -> Prediction:
    """A :class:`Prediction` from a JSON value: answer text, word list, or object of fields.

    Args:
        value: str (answer), list (items) or dict with ``answer``/``items``/``sentiment``/``score``.
        where: location for error messages.

    Returns:
        The prediction.
    """
    if isinstance(value, str):
        return Prediction(text=value)
    if isinstance(value, list):
        return Prediction(items=tuple(str(v).strip().lower() for v in value if str(v).strip()))
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected text, a word list or an object, got {type(value).__name__}")
    items = value.get("items")
    score = value.get("score")
    return Prediction(
        text=value.get("answer"),
        items=tuple(str(v).strip().lower() for v in items if str(v).strip()) if items is not None else None,
        sentiment=str(value["sentiment"]).strip().lower() if value.get("sentiment") is not None else None,
        score=float(score) if score is not None else None,
    )


def write_predictions(path: str | Path, predictions: Mapping[str, Prediction] | Iterable[tuple[str, Prediction]]) -> Path:
    """Write predictions as ``.jsonl`` in our format (one ``{"name": ..., fields}`` per line).

    Args:
        path: output file.
        predictions: name -> prediction, or (name, prediction) pairs.

    Returns:
        The path written.
    """
    path = Path(path)
    pairs = predictions.items() if isinstance(predictions, Mapping) else predictions
    with open(path, "w", encoding="utf-8") as f:
        for name, prediction in pairs:
            f.write(json.dumps({"name": name, **prediction.to_json()}, ensure_ascii=False) + "\n")
    return path


def epoch_of(path: str | Path) -> int | None:
    """The epoch (or step) number in a file name such as ``checkpoint_000030_loss_0.602-openset.npz``."""
    match = _EPOCH.search(Path(path).name)
    return int(match.group(1)) if match else None


def prediction_files(directory: str | Path, group: str) -> list[Path]:
    """The per-epoch prediction files of a directory that suit a benchmark group, epoch order.

    Sentiment benchmarks take the ``*-openset-sentiment.npz`` files when there are any (the
    mapped polarity AffectGPT scored), else the ``*-openset.npz`` lists; the other groups take
    ``*-openset.npz``. Our own ``.jsonl`` / ``.json`` files are always taken.

    Args:
        directory: folder of prediction files.
        group: ``discrete``, ``sentiment`` or ``openset``.

    Returns:
        Paths sorted by (epoch, name); files without an epoch come last.
    """
    files = [p for p in Path(directory).iterdir() if p.is_file()]
    sentiment = [p for p in files if p.name.endswith(SENTIMENT_SUFFIX)]
    openset = [p for p in files if p.name.endswith(OPENSET_SUFFIX)]
    chosen = sentiment if group == "sentiment" and sentiment else openset
    chosen += [p for p in files if p.suffix in OWN_SUFFIXES]
    return sorted(chosen, key=lambda p: (epoch_of(p) is None, epoch_of(p) or 0, p.name))
