"""CH-SIMS, Chinese clips, score in [-1, 1]."""
from affectverse_ds.benchmarks._sentiment import sentiment_benchmark
from affectverse_ds.benchmarks.layouts import ProcessedLayout

LAYOUT = ProcessedLayout(video_dirs=("video",), audio_dirs=("audio", "subaudio"), text_column="chinese")

BENCHMARK = sentiment_benchmark("sims", "sims-process", LAYOUT)
