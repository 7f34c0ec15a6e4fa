"""MER2024: the MER2023 classes on a larger set; labels are not public (users bring their own file)."""
from affectverse_ds.benchmarks.base import (
    DISCRETE_QUESTION, Benchmark, Label, checked_score, class_from_index, emotion_target, npz_labels, plain_corpus,
)
from affectverse_ds.benchmarks.layouts import ProcessedLayout, entry_value, register_processed
from affectverse_ds.benchmarks.mer2023 import CLASSES

# MER2024's transcript is `transcription_merge.csv`, which has a Chinese column and no English one.
LAYOUT = ProcessedLayout(
    video_dirs=("video",), audio_dirs=("audio",), transcript="transcription_merge.csv", text_column="chinese",
)


def _label(entry: dict, name: str) -> Label:
    emo = class_from_index(CLASSES, entry_value(entry, "emo", name), name)
    val = entry.get("val")
    return Label(emo=emo, val=checked_score(val, name) if val is not None else None)


BENCHMARK = register_processed(Benchmark(
    name="mer2024", group="discrete", process_dir="mer2024-dataset-process", classes=CLASSES,
    test_split="test1", train_splits=("train",),
    load_labels=npz_labels("label-6way.npz", plain_corpus, _label),
    question=DISCRETE_QUESTION, target=emotion_target,
), LAYOUT)
