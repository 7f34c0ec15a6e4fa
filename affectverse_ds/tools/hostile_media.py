"""Oversized media made from code in seconds: hours of near-silent audio in a few MB.

:func:`long_flac` is a FLAC member of hours; :func:`long_audio_clip` a short video whose audio track runs for
hours. The adversarial corpus (``tests/support/corpus.py``) and ``bench/hostile_memory.py`` both build
their memory cases from these (the benchmarks do not import tests).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf

from affectverse_ds.data import schema


def long_flac(seconds: float, rate: int = schema.SAMPLE_RATE) -> bytes:
    """A small FLAC holding ``seconds`` of near silence (written in blocks: the corpus itself stays small)."""
    buf = io.BytesIO()
    block = np.zeros(1 << 20, np.int16)
    block[::997] = 1  # not pure digital silence
    left = int(seconds * rate)
    with sf.SoundFile(buf, "w", rate, 1, format="FLAC", subtype="PCM_16") as f:
        while left > 0:
            f.write(block[:min(left, len(block))])
            left -= len(block)
    return buf.getvalue()


def long_audio_clip(path: str | Path, *, video_seconds: float = 2.0, audio_seconds: float = 4 * 3600,
                    rate: int = 16000, fps: int = 10) -> Path:
    """An MP4 file: ``video_seconds`` of 64x48 MPEG-4 video and ``audio_seconds`` of near-silent FLAC audio.

    Hours of audio take a few MB and seconds to write (FLAC of near silence).
    """
    import av

    from affectverse_ds.benchmarks.clip_writer import AudioStream, VideoStream, mux_clip

    chunk = 4096
    block = np.zeros((1, chunk), np.int16)
    block[0, ::97] = 1
    total = int(audio_seconds * rate)

    def sound():
        for start in range(0, total, chunk):
            frame = av.AudioFrame.from_ndarray(block[:, :min(chunk, total - start)], format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            yield frame

    frames = (av.VideoFrame.from_ndarray(np.full((48, 64, 3), (i * 20) % 255, np.uint8), format="rgb24")
              for i in range(int(video_seconds * fps)))
    return mux_clip(Path(path), VideoStream("mpeg4", fps, (64, 48)), frames, AudioStream("flac", rate), sound(),
                    container_format="mp4")
