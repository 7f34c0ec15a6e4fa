"""The four sentiment benchmarks share one label format: a float score in ``val``."""
from affectverse_ds.benchmarks._mmsa import mmsa_scanner
from affectverse_ds.benchmarks.base import (
    SENTIMENT_CLASSES, SENTIMENT_QUESTION, Benchmark, Label, checked_score, npz_labels, plain_corpus,
    sentiment_target,
)
from affectverse_ds.benchmarks.layouts import ProcessedLayout, entry_value, register_processed


def _label(entry: dict, name: str) -> Label:
    return Label(val=checked_score(entry_value(entry, "val", name), name))


def sentiment_benchmark(name: str, process_dir: str, layout: ProcessedLayout) -> Benchmark:
    """Register a sentiment benchmark readable in the processed layout and in MMSA's release layout."""
    return register_processed(Benchmark(
        name=name, group="sentiment", process_dir=process_dir, classes=SENTIMENT_CLASSES,
        test_split="test", train_splits=("train",),
        load_labels=npz_labels("label.npz", plain_corpus, _label),
        question=SENTIMENT_QUESTION, target=sentiment_target,
    ), layout, official=mmsa_scanner(), splits=("val",))
