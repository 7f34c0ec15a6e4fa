"""MELD: seven emotions from Friends; labels are indices into CLASSES."""
import re
from pathlib import Path

from affectverse_ds.benchmarks.base import (
    DISCRETE_QUESTION, Benchmark, Label, LabelError, LayoutNotFound, RawItem, SplitAbsent, class_from_index,
    emotion_target, npz_labels, plain_corpus,
)
from affectverse_ds.benchmarks.layouts import (
    VIDEO_EXTS, ProcessedLayout, attach_media, entry_value, finish, first_dir, index_media, mark_duplicates,
    register_processed, shown,
)
from affectverse_ds.benchmarks.text_files import read_csv_rows, row_problem

CLASSES = ("anger", "joy", "sadness", "neutral", "disgust", "fear", "surprise")
LAYOUT = ProcessedLayout(video_dirs=("subvideo",), audio_dirs=("subaudio", "audio"), text_column="english")

# Official release (MELD.Raw): split -> (label CSV candidates, clip folder candidates), first present wins.
# MELD.Raw.tar.gz keeps train_sent_emo.csv inside train/ (beside train.tar.gz) and the dev/test CSVs at
# the top; declare-lab/MELD's repository (data/MELD/) has all three CSVs side by side. The split tarballs
# unpack to these folder names; some users unpack them inside train/ dev/ test/.
OFFICIAL = {
    "train": (("train/train_sent_emo.csv", "train_sent_emo.csv"), ("train/train_splits", "train_splits")),
    "val": (("dev_sent_emo.csv", "dev/dev_sent_emo.csv"), ("dev_splits_complete", "dev/dev_splits_complete")),
    "test": (("test_sent_emo.csv", "test/test_sent_emo.csv"),
             ("output_repeated_splits_test", "test/output_repeated_splits_test")),
}
# The test folder also holds re-cut clips `final_videos_testdia{D}_utt{U}.mp4` (declare-lab/MELD #20, #22):
# when one exists for an annotated utterance it is used instead of `dia{D}_utt{U}.mp4` (the cut that issue
# reports minutes long), and the item's notes say so.
FINAL_VIDEO = re.compile(r"final_videos_test(dia\d+_utt\d+)$")


def _label(entry: dict, name: str) -> Label:
    return Label(emo=class_from_index(CLASSES, entry_value(entry, "emo", name), name))


def _official_item(row: dict[str, str], split: str) -> RawItem:
    dia, utt = (row.get("Dialogue_ID") or "").strip(), (row.get("Utterance_ID") or "").strip()
    # Same names as the processed layout (`test_dia0_utt0`), whose dev split is called `val`.
    name = f"{split}_dia{dia}_utt{utt}"
    item = RawItem(name=name, split=split, label=None, subtitle=(row.get("Utterance") or "").strip())
    if problem := row_problem(row):
        item.reject = f"label row unreadable: {problem}"
        return item
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
        raise SplitAbsent(f"meld splits are {', '.join(OFFICIAL)} (dev is called val), not {split!r}")
    root = Path(root)
    csv_names, clip_dirs = OFFICIAL[split]
    csv_name = next((c for c in csv_names if (root / c).is_file()), None)
    if csv_name is None:
        raise LayoutNotFound(f"MELD {split} label file", root, csv_names)
    items = [_official_item(row, split) for row in read_csv_rows(root / csv_name)]
    mark_duplicates(items)
    clip_dir = first_dir(root, clip_dirs)
    found = index_media(clip_dir, VIDEO_EXTS)
    videos = {f"{split}_{stem}": path for stem, path in found.items() if not stem.startswith("final_videos_")}
    recut: dict[str, str] = {}
    for stem, path in found.items():
        match = FINAL_VIDEO.match(stem)
        if match and split == "test":
            name = f"{split}_{match[1]}"
            recut[name] = (f"clip {path.name} (re-cut) used" + (f" instead of {videos[name].name}" if name in videos else ""))
            videos[name] = path
    folder = shown(clip_dir or root / clip_dirs[0], root)
    attach_media(items, folder, videos, {}, None, VIDEO_EXTS, file_stem=lambda name: name.split("_", 1)[1])
    for item in items:
        if item.name in recut and item.video is not None:
            item.notes.append(recut[item.name])
    return finish(items, f"meld.official: {csv_name}, {folder}/")


BENCHMARK = register_processed(Benchmark(
    name="meld", group="discrete", process_dir="meld-process", classes=CLASSES,
    test_split="test", train_splits=("train",),
    load_labels=npz_labels("label.npz", plain_corpus, _label),
    question=DISCRETE_QUESTION, target=emotion_target,
), LAYOUT, official=scan_official, splits=("val",))
