"""IEMOCAP 4-way (excited merged into happy). Sessions 1-4 train, Session 5 test (name[4] is the session)."""
from affectverse_ds.benchmarks.base import (
    DISCRETE_QUESTION, Benchmark, Label, class_from_index, emotion_target, npz_labels, register,
)

CLASSES = ("happy", "sad", "neutral", "anger")


def _corpus(split: str):
    if split == "train":
        return "whole_corpus", lambda name: name[4] in "1234"
    if split == "test":
        return "whole_corpus", lambda name: name[4] == "5"
    raise KeyError(f"iemocap has splits train (Sessions 1-4) and test (Session 5), not {split!r}")


def _label(entry: dict, name: str) -> Label:
    return Label(emo=class_from_index(CLASSES, entry["emo"], name))


BENCHMARK = register(Benchmark(
    name="iemocap", group="discrete", process_dir="iemocap-process", classes=CLASSES,
    test_split="test", train_splits=("train",),
    load_labels=npz_labels("label_4way.npz", _corpus, _label),
    question=DISCRETE_QUESTION, target=emotion_target,
))
