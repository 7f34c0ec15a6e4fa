"""CMU-MOSI, English YouTube reviews, score in [-3, 3]."""
from affectverse_ds.benchmarks._sentiment import sentiment_benchmark
from affectverse_ds.benchmarks.layouts import ProcessedLayout

LAYOUT = ProcessedLayout(video_dirs=("subvideo",), audio_dirs=("subaudio", "audio"), text_column="english")

BENCHMARK = sentiment_benchmark("cmumosi", "cmumosi-process", LAYOUT)
