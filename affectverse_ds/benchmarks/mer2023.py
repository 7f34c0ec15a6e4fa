"""MER2023: six discrete emotions (Chinese clips); MER-UniBench scores test1."""
from pathlib import Path

from affectverse_ds.benchmarks.base import (
    DISCRETE_QUESTION, Benchmark, Label, LabelError, RawItem, checked_score, class_from_index, emotion_target,
    npz_labels, plain_corpus, register,
)
from affectverse_ds.benchmarks.layouts import (
    VIDEO_EXTS, ProcessedLayout, attach_media, entry_value, finish, index_media, mark_duplicates, read_csv_rows,
    read_transcript, unibench_scanner,
)

CLASSES = ("neutral", "angry", "happy", "sad", "worried", "surprise")
LAYOUT = ProcessedLayout(video_dirs=("video",), audio_dirs=("audio",), text_column="chinese")

# Official release: one video folder per split and `<split>-label.csv` (name,discrete,valence) beside them.
OFFICIAL_SPLITS = ("train", "test1", "test2", "test3")
# The release has no transcript; one made by the user (name,chinese) is read when present.
OFFICIAL_TRANSCRIPT = "transcription.csv"


def _label(entry: dict, name: str) -> Label:
    emo = class_from_index(CLASSES, entry_value(entry, "emo", name), name)
    return Label(emo=emo, val=checked_score(entry["val"], name) if "val" in entry else None)


def official_row_label(row: dict[str, str], name: str, classes: tuple[str, ...] = CLASSES) -> Label:
    """``name,discrete,valence`` row -> Label; an empty valence (test3 has none) is no score, not a rejection."""
    emo = class_from_index(classes, (row.get("discrete") or "").strip().lower(), name)
    valence = (row.get("valence") or "").strip()
    return Label(emo=emo, val=checked_score(valence, name) if valence else None)


def scan_official(root: Path, split: str) -> list[RawItem]:
    """Every row of ``<root>/<split>-label.csv`` with its clip from ``<root>/<split>/``."""
    if split not in OFFICIAL_SPLITS:
        raise KeyError(f"mer2023 official splits are {', '.join(OFFICIAL_SPLITS)}, not {split!r}")
    root = Path(root)
    label_file = root / f"{split}-label.csv"
    if not label_file.is_file():
        raise FileNotFoundError(f"MER2023 label file not found: {label_file}")
    items = []
    for row in read_csv_rows(label_file):
        name = (row.get("name") or "").strip()
        item = RawItem(name=name, split=split, label=None)
        try:
            item.label = official_row_label(row, name)
        except LabelError as err:
            item.reject = str(err)
        items.append(item)
    mark_duplicates(items)
    subtitles = read_transcript(root / OFFICIAL_TRANSCRIPT, "chinese") if (root / OFFICIAL_TRANSCRIPT).is_file() else {}
    attach_media(items, split, index_media(root / split, VIDEO_EXTS), {}, subtitles, VIDEO_EXTS)
    return finish(items)


BENCHMARK = register(Benchmark(
    name="mer2023", group="discrete", process_dir="mer2023-dataset-process", classes=CLASSES,
    test_split="test1", train_splits=("train",),
    load_labels=npz_labels("label-6way.npz", plain_corpus, _label),
    question=DISCRETE_QUESTION, target=emotion_target,
))
BENCHMARK.extra["layout"] = LAYOUT
BENCHMARK.extra["splits"] = ("test2", "test3")  # further splits of label-6way.npz, not scored
BENCHMARK.scanners["unibench"] = unibench_scanner(BENCHMARK, LAYOUT)
BENCHMARK.scanners["official"] = scan_official
