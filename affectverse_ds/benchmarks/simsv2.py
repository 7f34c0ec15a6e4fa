"""CH-SIMS v2, Chinese clips, score in [-1, 1]."""
from affectverse_ds.benchmarks._sentiment import sentiment_benchmark

BENCHMARK = sentiment_benchmark("simsv2", "simsv2-process")
