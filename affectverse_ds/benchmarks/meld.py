"""MELD: seven emotions from Friends; labels are indices into CLASSES."""
from pathlib import Path

from affectverse_ds.benchmarks.base import (
    DISCRETE_QUESTION, Benchmark, Label, LabelError, RawItem, class_from_index, emotion_target, npz_labels,
    plain_corpus, register,
)
from affectverse_ds.benchmarks.layouts import (
    VIDEO_EXTS, ProcessedLayout, attach_media, entry_value, finish, first_dir, index_media, mark_duplicates,
    read_csv_rows, shown, unibench_scanner,
)

CLASSES = ("anger", "joy", "sadness", "neutral", "disgust", "fear", "surprise")
LAYOUT = ProcessedLayout(video_dirs=("subvideo",), audio_dirs=("subaudio", "audio"), text_column="english")

# Official release (MELD.Raw): split -> (label CSV, clip folder as unpacked from the split's tarball).
# The tarballs unpack to these folder names; some users unpack them inside train/ dev/ test/.
OFFICIAL = {
    "train": ("train_sent_emo.csv", ("train_splits", "train/train_splits")),
    "val": ("dev_sent_emo.csv", ("dev_splits_complete", "dev/dev_splits_complete")),
    "test": ("test_sent_emo.csv", ("output_repeated_splits_test", "test/output_repeated_splits_test")),
}


def _label(entry: dict, name: str) -> Label:
    return Label(emo=class_from_index(CLASSES, entry_value(entry, "emo", name), name))


def _official_item(row: dict[str, str], split: str) -> RawItem:
    dia, utt = (row.get("Dialogue_ID") or "").strip(), (row.get("Utterance_ID") or "").strip()
    # Same names as the processed layout (`test_dia0_utt0`), whose dev split is called `val`.
    name = f"{split}_dia{dia}_utt{utt}"
    item = RawItem(name=name, split=split, label=None, subtitle=(row.get("Utterance") or "").strip())
    if not (dia.isdigit() and utt.isdigit()):
        item.reject = f"{name}: Dialogue_ID/Utterance_ID {dia!r}/{utt!r} are not integers"
        return item
    try:
        item.label = Label(emo=class_from_index(CLASSES, (row.get("Emotion") or "").strip().lower(), name))
    except LabelError as err:
        item.reject = str(err)
    return item


def scan_official(root: Path, split: str) -> list[RawItem]:
    """Rows of the split's ``*_sent_emo.csv`` with clips ``dia{D}_utt{U}.mp4`` from its folder."""
    if split not in OFFICIAL:
        raise KeyError(f"meld splits are {', '.join(OFFICIAL)} (dev is called val), not {split!r}")
    root = Path(root)
    csv_name, clip_dirs = OFFICIAL[split]
    if not (root / csv_name).is_file():
        raise FileNotFoundError(f"MELD label file not found: {root / csv_name}")
    items = [_official_item(row, split) for row in read_csv_rows(root / csv_name)]
    mark_duplicates(items)
    clip_dir = first_dir(root, clip_dirs)
    videos = {f"{split}_{stem}": path for stem, path in index_media(clip_dir, VIDEO_EXTS).items()}
    folder = shown(clip_dir or root / clip_dirs[0], root)
    attach_media(items, folder, videos, {}, None, VIDEO_EXTS, file_stem=lambda name: name.split("_", 1)[1])
    return finish(items)


BENCHMARK = register(Benchmark(
    name="meld", group="discrete", process_dir="meld-process", classes=CLASSES,
    test_split="test", train_splits=("train",),
    load_labels=npz_labels("label.npz", plain_corpus, _label),
    question=DISCRETE_QUESTION, target=emotion_target,
))
BENCHMARK.extra["layout"] = LAYOUT
BENCHMARK.extra["splits"] = ("val",)
BENCHMARK.scanners["unibench"] = unibench_scanner(BENCHMARK, LAYOUT)
BENCHMARK.scanners["official"] = scan_official
