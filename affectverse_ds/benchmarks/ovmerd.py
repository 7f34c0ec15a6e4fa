"""OV-MERD+: open-vocabulary emotion word lists (``ovlabel.csv``: name,openset); test only, all 532 samples."""
import csv
from pathlib import Path

from affectverse_ds.benchmarks.base import (
    OPENSET_QUESTION, Benchmark, Label, LabelTable, emotion_target, register,
)


def parse_word_list(text: str) -> tuple[str, ...]:
    """``"[a, b]"`` -> ("a", "b"); empty items dropped."""
    inner = text.strip().removeprefix("[").removesuffix("]")
    return tuple(w.strip().strip("'\"").lower() for w in inner.split(",") if w.strip().strip("'\""))


def load_ovlabels(process_root: Path, split: str) -> LabelTable:
    if split != "test":
        raise KeyError(f"ovmerd is test-only, not {split!r}")
    path = Path(process_root) / "ovlabel.csv"
    table = LabelTable({}, {})
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            words = parse_word_list(row.get("openset") or "")
            if words:
                table.labels[row["name"]] = Label(openset=words)
            else:
                table.rejected[row["name"]] = "empty open-set label"
    return table


BENCHMARK = register(Benchmark(
    name="ovmerd", group="openset", process_dir="ovmerd-process", classes=(),
    test_split="test", train_splits=(),
    load_labels=load_ovlabels, question=OPENSET_QUESTION, target=emotion_target,
))
