"""Benchmark registry: importing this package registers every benchmark."""
from affectverse_ds.benchmarks import (  # noqa: F401  (imported for registration)
    affectdyn, cmumosei, cmumosi, iemocap, meld, mer2023, mer2024, ovmerd, sims, simsv2,
)
from affectverse_ds.benchmarks.base import REGISTRY, Benchmark, Label, LabelError, LabelTable, get_benchmark

__all__ = ["REGISTRY", "Benchmark", "Label", "LabelError", "LabelTable", "get_benchmark"]
