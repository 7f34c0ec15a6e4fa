"""OV-MERD+: open-vocabulary emotion word lists (``ovlabel.csv``: name,openset); test only, all 532 samples."""
from pathlib import Path

from affectverse_ds.benchmarks.base import (
    OPENSET_QUESTION, Benchmark, Label, LabelTable, LayoutNotFound, RawItem, SplitAbsent, emotion_target,
)
from affectverse_ds.benchmarks.layouts import ProcessedLayout, mark_duplicates, register_processed
from affectverse_ds.benchmarks.text_files import read_csv_rows, row_problem

LABEL_FILE = "ovlabel.csv"
# subtitle_eng.csv: name,sentence; some copies call the column `english` (read when `sentence` is absent)
LAYOUT = ProcessedLayout(video_dirs=("video",), audio_dirs=("audio",), transcript="subtitle_eng.csv", text_column="sentence",
                         alt_text_columns=("english",))


def parse_word_list(text: str) -> tuple[str, ...]:
    """``"[a, b]"`` -> ("a", "b"); empty items dropped."""
    inner = text.strip().removeprefix("[").removesuffix("]")
    return tuple(w.strip().strip("'\"").lower() for w in inner.split(",") if w.strip().strip("'\""))


def label_items(process_root: Path, split: str) -> list[RawItem]:
    """Every row of ``ovlabel.csv`` as an item in file order (a CSV can repeat a name; the scanner rejects repeats)."""
    if split != "test":
        raise SplitAbsent(f"ovmerd is test-only, not {split!r}")
    path = Path(process_root) / LABEL_FILE
    if not path.is_file():
        raise LayoutNotFound("OV-MERD+ label file", path.parent, (LABEL_FILE,))
    items = []
    for row in read_csv_rows(path):
        name = (row.get("name") or "").strip()
        words = () if (problem := row_problem(row)) else parse_word_list(row.get("openset") or "")
        reason = f"label row unreadable: {problem}" if problem else f"{name}: empty open-set label"
        items.append(RawItem(name=name, split=split, label=Label(openset=words) if words else None,
                             reject=None if words else reason))
    return items


def load_ovlabels(process_root: Path, split: str) -> LabelTable:
    """Labels as a LabelTable; a repeated name keeps its first row here (the scanner reports the repeat)."""
    table = LabelTable({}, {})
    items = label_items(process_root, split)
    mark_duplicates(items)
    for item in items:
        if item.reject is None:
            table.labels[item.name] = item.label
        elif item.name not in table.labels and item.name not in table.rejected:
            table.rejected[item.name] = item.reject
    return table


BENCHMARK = register_processed(Benchmark(
    name="ovmerd", group="openset", process_dir="ovmerd-process", classes=(),
    test_split="test", train_splits=(),
    load_labels=load_ovlabels, question=OPENSET_QUESTION, target=emotion_target,
), LAYOUT, entries=label_items,
    # MER-UniBench's tree (AffectGPT config.py: DATA_DIR['OVMERDPlus'] = 'ovmerdplus-process') first;
    # `ovmerd-process`, this project's earlier name, still read.
    process_dirs=("ovmerdplus-process", "ovmerd-process"))
