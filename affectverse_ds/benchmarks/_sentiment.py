"""The four sentiment benchmarks share one label format: a float score in ``val``."""
from affectverse_ds.benchmarks.base import (
    SENTIMENT_CLASSES, SENTIMENT_QUESTION, Benchmark, Label, checked_score, npz_labels, plain_corpus, register,
    sentiment_target,
)


def _label(entry: dict, name: str) -> Label:
    return Label(val=checked_score(entry["val"], name))


def sentiment_benchmark(name: str, process_dir: str) -> Benchmark:
    return register(Benchmark(
        name=name, group="sentiment", process_dir=process_dir, classes=SENTIMENT_CLASSES,
        test_split="test", train_splits=("train",),
        load_labels=npz_labels("label.npz", plain_corpus, _label),
        question=SENTIMENT_QUESTION, target=sentiment_target,
    ))
