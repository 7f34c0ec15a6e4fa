"""Decode one clip into what a shard sample holds: 3 FPS 224x224 JPEG frames and 16 kHz mono audio.

Over 400 lines: the package's one PyAV decoder, frames and audio fed from the same pass over a container.

Frame rule (by timestamp, so variable frame rate needs no special case): the clip
covers ``[0, duration)``; sampling times are ``t_k = k / fps`` for ``k = 0, 1, ...``
with ``t_k < duration``, hence ``n_frames = frame_count(duration) = ceil(duration * fps)``.
Frame ``k`` is the frame on screen at ``t_k``: the last decoded frame whose
timestamp is ``<= t_k`` (the first frame when ``t_k`` precedes it).

``duration`` is the decoded video span: end of the last frame (its pts plus its
duration) minus the clip start, cut at the segment end and at ``max_duration``.
The audio is trimmed (AAC decoders pad the last frame) or zero-padded to
``round(duration * 16000)`` samples so audio and frames describe the same interval.

Rejection threshold for short clips: fewer than ``min_frames`` (default 2) sampled
frames, i.e. clips of 1/3 s or less at 3 FPS. Qwen2.5-Omni's vision tower groups
frames in temporal pairs, so a clip must give at least two; sub-second clips that
give two or more frames are kept with a note, because dropping them would change
the size of the MER-UniBench test splits.

Frames are decoded sequentially (one seek at most, to a segment start); only the
sampled frames are converted to RGB and JPEG-encoded, and the decoder may drop
non-reference frames that no sampling time falls on (the result is identical to a
full decode; see ``_VideoFeed``). Each call uses one decoder thread and one scaler
thread, so parallelism comes from worker processes.
"""
from __future__ import annotations

import io
import math
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

from affectverse_ds.data.schema import (  # noqa: F401  (frame_count: media's public name too)
    FPS, FRAME_SIZE, MAX_FRAMES, SAMPLE_RATE, TIME_EPS as _EPS, audio_length, frame_count,
)



class MediaError(Exception):
    """A clip that cannot become a sample. ``str(err)`` is the manifest reason."""


@dataclass(frozen=True)
class DecodeConfig:
    """How clips are decoded.

    Args:
        fps: frame sampling rate (paper: 3 FPS).
        size: output frame side in pixels (paper: 224).
        center_crop: crop the largest centred square before resizing instead of the paper's direct resize.
        max_duration: keep at most this many seconds of a clip (default: what the 3-digit frame suffix allows).
        min_frames: clips giving fewer sampled frames are rejected as too short.
        jpeg_quality: JPEG quality of the stored frames.
        sample_rate: audio rate in Hz (16 kHz mono).
    """

    fps: float = FPS
    size: int = FRAME_SIZE
    center_crop: bool = False
    max_duration: float = MAX_FRAMES / FPS
    min_frames: int = 2
    jpeg_quality: int = 90
    sample_rate: int = SAMPLE_RATE


@dataclass
class Clip:
    """A decoded clip.

    Args:
        frames: JPEG bytes of each sampled frame, in time order.
        audio: int16 mono samples at ``sample_rate`` (``round(duration * rate)`` of them), None when missing.
        duration: seconds covered by the clip.
        notes: non-fatal findings (rotation, odd size, variable frame rate, no audio...) for the manifest.
    """

    frames: list[bytes]
    audio: np.ndarray | None
    duration: float
    notes: list[str] = field(default_factory=list)


