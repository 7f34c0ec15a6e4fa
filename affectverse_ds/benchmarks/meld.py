"""MELD: seven emotions from Friends; labels are indices into CLASSES."""
from affectverse_ds.benchmarks.base import (
    DISCRETE_QUESTION, Benchmark, Label, class_from_index, emotion_target, npz_labels, plain_corpus, register,
)

CLASSES = ("anger", "joy", "sadness", "neutral", "disgust", "fear", "surprise")


def _label(entry: dict, name: str) -> Label:
    return Label(emo=class_from_index(CLASSES, entry["emo"], name))


BENCHMARK = register(Benchmark(
    name="meld", group="discrete", process_dir="meld-process", classes=CLASSES,
    test_split="test", train_splits=("train",),
    load_labels=npz_labels("label.npz", plain_corpus, _label),
    question=DISCRETE_QUESTION, target=emotion_target,
))
