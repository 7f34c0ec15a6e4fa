"""CH-SIMS v2, Chinese clips, score in [-1, 1]."""
from affectverse_ds.benchmarks._sentiment import sentiment_benchmark
from affectverse_ds.benchmarks.layouts import ProcessedLayout

# MER-UniBench reads `video_new/` for SIMS v2; `video/` is accepted when that is all there is.
LAYOUT = ProcessedLayout(video_dirs=("video_new", "video"), audio_dirs=("audio", "subaudio"), text_column="chinese")

BENCHMARK = sentiment_benchmark("simsv2", "simsv2-process", LAYOUT)