def decode_clip(
    video: Path,
    audio: Path | None = None,
    segment: tuple[float, float] | None = None,
    crop: Literal["left", "right"] | None = None,
    cfg: DecodeConfig = DecodeConfig(),
) -> Clip:
    """Decode a clip's frames and audio.

    Args:
        video: video file (audio is taken from it unless ``audio`` is given).
        audio: separate audio file on the same timeline as ``video`` (segment times apply to it too).
        segment: ``(start, end)`` seconds to cut, relative to the start of the video.
        crop: keep only the ``left`` or ``right`` half of the (upright) frame.
        cfg: decoding settings.

    Returns:
        The decoded :class:`Clip`.

    Raises:
        MediaError: unreadable, empty, truncated or too short video (the message is the reason).
    """
    container = _open(video, "video")
    with container:
        clip = _decode_container(container, audio is None, segment, crop, cfg)
    if audio is not None:
        start = segment[0] if segment else 0.0
        try:
            clip.audio = read_audio(audio, start, clip.duration, cfg.sample_rate, clip.notes)
        except MediaError as err:
            clip.notes.append(f"audio missing: {err}")
    n = frame_count(clip.duration, cfg.fps)
    if n < cfg.min_frames:
        raise MediaError(
            f"clip too short: {clip.duration:.2f} s gives {n} frame(s) at {cfg.fps:g} FPS (minimum {cfg.min_frames})")
    if clip.duration < 1.0:
        clip.notes.append(f"sub-second clip ({clip.duration:.2f} s)")
    return clip


def read_audio(path: Path, start: float, duration: float, sample_rate: int = SAMPLE_RATE,
               notes: list[str] | None = None) -> np.ndarray:
    """Read ``duration`` seconds of a separate audio file from ``start`` as int16 mono at ``sample_rate``.

    Args:
        path: any audio file PyAV opens (16 kHz wav of the processed layout, ...).
        start: seconds from the start of the file.
        duration: seconds to keep; the result is trimmed or zero-padded to exactly that length.
        sample_rate: output rate in Hz.
        notes: list receiving a note when the file is much shorter than ``duration``.

    Returns:
        int16 array of ``audio_length(duration)`` samples.
    """
    container = _open(path, "audio")
    with container:
        if not container.streams.audio:
            raise MediaError("no audio stream in audio file")
        stream = container.streams.audio[0]
        track = _AudioTrack(sample_rate)
        if start > 0:
            _seek(container, stream, start)
        for packet in container.demux(stream):
            for frame in _decode_packet(packet, track):
                track.push(frame)
            if track.end is not None and track.end >= start + duration:
                break
    return track.finish(start, duration, notes if notes is not None else [])


# ----------------------------------------------------------------------------- container helpers

def _open(path: Path, what: str) -> av.container.InputContainer:
    try:
        # metadata_errors="ignore": non-UTF-8 tags (common in old .avi files) must not fail the clip
        return av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise MediaError(f"unreadable {what}: {type(err).__name__}: {err}") from None


def _seek(container, stream, seconds: float) -> None:
    """One seek to the keyframe before ``seconds``; frames before it are skipped while decoding."""
    try:
        container.seek(int(seconds / stream.time_base), stream=stream, backward=True)
    except av.FFmpegError:
        pass  # unseekable (or empty) file: decoding from where it is, frames before the start are skipped


def _decode_packet(packet, counter) -> list:
    """Decode one packet; a corrupt packet is counted and skipped so one bad GOP does not lose the clip."""
    try:
        return packet.decode()
    except (av.FFmpegError, ValueError):
        counter.bad_packets += 1
        return []


def _packets(container, streams, sampler: "_FrameSampler"):
    """Demuxed packets; a read error ends the stream (what was read still counts) and is noted."""
    packets = container.demux(*streams)
    while True:
        try:
            yield next(packets)
        except StopIteration:
            return
        except (av.FFmpegError, OSError) as err:
            sampler.read_error = f"{type(err).__name__}: {err}"
            return


# Muxers interleave streams within a few seconds (FFmpeg's default max_interleave_delta is 10 s):
# once an audio packet is this far past the clip's end, every later video packet is past it too.
_INTERLEAVE_SLACK = 30.0


def _packet_time(packet) -> float:
    """Presentation time of a packet in seconds (-inf when it has none: then it never ends the read)."""
    ts = packet.pts if packet.pts is not None else packet.dts
    return float(ts * packet.time_base) if ts is not None and packet.time_base else -math.inf


