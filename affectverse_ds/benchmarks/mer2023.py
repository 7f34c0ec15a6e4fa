"""MER2023: six discrete emotions (Chinese clips); MER-UniBench scores test1."""
from affectverse_ds.benchmarks.base import (
    DISCRETE_QUESTION, Benchmark, Label, checked_score, class_from_index, emotion_target, npz_labels, plain_corpus, register,
)

CLASSES = ("neutral", "angry", "happy", "sad", "worried", "surprise")


def _label(entry: dict, name: str) -> Label:
    emo = class_from_index(CLASSES, entry["emo"], name)
    return Label(emo=emo, val=checked_score(entry["val"], name) if "val" in entry else None)


BENCHMARK = register(Benchmark(
    name="mer2023", group="discrete", process_dir="mer2023-dataset-process", classes=CLASSES,
    test_split="test1", train_splits=("train",),
    load_labels=npz_labels("label-6way.npz", plain_corpus, _label),
    question=DISCRETE_QUESTION, target=emotion_target,
))
