"""CMU-MOSI, English YouTube reviews, score in [-3, 3]."""
from affectverse_ds.benchmarks._sentiment import sentiment_benchmark

BENCHMARK = sentiment_benchmark("cmumosi", "cmumosi-process")