def _stream_start(stream) -> float:
    return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0


def _declared_duration(container, stream) -> float | None:
    """Video length the header promises. A truncated .avi reports the duration of what is left,
    but its header still holds the original frame count, hence the larger of the two."""
    candidates = []
    if stream.duration is not None and stream.duration > 0:
        candidates.append(float(stream.duration * stream.time_base))
    if stream.frames and stream.average_rate:
        candidates.append(stream.frames / float(stream.average_rate))
    if not candidates and container.duration:
        candidates.append(container.duration / 1e6)
    return max(candidates) if candidates else None


def _decode_container(container, want_audio: bool, segment, crop, cfg: DecodeConfig) -> Clip:
    if not container.streams.video:
        raise MediaError("no video stream")
    vstream = container.streams.video[0]
    vstream.codec_context.thread_count = 1  # one decoder thread per worker: workers scale across cores
    astream = container.streams.audio[0] if want_audio and container.streams.audio else None
    start = _stream_start(vstream) + (segment[0] if segment else 0.0)
    stop = start + min(cfg.max_duration, (segment[1] - segment[0]) if segment else math.inf)
    if segment and segment[0] > 0:
        _seek(container, vstream, start)
    sampler = _FrameSampler(start, stop, crop, cfg, vstream)
    feed = _VideoFeed(vstream, sampler)
    track = _AudioTrack(cfg.sample_rate) if astream is not None else None
    for packet in _packets(container, [s for s in (vstream, astream) if s is not None], sampler):
        if packet.stream.index == vstream.index:
            feed.put(packet)
        elif track.end is not None and track.end >= stop:
            # audio past the clip's end is never kept: not decoded (a 2 s video with hours of audio
            # stays a few MB); once it is far past, no video packet of the clip can follow either
            if _packet_time(packet) > stop + _INTERLEAVE_SLACK:
                break
        else:
            for frame in _decode_packet(packet, track):
                track.push(frame)
        if feed.past_stop() and (track is None or (track.end is not None and track.end >= stop)):
            break  # past the segment end / max duration: the rest of the file is not needed
    feed.drain()
    duration = sampler.finish()
    notes = sampler.notes(container, vstream, segment)
    if astream is None and want_audio:
        notes.append("no audio stream (audio missing)")
    audio = track.finish(start, duration, notes) if track is not None else None
    return Clip(sampler.frames, audio, duration, notes)


# ----------------------------------------------------------------------------- frames

_REORDER = 16  # packets held back before decoding: at least the deepest frame reordering H.264 allows


class _VideoFeed:
    """Sends video packets to the decoder a few packets late, so each frame's successor is known.

    Knowing the successor tells whether any sampling time falls on the frame. When none
    does, the decoder is allowed to drop it if it is a non-reference frame
    (``skip_frame=NONREF``): those are never needed to decode other frames, so the
    sampled frames are exactly those of a full decode, for less work than a full decode.
    """

    def __init__(self, stream, sampler: "_FrameSampler"):
        self.stream, self.sampler = stream, sampler
        self.pending: deque = deque()
        self.sent: deque = deque(maxlen=_REORDER)  # pts of packets already decoded
        self.after_stop = 0
        self.flushed = False

    def put(self, packet) -> None:
        if packet.size == 0:  # PyAV's end-of-stream packet
            self.drain()
            return
        self.sampler.observe(packet)
        if self.sampler.done:
            self.after_stop += 1
        self.pending.append(packet)
        if len(self.pending) > _REORDER:
            self._send(self.pending.popleft())

    def past_stop(self) -> bool:
        """True once every frame before the stop time has been demuxed (reordering included)."""
        return self.after_stop > _REORDER

    def drain(self) -> None:
        """Decode what is held back and flush the decoder's delayed frames."""
        while self.pending:
            self._send(self.pending.popleft())
        if not self.flushed:
            self.flushed = True
            self._decode(None)

    def _send(self, packet) -> None:
        self.stream.codec_context.skip_frame = "DEFAULT" if self._needed(packet) else "NONREF"
        self._decode(packet)
        self.sent.append(packet.pts)

    def _needed(self, packet) -> bool:
        s = self.sampler
        if packet.pts is None or not s.packet_clock or not self.sent:
            return True
        later = [q for q in self.sent if q is not None and q > packet.pts]
        later += [p.pts for p in self.pending if p.pts is not None and p.pts > packet.pts]
        if not later:
            return True  # the last frame: it covers the clip's end
        rel = packet.pts * s.time_base - s.start
        if rel >= s.stop - s.start - _EPS:
            return False  # after the stop time: never sampled
        first_k = max(0, math.ceil(rel * s.cfg.fps - _EPS))  # same rule as _FrameSampler.push
        return first_k < (min(later) * s.time_base - s.start) * s.cfg.fps - _EPS

    def _decode(self, packet) -> None:
        try:
            frames = self.stream.decode(packet)
        except (av.FFmpegError, ValueError):
            self.sampler.bad_packets += 1
            return
        for frame in frames:
            self.sampler.push(frame)


