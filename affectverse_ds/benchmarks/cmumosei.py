"""CMU-MOSEI, English YouTube opinions, score in [-3, 3]."""
from affectverse_ds.benchmarks._sentiment import sentiment_benchmark
from affectverse_ds.benchmarks.layouts import ProcessedLayout

# MER-UniBench reads the re-encoded `subvideo_new/`; older copies of the folder only have `subvideo/`.
# The MOSEI transcript is missing from the public source: subtitles are then empty (with a warning).
LAYOUT = ProcessedLayout(video_dirs=("subvideo_new", "subvideo"), audio_dirs=("subaudio", "audio"), text_column="english")

BENCHMARK = sentiment_benchmark("cmumosei", "cmumosei-process", LAYOUT)
