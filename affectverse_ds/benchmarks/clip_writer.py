"""The one PyAV clip writer: a container, a video stream and an optional audio stream, frames encoded and
muxed, every stream flushed. The fixture benchmarks, affectdyn, the benchmarks in ``bench/`` and the tests
make their frames (content, timestamps) and hand them here, so stream settings and muxing live once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import av


@dataclass(frozen=True)
class VideoStream:
    """Video stream settings. ``threads=1`` gives the same bytes on every run; ``time_base`` overrides the
    codec's (1 / rate) for explicit timestamps; ``rotation`` is a display-matrix rotation in degrees."""

    codec: str
    rate: int
    size: tuple[int, int]  # (width, height)
    pix_fmt: str = "yuv420p"
    options: dict[str, str] = field(default_factory=dict)
    threads: int | None = None
    time_base: Fraction | None = None
    rotation: int | None = None


@dataclass(frozen=True)
class AudioStream:
    codec: str
    rate: int
    layout: str = "mono"
    options: dict[str, str] = field(default_factory=dict)


def _add_video(container, spec: VideoStream):
    stream = container.add_stream(spec.codec, rate=spec.rate)
    stream.width, stream.height = spec.size
    stream.pix_fmt = spec.pix_fmt
    if spec.time_base is not None:
        stream.codec_context.time_base = spec.time_base
    if spec.threads is not None:
        stream.thread_count = spec.threads
    if spec.options:
        stream.options = dict(spec.options)
    if spec.rotation is not None:
        stream.set_display_rotation(spec.rotation)
    return stream


def _add_audio(container, spec: AudioStream):
    stream = container.add_stream(spec.codec, rate=spec.rate)
    stream.layout = spec.layout
    if spec.options:
        stream.options = dict(spec.options)
    return stream


def _encode(container, stream, frame) -> None:
    for packet in stream.encode(frame):
        container.mux(packet)


def mux_clip(path: str | Path, video: VideoStream, frames: Iterable[av.VideoFrame], audio: AudioStream | None = None,
             sound: Iterable[av.AudioFrame] = (), *, container_format: str | None = None,
             container_options: dict[str, str] | None = None, interleave: bool = False,
             header_first: bool = False) -> Path:
    """Encode ``frames`` (and ``sound`` into an ``audio`` stream) into ``path``.

    Args:
        interleave: after each video frame i, the audio frames starting before its end
            (pts < (i + 1) * audio rate // video rate), as a recording is laid out; otherwise all video,
            then all audio.
        header_first: write the header before any frame (a file with no frames still opens).
    Returns:
        ``path``.
    """
    with av.open(str(path), "w", format=container_format, options=container_options or {}) as container:
        v = _add_video(container, video)
        a = _add_audio(container, audio) if audio is not None else None
        if header_first:
            container.start_encoding()
        chunks = iter(sound if a is not None else ())
        chunk = next(chunks, None) if interleave else None
        for i, frame in enumerate(frames):
            _encode(container, v, frame)
            while interleave and chunk is not None and chunk.pts < (i + 1) * audio.rate // video.rate:
                _encode(container, a, chunk)
                chunk = next(chunks, None)
        _encode(container, v, None)
        if a is not None:
            if chunk is not None:
                _encode(container, a, chunk)
            for chunk in chunks:
                _encode(container, a, chunk)
            _encode(container, a, None)
    return Path(path)
