"""MER2023: six discrete emotions (Chinese clips); MER-UniBench scores test1."""
from pathlib import Path

from affectverse_ds.benchmarks.base import (
    DISCRETE_QUESTION, Benchmark, Label, LabelError, LayoutNotFound, RawItem, SplitAbsent, checked_score,
    class_from_index, emotion_target, npz_labels, plain_corpus,
)
from affectverse_ds.benchmarks.layouts import (
    VIDEO_EXTS, ProcessedLayout, attach_media, entry_value, finish, index_media, mark_duplicates, read_subtitles,
    register_processed, reject,
)
from affectverse_ds.benchmarks.text_files import read_csv_rows, row_problem

CLASSES = ("neutral", "angry", "happy", "sad", "worried", "surprise")
LAYOUT = ProcessedLayout(video_dirs=("video",), audio_dirs=("audio",), text_column="chinese",
                         alt_text_columns=("sentence",))

# Official release: one video folder per split and `<split>-label.csv` (name,discrete,valence) beside them.
OFFICIAL_SPLITS = ("train", "test1", "test2", "test3")
# The release has no transcript. MERTools' MER2023 baseline (main-baseline.py, ASR with WeNet) writes
# `transcription.csv` with columns name,sentence; a hand-made one may say name,chinese. Both are read.
OFFICIAL_TRANSCRIPT = "transcription.csv"
TEXT_COLUMNS = ("sentence", "chinese")
# test3 has no valence annotation: the processed labels (label-6way.npz) carry val = -10 for all 834
# entries. Valences lie in [-5, 5], so -10 is read as "no valence", never as a score.
NO_VALENCE = -10.0
NO_VALENCE_NOTE = "valence -10 is MER2023's no-valence marker (test3): no score kept"


def _valence(value: object, name: str, notes: list[str] | None) -> float | None:
    score = checked_score(value, name)
    if score == NO_VALENCE:
        if notes is not None:
            notes.append(NO_VALENCE_NOTE)
        return None
    return score


def _label(entry: dict, name: str) -> Label:
    emo = class_from_index(CLASSES, entry_value(entry, "emo", name), name)
    return Label(emo=emo, val=_valence(entry["val"], name, None) if "val" in entry else None)


def official_row_label(row: dict[str, str], name: str, classes: tuple[str, ...] = CLASSES,
                       notes: list[str] | None = None) -> Label:
    """``name,discrete,valence`` row -> Label; an empty valence or the -10 marker (test3) is no score, not a rejection."""
    emo = class_from_index(classes, (row.get("discrete") or "").strip().lower(), name)
    valence = (row.get("valence") or "").strip()
    return Label(emo=emo, val=_valence(valence, name, notes) if valence else None)


def scan_official(root: Path, split: str) -> list[RawItem]:
    """Every row of ``<root>/<split>-label.csv`` with its clip from ``<root>/<split>/``."""
    if split not in OFFICIAL_SPLITS:
        raise SplitAbsent(f"mer2023 official splits are {', '.join(OFFICIAL_SPLITS)}, not {split!r}")
    root = Path(root)
    label_file = root / f"{split}-label.csv"
    if not label_file.is_file():
        if any((root / f"{s}-label.csv").is_file() for s in OFFICIAL_SPLITS):
            raise SplitAbsent(f"MER2023 release under {root} has no {label_file.name}")
        raise LayoutNotFound("MER2023 label file", root, (label_file.name,))
    items = []
    for row in read_csv_rows(label_file):
        name = (row.get("name") or "").strip()
        item = RawItem(name=name, split=split, label=None)
        try:
            if problem := row_problem(row):
                raise LabelError(f"label row unreadable: {problem}")
            item.label = official_row_label(row, name, notes=item.notes)
        except LabelError as err:
            item.reject = str(err)
        items.append(item)
    mark_duplicates(items)
    transcript = read_subtitles(root / OFFICIAL_TRANSCRIPT, TEXT_COLUMNS, shown_as=OFFICIAL_TRANSCRIPT)
    attach_media(items, split, index_media(root / split, VIDEO_EXTS), {}, transcript.texts, VIDEO_EXTS)
    for item in items:
        if item.name in transcript.rejected:  # a subtitle row that could not be read: its item only
            reject(item, transcript.rejected[item.name])
    if transcript.problem:  # the note reaches every item's manifest row, not only a log line
        for item in items:
            item.notes.append(transcript.problem)
    shape = f"mer2023.official: {label_file.name}" + (f", {OFFICIAL_TRANSCRIPT}:{transcript.column}" if transcript.column else "")
    return finish(items, shape)


BENCHMARK = register_processed(Benchmark(
    name="mer2023", group="discrete", process_dir="mer2023-dataset-process", classes=CLASSES,
    test_split="test1", train_splits=("train",),
    load_labels=npz_labels("label-6way.npz", plain_corpus, _label),
    question=DISCRETE_QUESTION, target=emotion_target,
), LAYOUT, official=scan_official, splits=("test2", "test3"))  # further splits of label-6way.npz, not scored
_scan_unibench = BENCHMARK.scanners["unibench"]  # wrapped below


def scan_unibench(root: Path, split: str) -> list[RawItem]:
    """The processed layout, with a note on every entry whose valence was the -10 marker."""
    from affectverse_ds.benchmarks.layouts import resolve_process_root
    from affectverse_ds.safe_pickle import load_npz

    items = _scan_unibench(root, split)
    entries = load_npz(resolve_process_root(root, BENCHMARK.process_dirs) / "label-6way.npz").get(f"{split}_corpus", {})
    marked = {str(k) for k, e in entries.items() if isinstance(e, dict) and _is_marker(e.get("val"))}
    for item in items:
        if item.name in marked and item.label is not None:
            item.notes.append(NO_VALENCE_NOTE)
    return items


def _is_marker(value: object) -> bool:
    try:
        return not isinstance(value, bool) and float(value) == NO_VALENCE
    except (TypeError, ValueError, OverflowError):
        return False


BENCHMARK.scanners["unibench"] = scan_unibench