class _FrameSampler:
    """Picks the frame on screen at each ``k / fps`` while frames arrive in presentation order.

    The clip's timeline (its end, the frame intervals) comes from packet timestamps, which
    exist for every frame, decoded or dropped; from decoded frames only when packets carry none.
    """

    def __init__(self, start: float, stop: float, crop, cfg: DecodeConfig, stream):
        self.start, self.stop, self.crop, self.cfg = start, stop, crop, cfg
        self.frames: list[bytes] = []
        self.prev = None  # last frame seen, not yet converted (conversion happens only when sampled)
        self.prev_jpeg: tuple[object, bytes] | None = None
        self.end = 0.0  # end of the last frame, relative to start
        self.times: list[float] = []  # frame start times relative to start, for the frame-rate check
        self.bad_packets = 0
        self.done = False  # reached the stop time
        self.packet_clock = True
        self.geometry = None
        self.time_base = float(stream.time_base)  # Fraction arithmetic per frame is slow
        rate = stream.average_rate or stream.guessed_rate
        self.default_len = 1.0 / float(rate) if rate else 1.0 / 25.0
        self.n_seen = 0
        self.read_error: str | None = None

    def observe(self, packet) -> None:
        """Extend the timeline by one demuxed video packet."""
        if packet.pts is None:
            self.packet_clock = False  # timestamps only on decoded frames (rare .avi)
            return
        duration = packet.duration * self.time_base if packet.duration else self.default_len
        self._extend(packet.pts * self.time_base - self.start, duration)

    def _extend(self, rel: float, duration: float) -> None:
        if rel >= self.stop - self.start - _EPS:
            self.done = True
            return
        self.times.append(rel)
        self.end = max(self.end, rel + duration)

    def push(self, frame) -> None:
        """Take one decoded frame; emit every sampling time the previous frame covers."""
        if frame.pts is None:  # no timestamp: count frames from the clip start at the nominal rate
            rel = self.n_seen * self.default_len
        else:
            # the stream's time base: frames flushed out of the decoder carry none of their own
            rel = frame.pts * self.time_base - self.start
        self.n_seen += 1
        if not self.packet_clock:
            self._extend(rel, frame.duration * self.time_base if frame.duration else self.default_len)
        if rel >= self.stop - self.start - _EPS:
            return
        if rel > 0:  # grid times before this frame are shown by the previous frame
            while len(self.frames) < rel * self.cfg.fps - _EPS:
                self._emit(self.prev if self.prev is not None else frame)
        self.prev = frame

    def finish(self) -> float:
        if self.prev is None:
            raise MediaError("empty video: no decodable frames" + self._bad_note())
        duration = min(self.end, self.stop - self.start)
        while len(self.frames) < frame_count(duration, self.cfg.fps):
            self._emit(self.prev)
        self.prev = self.prev_jpeg = None  # release decoder buffers early
        return duration

    def _emit(self, frame) -> None:
        if self.prev_jpeg is None or self.prev_jpeg[0] is not frame:
            jpeg = _to_jpeg(frame, self._geometry(frame), self.cfg.jpeg_quality)
            self.prev_jpeg = (frame, jpeg)
        self.frames.append(self.prev_jpeg[1])

    def _geometry(self, frame):
        if self.geometry is None:
            self.geometry = plan_geometry(frame.width, frame.height, _rotation(frame), self.crop, self.cfg)
        return self.geometry

    def _bad_note(self) -> str:
        parts = [f"{self.bad_packets} undecodable packets"] if self.bad_packets else []
        parts += [f"read error {self.read_error}"] if self.read_error else []
        return f" ({'; '.join(parts)})" if parts else ""

    def notes(self, container, vstream, segment) -> list[str]:
        """Non-fatal findings; raises MediaError for a truncated video."""
        out = []
        g = self.geometry
        if g is not None and g.rotation:
            out.append(f"rotated {g.rotation} degrees (turned upright)")
        w, h = vstream.codec_context.width, vstream.codec_context.height
        if w % 2 or h % 2:
            out.append(f"odd frame size {w}x{h}")
        times = sorted(self.times)
        steps = [b - a for a, b in zip(times, times[1:]) if b - a > _EPS]
        if len(steps) >= 2 and max(steps) > 1.5 * min(steps):
            out.append(f"variable frame rate (frame intervals {min(steps) * 1000:.0f}-{max(steps) * 1000:.0f} ms)")
        if self.bad_packets:
            out.append(f"skipped {self.bad_packets} undecodable packets")
        if self.read_error:
            out.append(f"read error after {self.end:.2f} s: {self.read_error}")
        declared = _declared_duration(container, vstream)
        if self.done and not segment and declared and declared > self.stop - self.start + _EPS:
            out.append(f"cut to max duration {self.stop - self.start:g} s (source {declared:.2f} s)")
        wanted = self.stop - self.start
        if segment and wanted > self.end + 0.5:
            video_end = segment[0] + max(self.end, 0.0)
            if declared and video_end < declared - max(0.5, 0.1 * declared):
                raise MediaError(f"truncated video: segment {segment[0]:.2f}-{segment[1]:.2f} s, readable to "
                                 f"{video_end:.2f} s of {declared:.2f} s" + self._bad_note())
            out.append(f"segment ends {wanted - self.end:.2f} s after the video")
        if not segment and not self.done and declared and self.end < declared - max(0.5, 0.1 * declared):
            raise MediaError(f"truncated video: {self.end:.2f} s of {declared:.2f} s" + self._bad_note())
        return out


