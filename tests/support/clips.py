"""Tiny clips encoded with PyAV (a moving bar, a red corner, a 440 Hz tone) and wavs, for the media and shard
writer tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def write_clip(path: Path, *, seconds: float = 2.0, fps: int = 25, size: tuple[int, int] = (64, 48),
               audio: bool = True, rotation: int | None = None, codec: str = "libx264",
               pix_fmt: str = "yuv420p", pts_ms: list[int] | None = None, audio_rate: int = 44100,
               faststart: bool = False) -> Path:
    """Encode a synthetic clip (a few KB): a moving bar with a red top-left corner, and a 440 Hz stereo tone.

    Args:
        seconds: clip length (frames = seconds * fps unless ``pts_ms`` is given).
        size: (width, height); odd sizes need ``pix_fmt="yuv444p"``.
        rotation: display-matrix rotation in degrees, or None.
        pts_ms: explicit frame timestamps in ms (variable frame rate).
        faststart: moov atom first, so a truncated file still opens.
    """
    import av
    from fractions import Fraction

    from affectverse_ds.benchmarks.clip_writer import AudioStream, VideoStream, mux_clip

    w, h = size

    def frames():
        stamps = pts_ms if pts_ms is not None else range(int(round(seconds * fps)))
        for i, pts in enumerate(stamps):
            img = np.zeros((h, w, 3), np.uint8)
            img[:, : (i * 3) % w] = 200
            img[: h // 4, : w // 4] = (255, 0, 0)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts, Fraction(1, 1000)
            yield frame

    def sound():
        t = np.arange(int(seconds * audio_rate)) / audio_rate
        tone = np.stack([0.3 * np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32)
        for start in range(0, tone.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start:start + 1024]),
                                               format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = audio_rate, start
            yield frame

    video = VideoStream(codec, fps, size, pix_fmt, time_base=Fraction(1, 1000) if pts_ms is not None else None,
                        rotation=rotation)
    return mux_clip(path, video, frames(), AudioStream("aac", audio_rate, "stereo") if audio else None, sound(),
                    container_options={"movflags": "faststart"} if faststart else None)


def write_wav(path: Path, seconds: float, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(str(path), (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate)
    return Path(path)