def _rotation(frame) -> int:
    """Display rotation of a frame in degrees counter-clockwise, snapped to 0/90/180/270."""
    try:
        angle = frame.rotation or 0
    except (AttributeError, ValueError):
        angle = 0
    return int(round(angle / 90.0)) * 90 % 360


@dataclass(frozen=True)
class Geometry:
    """How a raw decoded frame becomes the output square.

    Args:
        width, height: size the raw frame is scaled to by swscale (before rotation).
        rotation: counter-clockwise degrees applied after scaling (np.rot90 steps of 90).
        box: (x, y) top-left of the ``size x size`` window cut from the scaled upright frame.
        size: output side.
    """

    width: int
    height: int
    rotation: int
    box: tuple[int, int]
    size: int


def plan_geometry(width: int, height: int, rotation: int, crop, cfg: DecodeConfig) -> Geometry:
    """Plan one swscale call (scale + RGB) and a slice that together give the output square.

    Cropping happens in the upright (display) frame: the left/right half first, then the
    optional centred square. Scaling the whole frame so the crop window becomes exactly
    ``size x size`` keeps it to a single resampling pass per frame.
    """
    up_w, up_h = (height, width) if rotation in (90, 270) else (width, height)
    x0, y0, cw, ch = 0.0, 0.0, float(up_w), float(up_h)
    if crop in ("left", "right"):
        cw = up_w / 2.0
        x0 = cw if crop == "right" else 0.0
    if cfg.center_crop:
        side = min(cw, ch)
        x0, y0, cw, ch = x0 + (cw - side) / 2, y0 + (ch - side) / 2, side, side
    sx, sy = cfg.size / cw, cfg.size / ch
    scaled_w, scaled_h = max(cfg.size, round(up_w * sx)), max(cfg.size, round(up_h * sy))
    bx = min(round(x0 * sx), scaled_w - cfg.size)
    by = min(round(y0 * sy), scaled_h - cfg.size)
    raw_w, raw_h = (scaled_h, scaled_w) if rotation in (90, 270) else (scaled_w, scaled_h)
    return Geometry(raw_w, raw_h, rotation, (bx, by), cfg.size)


# One swscale context per process, reused while the input size stays the same: building it
# per frame costs more than the scaling itself. Keyed by pid: a context inherited through
# fork() would wait forever on its parent's scaler threads.
_REFORMATTER: tuple[int, VideoReformatter] | None = None


def _reformatter() -> VideoReformatter:
    global _REFORMATTER
    if _REFORMATTER is None or _REFORMATTER[0] != os.getpid():
        _REFORMATTER = (os.getpid(), VideoReformatter())
    return _REFORMATTER[1]


def _to_jpeg(frame, g: Geometry, quality: int) -> bytes:
    # AREA: an averaging filter, right for the usual downscale and 2x faster than bilinear here;
    # threads=1: swscale would otherwise start its own threads (one thread per worker)
    rgb = _reformatter().reformat(frame, width=g.width, height=g.height, format="rgb24",
                                  interpolation="AREA", threads=1).to_ndarray()
    if g.rotation:
        rgb = np.rot90(rgb, k=g.rotation // 90)
    x, y = g.box
    rgb = np.ascontiguousarray(rgb[y:y + g.size, x:x + g.size])
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# ----------------------------------------------------------------------------- audio

class _AudioTrack:
    """Resamples decoded audio to int16 mono and remembers where on the timeline it starts."""

    def __init__(self, sample_rate: int):
        self.rate = sample_rate
        # 1 s output frames: a few array conversions per clip instead of one per 1024-sample AAC frame
        self.resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate, frame_size=sample_rate)
        self.chunks: list[np.ndarray] = []
        self.t0: float | None = None
        self.end: float | None = None
        self.bad_packets = 0

    def push(self, frame) -> None:
        t = frame.time if frame.pts is not None else None
        if self.t0 is None:
            self.t0 = t if t is not None else 0.0
        if t is not None:
            self.end = t + frame.samples / frame.sample_rate
        for out in self.resampler.resample(frame):
            self.chunks.append(out.to_ndarray().reshape(-1))

    def finish(self, start: float, duration: float, notes: list[str]) -> np.ndarray | None:
        """Samples covering ``[start, start + duration)``; None when the stream held no audio."""
        for out in self.resampler.resample(None):
            self.chunks.append(out.to_ndarray().reshape(-1))
        if self.t0 is None:
            notes.append("audio stream has no decodable audio (audio missing)")
            return None
        pcm = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)
        offset = round((start - self.t0) * self.rate)
        pcm = pcm[offset:] if offset >= 0 else np.concatenate([np.zeros(-offset, np.int16), pcm])
        n = audio_length(duration, self.rate)
        if len(pcm) < n:
            if n - len(pcm) > 0.1 * self.rate:
                notes.append(f"audio {(n - len(pcm)) / self.rate:.2f} s shorter than video (zero-padded)")
            pcm = np.concatenate([pcm, np.zeros(n - len(pcm), np.int16)])
        return np.ascontiguousarray(pcm[:n], dtype=np.int16)
