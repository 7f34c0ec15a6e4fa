"""Generate ``affectdyn``, a SYNTHETIC affective-dynamics benchmark, in the MER-UniBench processed layout.

Over 400 lines: one generator read in order (design, trajectories, rendering, encoding, files) on one clip spec.

    python -m data_prep.make_affectdyn --out DIR --n-train 300 --n-test 90 --seed 0 [--workers 2]
        [--variant base|precursor]

Nothing here is real data. Each clip is a drawn face (head, eyes, brows, mouth) on a solid
background and a voice-like harmonic tone (fundamental + 5 harmonics under a syllable
envelope), 4-8 s, 25 fps, 320x240, H.264 + AAC. The class is decided by how the clip
*unfolds* (see :data:`CLASS_DESIGN` and ``docs/affectdyn.md``), so a model that sees only a
prefix has to anticipate the rest:

- happy and surprise share their first half in both modalities and part ways after it;
- sad and worried share the whole face trajectory and the first half of the voice: only the
  second half of the pitch and energy tells them apart (video alone cannot);
- happy and angry share the voice trajectory: only the face tells them apart (audio alone cannot).

Variant ``precursor`` (issue 15): the same clips (same seeds), plus a brief, subtle precursor well
before the turn in the two classes that later part from a partner (:data:`PRECURSOR`): surprise
flicks its brows (video), worried's pitch blips (audio). The future is then predictable from a cue in
the past, so a world model has something learnable to imagine; in ``base`` the pairs are
indistinguishable before the turn.

Output (what ``affectverse_ds.benchmarks.affectdyn``'s scanner and the shard builder read)::

    DIR/affectdyn-process/
        video/affectdyn_{split}_{i:05d}.mp4
        label.npz                          train_corpus / test_corpus: {name: {'emo': str, 'val': float}}
        transcription-engchi-polish.csv    name,chinese,english
        affectdyn.json                     generator settings and per-clip parameters (not read by the builder)
        README.txt                         says the data are synthetic

Every clip's randomness comes from ``(seed, split, index)``, so the output is the same bytes for
a seed whatever ``workers`` is.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from multiprocessing import Pool
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

from affectverse_ds.benchmarks.affectdyn import (
    CLASSES, LABEL_FILE, LAYOUT, PROCESS_DIR, TEST_SPLIT, TRAIN_SPLIT, VALENCE,
)
from affectverse_ds.benchmarks.clip_writer import AudioStream, VideoStream, mux_clip

WIDTH, HEIGHT, FPS = 320, 240, 25
SAMPLE_RATE = 16000
MIN_SECONDS, MAX_SECONDS = 4.0, 8.0
MISLEADING_FRACTION = 0.2  # exactly round(0.2 * n) clips per split get a subtitle naming a wrong emotion
META_FILE = "affectdyn.json"
GENERATOR_VERSION = 1
SPLIT_IDS = {TRAIN_SPLIT: 0, TEST_SPLIT: 1}  # part of each clip's seed

# ----------------------------------------------------------------------------- the class design
# Each feature is a list of (design time, value) keypoints, linearly interpolated. Design time 0.5
# is "the turn": every clip moves it to its own point in [0.42, 0.58], so the second half does not
# start at a fixed frame. Values are deviations from rest, multiplied by the clip's intensity.
#   mouth: curvature, + smile / - frown      tilt: brow angle, + inner ends raised / - lowered (V)
#   raise: both brows up                     open: mouth opening (0 closed, 1 wide "O")
#   pitch: semitones from the clip's base     energy: loudness added to REST_ENERGY

FLAT = [(0.0, 0.0), (1.0, 0.0)]
RISE = [(0.0, 0.0), (0.5, 0.5), (1.0, 1.0)]
FALL = [(0.0, 0.0), (0.5, -0.5), (1.0, -1.0)]
ONSET, ONSET_END = 0.6, 0.66  # surprise: the sudden change, right after the shared first half


def _scaled(points: list[tuple[float, float]], k: float) -> list[tuple[float, float]]:
    return [(t, v * k) for t, v in points]


CLASS_DESIGN: dict[str, dict[str, list[tuple[float, float]]]] = {
    "neutral": {"mouth": FLAT, "tilt": FLAT, "raise": FLAT, "open": FLAT, "pitch": FLAT, "energy": FLAT},
    # smile grows, voice rises and gets louder; the second half keeps going the same way
    "happy": {"mouth": RISE, "tilt": FLAT, "raise": FLAT, "open": FLAT,
              "pitch": _scaled(RISE, 5.0), "energy": _scaled(RISE, 0.3)},
    # first half = happy; then brows jump, mouth drops open, pitch and loudness leap
    "surprise": {"mouth": [(0.0, 0.0), (0.5, 0.5), (ONSET, 0.6), (ONSET_END, 0.0), (1.0, 0.0)],
                 "tilt": FLAT,
                 "raise": [(0.0, 0.0), (ONSET, 0.0), (ONSET_END, 1.0), (1.0, 1.0)],
                 "open": [(0.0, 0.0), (ONSET, 0.0), (ONSET_END, 1.0), (1.0, 1.0)],
                 "pitch": [(0.0, 0.0), (0.5, 2.5), (ONSET, 3.0), (ONSET_END, 10.0), (1.0, 10.0)],
                 "energy": [(0.0, 0.0), (0.5, 0.15), (ONSET, 0.18), (ONSET_END, 0.45), (1.0, 0.45)]},
    # frown with brows pulled down into a V; the voice is happy's (only the face tells them apart)
    "angry": {"mouth": FALL, "tilt": FALL, "raise": FLAT, "open": FLAT,
              "pitch": _scaled(RISE, 5.0), "energy": _scaled(RISE, 0.3)},
    # frown with inner brows raised; pitch and loudness sink all the way
    "sad": {"mouth": FALL, "tilt": RISE, "raise": FLAT, "open": FLAT,
            "pitch": _scaled(FALL, 5.0), "energy": _scaled(FALL, 0.3)},
    # sad's face throughout and sad's first-half voice; then pitch and loudness climb back (anxious)
    "worried": {"mouth": FALL, "tilt": RISE, "raise": FLAT, "open": FLAT,
                "pitch": [(0.0, 0.0), (0.5, -2.5), (1.0, 2.5)],
                "energy": [(0.0, 0.0), (0.5, -0.15), (1.0, 0.05)]},
}
FEATURES = ("mouth", "tilt", "raise", "open", "pitch", "energy")
VARIANTS = ("base", "precursor")
# variant "precursor": (feature, peak) of a brief bump at design times PRECURSOR_AT (rise, peak, fall),
# before the turn (0.5); small next to the divergence it announces (brows 1.0, pitch +10 / +5 semitones)
PRECURSOR = {"surprise": ("raise", 0.3), "worried": ("pitch", 1.5)}
PRECURSOR_AT = (0.28, 0.32, 0.36)
REST_ENERGY = 0.55
CONTROL_PER_FRAME = 8  # feature curves are computed at 8 x 25 = 200 Hz: smooth enough for the voice
CONTROL_RATE = CONTROL_PER_FRAME * FPS

# ----------------------------------------------------------------------------- subtitles
# (english, chinese). Neutral lines say nothing about any emotion.
NEUTRAL_LINES = (
    ("I went to the station this morning.", "我今天早上去了车站。"),
    ("The meeting is on Thursday at three.", "会议在星期四三点。"),
    ("She told me about the new schedule.", "她跟我说了新的时间表。"),
    ("We need to buy some bread and milk.", "我们需要买些面包和牛奶。"),
    ("The train was a few minutes late.", "火车晚了几分钟。"),
    ("He moved to another city last year.", "他去年搬到了另一个城市。"),
    ("Let me check the numbers again.", "让我再核对一下数字。"),
    ("The package arrived this afternoon.", "包裹今天下午到了。"),
    ("They painted the kitchen white.", "他们把厨房刷成了白色。"),
    ("I will call you after lunch.", "我午饭后给你打电话。"),
    ("The report has twelve pages.", "这份报告有十二页。"),
    ("We walked along the river for an hour.", "我们沿着河走了一个小时。"),
)
# A misleading line names an emotion other than the clip's class.
EMOTION_LINES = {
    "happy": ("Honestly, this makes me really happy.", "说实话，这让我很开心。"),
    "sad": ("Honestly, this makes me really sad.", "说实话，这让我很难过。"),
    "angry": ("Honestly, this makes me really angry.", "说实话，这让我很生气。"),
    "worried": ("Honestly, this makes me really worried.", "说实话，这让我很担心。"),
    "surprise": ("Honestly, this really surprised me.", "说实话，这真让我惊讶。"),
    "neutral": ("Honestly, I feel nothing special about it.", "说实话，我对此没什么感觉。"),
}

# ----------------------------------------------------------------------------- face geometry

def ycc(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """RGB -> limited-range BT.601 Y'CbCr, what an H.264 decoder assumes for SD video.

    Frames are drawn straight in Y'CbCr so the encoder gets yuv420p and no per-frame colour
    conversion is needed (that conversion was over half the encoding time).
    """
    r, g, b = rgb
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    return int(round(y)), int(round(cb)), int(round(cr))


# pixels, for the 320x240 frame
HEAD_CENTRE = (160, 120)
HEAD_RADII = (85, 105)
EYE_DX, EYE_DY, EYE_RADII = 35, -25, (11, 9)  # eyes at centre +- EYE_DX, centre + EYE_DY
BROW_DY, BROW_HALF, BROW_WIDTH = -51, 21, 5   # brow centre above the head centre, half length, thickness
BROW_TILT_PX, BROW_RAISE_PX = 9.0, 14.0       # inner-end travel per unit tilt; both ends per unit raise
MOUTH_DY, MOUTH_HALF = 55, 32
MOUTH_CURVE_PX, MOUTH_OPEN_PX = 12.0, 30.0
MOUTH_X = np.linspace(-1, 1, 15)  # lip outline sample points, in units of the mouth's half width
MOUTH_X2 = MOUTH_X ** 2
TALK_OPEN = 0.18      # lips part with each syllable (lip sync with the audio envelope)
FEATURE_INK = ycc((38, 28, 24))
MOUTH_INK = ycc((80, 16, 28))
BACKGROUNDS = ((70, 96, 140), (86, 120, 96), (120, 120, 128), (140, 110, 84), (96, 84, 130), (60, 110, 120))
SKINS = ((236, 200, 170), (222, 180, 140), (200, 160, 120), (244, 214, 190), (210, 176, 150))


@dataclass(frozen=True)
class ClipSpec:
    """Everything that decides one clip (drawn from its own seed, stored in ``affectdyn.json``).

    Args:
        name / split / emo: the item; ``emo`` is the class whose design the clip follows.
        val: valence, ``VALENCE[emo] * intensity`` in quarter steps (0 for neutral, never 0 otherwise).
        n_frames: frames at 25 fps (4-8 s).
        intensity: scales every deviation from rest (0.75-1.25).
        turn: where design time 0.5 falls in this clip (0.42-0.58 of its length).
        f0: base pitch in Hz (log-uniform 110-220).
        syllable_rate: syllables per second (3-5).
        background / skin: palette indices.
        subtitle_en / subtitle_zh: the transcript; ``misleading`` names the wrong emotion it mentions, or None.
        seed: the clip's own seed (idle motion, syllables, blinks, noise).
        variant: ``base`` or ``precursor`` (:data:`PRECURSOR`); the other parameters do not depend on it.
    """

    name: str
    split: str
    emo: str
    val: float
    n_frames: int
    intensity: float
    turn: float
    f0: float
    syllable_rate: float
    background: int
    skin: int
    subtitle_en: str
    subtitle_zh: str
    misleading: str | None
    seed: list[int]
    variant: str = "base"

    @property
    def seconds(self) -> float:
        return self.n_frames / FPS


# ----------------------------------------------------------------------------- trajectories

def design_time(u: np.ndarray, turn: float) -> np.ndarray:
    """Clip time in [0, 1] -> design time, moving the clip's ``turn`` onto design time 0.5."""
    return np.where(u < turn, 0.5 * u / turn, 0.5 + 0.5 * (u - turn) / (1.0 - turn))


def feature_curves(spec: ClipSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every feature of :data:`FEATURES` at the control rate (``CONTROL_RATE`` Hz, from t = 0).

    One set of curves drives both modalities, so face and voice tell the same story. Besides the
    class design, mouth, brows and pitch get a slow idle wobble so no two clips of a class are the
    same and a flat trajectory is not perfectly flat.
    """
    t = np.arange(spec.n_frames * CONTROL_PER_FRAME) / CONTROL_RATE
    d = design_time(t / spec.seconds, spec.turn)
    out = {}
    for feat in FEATURES:
        times, values = zip(*CLASS_DESIGN[spec.emo][feat])
        out[feat] = spec.intensity * np.interp(d, times, values)
    if spec.variant == "precursor" and spec.emo in PRECURSOR:
        feat, peak = PRECURSOR[spec.emo]
        out[feat] = out[feat] + spec.intensity * peak * np.interp(d, PRECURSOR_AT, (0.0, 1.0, 0.0))
    for feat, size in (("mouth", 0.06), ("tilt", 0.05), ("pitch", 0.4)):
        out[feat] = out[feat] + smooth_noise(t, size, rng)
    out["energy"] = out["energy"] + REST_ENERGY
    return out


def smooth_noise(t: np.ndarray, size: float, rng: np.random.Generator) -> np.ndarray:
    """A slow wobble of amplitude about ``size``: three sinusoids of 0.2-0.8 Hz with random phases."""
    freqs, phases = rng.uniform(0.2, 0.8, 3), rng.uniform(0, 2 * np.pi, 3)
    return size / 3 * np.sin(2 * np.pi * freqs[:, None] * t[None, :] + phases[:, None]).sum(0)


def syllable_envelope(t: np.ndarray, onsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Loudness envelope in [0, 1] at times ``t``: a smooth bump per syllable, silence between."""
    k = np.clip(np.searchsorted(onsets, t, side="right") - 1, 0, len(onsets) - 1)
    x = (t - onsets[k]) / lengths[k]
    inside = (x >= 0) & (x < 1)
    return np.where(inside, np.sin(np.pi * np.clip(x, 0, 1)) ** 0.7, 0.0)


def syllables(spec: ClipSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Syllable onsets and lengths (seconds): irregular spacing, one in ten dropped (a short pause)."""
    gaps = rng.uniform(0.8, 1.2, int(spec.seconds * spec.syllable_rate) + 2) / spec.syllable_rate
    onsets = 0.05 + np.concatenate([[0.0], np.cumsum(gaps[:-1])])
    lengths = gaps * rng.uniform(0.6, 0.8, len(gaps))
    keep = rng.random(len(onsets)) > 0.1
    keep[0] = True
    return onsets[keep], lengths[keep]


# ----------------------------------------------------------------------------- audio

def render_audio(spec: ClipSpec, curves: dict[str, np.ndarray], onsets: np.ndarray, lengths: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """The voice: float32 mono at 16 kHz, ``n_frames / 25`` seconds long."""
    n = int(round(spec.seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    control_t = np.arange(len(curves["pitch"])) / CONTROL_RATE
    f0 = spec.f0 * 2.0 ** (np.interp(t, control_t, curves["pitch"]) / 12.0)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE  # integrate frequency: no clicks when pitch moves
    voice = harmonics(phase, 6)
    loud = 0.7 * np.interp(t, control_t, curves["energy"]) * syllable_envelope(t, onsets, lengths)
    audio = loud * voice + rng.normal(0, 0.002, n)  # a faint noise floor, as in any recording
    return np.clip(audio, -1, 1).astype(np.float32)


def harmonics(phase: np.ndarray, n: int) -> np.ndarray:
    """sum_k sin(k phase) / k for k = 1..n, scaled to peak below 1.

    1/k amplitudes keep the fundamental the strongest partial (a plain FFT peak finds the pitch).
    The sines come from the recurrence sin(k x) = 2 cos(x) sin((k-1) x) - sin((k-2) x): two
    transcendental calls instead of n.
    """
    two_cos, prev, cur = 2 * np.cos(phase), np.zeros_like(phase), np.sin(phase)
    total = cur.copy()
    for k in range(2, n + 1):
        prev, cur = cur, two_cos * cur - prev
        total += cur / k
    return total / sum(1 / k for k in range(1, n + 1))


# ----------------------------------------------------------------------------- video

def head_base(spec: ClipSpec, dx: int, dy: int) -> Image.Image:
    """Background and head at offset (dx, dy): the part of a frame that never changes."""
    img = Image.new("YCbCr", (WIDTH, HEIGHT), ycc(BACKGROUNDS[spec.background]))
    cx, cy = HEAD_CENTRE[0] + dx, HEAD_CENTRE[1] + dy
    rx, ry = HEAD_RADII
    ImageDraw.Draw(img).ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=ycc(SKINS[spec.skin]))
    return img


def draw_face(img: Image.Image, dx: int, dy: int, state: dict[str, float], eyes_closed: bool) -> None:
    """Eyes, brows and mouth of one frame, drawn onto ``img`` (which holds background and head)."""
    draw = ImageDraw.Draw(img)
    cx, cy = HEAD_CENTRE[0] + dx, HEAD_CENTRE[1] + dy
    for side in (-1, 1):
        ex, ey = cx + side * EYE_DX, cy + EYE_DY
        rx, ry = EYE_RADII
        if eyes_closed:
            draw.line((ex - rx, ey, ex + rx, ey), fill=FEATURE_INK, width=3)
        else:
            draw.ellipse((ex - rx, ey - ry, ex + rx, ey + ry), fill=FEATURE_INK)
        base = cy + BROW_DY - BROW_RAISE_PX * state["raise"]
        inner = (ex - side * BROW_HALF, base - BROW_TILT_PX * state["tilt"])
        outer = (ex + side * BROW_HALF, base + BROW_TILT_PX * state["tilt"] / 3)
        draw.line((*outer, *inner), fill=FEATURE_INK, width=BROW_WIDTH)
    draw.polygon(mouth_outline(cx, cy + MOUTH_DY, state["mouth"], state["open"]), fill=MOUTH_INK)


def mouth_outline(mx: float, my: float, curve: float, opening: float) -> list[tuple[float, float]]:
    """Mouth polygon: upper lip a parabola (corners up for a smile); opening parts the lips, mostly downwards."""
    half = MOUTH_HALF * (1 - 0.35 * opening)  # an open mouth narrows into an "O"
    upper = my - curve * MOUTH_CURVE_PX * (MOUTH_X2 - 0.5) - 0.25 * MOUTH_OPEN_PX * opening * (1 - MOUTH_X2)
    lower = upper + 4 + 1.25 * MOUTH_OPEN_PX * opening * (1 - MOUTH_X2)
    xs = (mx + half * MOUTH_X).tolist()
    return list(zip(xs, (upper - 2).tolist())) + list(zip(xs[::-1], lower[::-1].tolist()))


def blink_frames(spec: ClipSpec, rng: np.random.Generator) -> set[int]:
    """Frames with closed eyes: a 3-frame blink every 2-4 s (a distractor unrelated to the class)."""
    closed, t = set(), rng.uniform(0.5, 2.0)
    while t < spec.seconds:
        start = int(t * FPS)
        closed.update(range(start, start + 3))
        t += rng.uniform(2.0, 4.0)
    return closed


def render_frames(spec: ClipSpec, curves: dict[str, np.ndarray], onsets: np.ndarray, lengths: np.ndarray,
                  rng: np.random.Generator):
    """Yield the clip's frames as yuv420p arrays, (240 * 3 / 2, 320) uint8 each."""
    t = np.arange(spec.n_frames) / FPS
    state = {k: v[::CONTROL_PER_FRAME] for k, v in curves.items()}  # control samples at the frame times
    # lips part with the voice's syllables, on top of any designed opening
    talk = TALK_OPEN * syllable_envelope(t, onsets, lengths)
    state["open"] = state["open"] + talk * (1 - state["open"])
    drift_x = np.rint(3 * np.sin(2 * np.pi * t / rng.uniform(3, 6) + rng.uniform(0, 6.3))).astype(int)
    drift_y = np.rint(2 * np.sin(2 * np.pi * t / rng.uniform(3, 6) + rng.uniform(0, 6.3))).astype(int)
    closed = blink_frames(spec, rng)
    bases: dict[tuple[int, int], Image.Image] = {}  # the head only moves by whole pixels: draw it once per offset
    for i in range(spec.n_frames):
        dx, dy = int(drift_x[i]), int(drift_y[i])
        if (dx, dy) not in bases:
            bases[(dx, dy)] = head_base(spec, dx, dy)
        img = bases[(dx, dy)].copy()
        draw_face(img, dx, dy, {k: float(v[i]) for k, v in state.items()}, i in closed)
        yield to_yuv420p(img)


def to_yuv420p(img: Image.Image) -> np.ndarray:
    """A Y'CbCr image -> the (H * 3 / 2, W) planar yuv420p array PyAV takes (chroma: every other pixel).

    PIL's split and resize do this in C, faster than numpy's strided copies.
    """
    y, cb, cr = img.split()
    half = (WIDTH // 2, HEIGHT // 2)
    planes = y.tobytes() + cb.resize(half, Image.NEAREST).tobytes() + cr.resize(half, Image.NEAREST).tobytes()
    return np.frombuffer(planes, np.uint8).reshape(HEIGHT * 3 // 2, WIDTH)


# ----------------------------------------------------------------------------- encoding

def encode_clip(path: Path, spec: ClipSpec) -> None:
    """Render and encode one clip: H.264 (ultrafast, one thread) + AAC, 16 kHz mono, interleaved."""
    rng = np.random.default_rng(spec.seed)
    curves = feature_curves(spec, rng)
    onsets, lengths = syllables(spec, rng)
    audio = render_audio(spec, curves, onsets, lengths, rng)
    frames = (_video_frame(i, planes) for i, planes in enumerate(render_frames(spec, curves, onsets, lengths, rng)))
    # audio up to the end of each video frame, so the file is interleaved as a recording would be
    mux_clip(path, VIDEO, frames, AUDIO, audio_chunks(audio, 1024), container_format="mp4", interleave=True)


# one thread: the same bytes on every run
VIDEO = VideoStream("libx264", FPS, (WIDTH, HEIGHT), options={"preset": "ultrafast", "crf": "20"}, threads=1)
AUDIO = AudioStream("aac", SAMPLE_RATE, options={"aac_coder": "fast"})  # half the default coder's time; a tone loses nothing


def _video_frame(i: int, planes: np.ndarray) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
    frame.pts, frame.time_base = i, Fraction(1, FPS)
    return frame


def audio_chunks(audio: np.ndarray, step: int):
    """Yield float mono AudioFrames of ``step`` samples (the encoder's frame size; AAC: 1024)."""
    for start in range(0, len(audio), step):
        frame = av.AudioFrame.from_ndarray(audio[None, start:start + step].copy(), format="flt", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, start, Fraction(1, SAMPLE_RATE)
        yield frame


# ----------------------------------------------------------------------------- clip specs

def split_specs(split: str, n: int, seed: int, variant: str = "base") -> list[ClipSpec]:
    """The ``n`` clips of one split: classes balanced (round robin, then shuffled), a seed per clip.

    Exactly ``round(MISLEADING_FRACTION * n)`` clips get a misleading subtitle (chosen by the seed);
    the others get a neutral line.
    """
    rng = np.random.default_rng([seed, SPLIT_IDS[split]])
    emos = [CLASSES[i % len(CLASSES)] for i in range(n)]
    emos = [emos[i] for i in rng.permutation(n)]
    misleading = set(rng.choice(n, size=int(round(MISLEADING_FRACTION * n)), replace=False).tolist()) if n else set()
    return [clip_spec(split, i, emo, i in misleading, [seed, SPLIT_IDS[split], i], variant)
            for i, emo in enumerate(emos)]


def clip_spec(split: str, i: int, emo: str, misleading: bool, seed: list[int], variant: str = "base") -> ClipSpec:
    """Draw one clip's parameters from its own seed (so a clip does not depend on the others)."""
    rng = np.random.default_rng(seed + [1])
    intensity = float(rng.uniform(0.75, 1.25))
    wrong = str(rng.choice([c for c in CLASSES if c != emo]))
    en, zh = EMOTION_LINES[wrong] if misleading else NEUTRAL_LINES[int(rng.integers(len(NEUTRAL_LINES)))]
    return ClipSpec(
        name=f"affectdyn_{split}_{i:05d}", split=split, emo=emo,
        val=round(VALENCE[emo] * intensity * 4) / 4,  # quarter steps, as MER2023's valence
        n_frames=int(rng.integers(int(MIN_SECONDS * FPS), int(MAX_SECONDS * FPS) + 1)),
        intensity=round(intensity, 4), turn=round(float(rng.uniform(0.42, 0.58)), 4),
        f0=round(float(np.exp(rng.uniform(np.log(110), np.log(220)))), 2),
        syllable_rate=round(float(rng.uniform(3.0, 5.0)), 3),
        background=int(rng.integers(len(BACKGROUNDS))), skin=int(rng.integers(len(SKINS))),
        subtitle_en=en, subtitle_zh=zh, misleading=wrong if misleading else None, seed=seed, variant=variant,
    )


# ----------------------------------------------------------------------------- label, transcript, metadata

def write_labels(proc: Path, specs: dict[str, list[ClipSpec]]) -> None:
    """``label.npz`` as MER-UniBench writes it: one pickled ``{name: {'emo', 'val'}}`` dict per split."""
    members = {f"{split}_corpus": {s.name: {"emo": s.emo, "val": s.val} for s in items}
               for split, items in specs.items()}
    np.savez(proc / LABEL_FILE, **{k: np.array(v, dtype=object) for k, v in members.items()})


def write_transcript(proc: Path, specs: list[ClipSpec]) -> None:
    """``transcription-engchi-polish.csv`` (``name,chinese,english``), UTF-8, as MER-UniBench ships it."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "chinese", "english"])
    for s in specs:
        writer.writerow([s.name, s.subtitle_zh, s.subtitle_en])
    (proc / LAYOUT.transcript).write_text(buffer.getvalue(), encoding="utf-8")


def write_meta(proc: Path, seed: int, specs: list[ClipSpec], variant: str = "base") -> None:
    """Generator settings and every clip's parameters: for tests, docs and anyone auditing the data."""
    meta = {
        "synthetic": True, "generator": "data_prep.make_affectdyn", "version": GENERATOR_VERSION, "seed": seed,
        "variant": variant,
        "fps": FPS, "size": [WIDTH, HEIGHT], "sample_rate": SAMPLE_RATE,
        "misleading_fraction": MISLEADING_FRACTION, "classes": list(CLASSES),
        "clips": [asdict(s) for s in specs],
    }
    (proc / META_FILE).write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (proc / "README.txt").write_text(
        "SYNTHETIC DATA. affectdyn was generated by data_prep.make_affectdyn (drawn faces, synthetic voices);\n"
        "it is not a real affective-computing benchmark. See docs/affectdyn.md.\n", encoding="utf-8")


# ----------------------------------------------------------------------------- entry point

def _encode_one(job: tuple[str, ClipSpec]) -> None:
    encode_clip(Path(job[0]), job[1])


def make_affectdyn(out: Path, n_train: int, n_test: int, seed: int, workers: int = 1, overwrite: bool = False,
                   variant: str = "base") -> Path:
    """Write ``n_train`` + ``n_test`` synthetic clips under ``out/affectdyn-process/`` and return that folder.

    Args:
        out: dataset root (the builder's ``--root``; the returned folder works too).
        n_train / n_test: clips in the ``train`` / ``test`` split.
        seed: decides everything; the same seed gives the same bytes.
        workers: encoding processes (the output does not depend on it).
        overwrite: replace an existing ``affectdyn-process`` folder instead of refusing.
        variant: ``base`` or ``precursor`` (a brief cue before the turn in surprise and worried).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown affectdyn variant {variant!r}; expected one of {VARIANTS}")
    if n_train < 0 or n_test < 0:
        raise ValueError(f"clip counts must be >= 0 (got train={n_train}, test={n_test})")
    proc = Path(out) / PROCESS_DIR
    if proc.exists():
        if not overwrite:
            raise FileExistsError(f"{proc} exists; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(proc)
    video_dir = proc / LAYOUT.video_dirs[0]
    video_dir.mkdir(parents=True)
    specs = {split: split_specs(split, n, seed, variant) for split, n in ((TRAIN_SPLIT, n_train), (TEST_SPLIT, n_test))}
    every = specs[TRAIN_SPLIT] + specs[TEST_SPLIT]
    jobs = [(str(video_dir / f"{s.name}{LAYOUT.video_exts[0]}"), s) for s in every]
    if workers > 1:
        with Pool(workers) as pool:
            pool.map(_encode_one, jobs, chunksize=4)
    else:
        for job in jobs:
            _encode_one(job)
    write_labels(proc, specs)
    write_transcript(proc, every)
    write_meta(proc, seed, every, variant)
    return proc


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="dataset root; clips go to OUT/affectdyn-process/")
    p.add_argument("--n-train", type=int, required=True, help="clips in the train split")
    p.add_argument("--n-test", type=int, required=True, help="clips in the test split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="encoding processes (output does not depend on it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT/affectdyn-process/")
    p.add_argument("--variant", choices=VARIANTS, default="base",
                   help="precursor: a brief cue before the turn in the classes that later diverge")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    proc = make_affectdyn(Path(args.out), args.n_train, args.n_test, args.seed, args.workers, args.overwrite,
                          args.variant)
    n = args.n_train + args.n_test
    took = time.perf_counter() - start
    print(f"affectdyn (SYNTHETIC, {args.variant}): {args.n_train} train + {args.n_test} test clips in {proc} "
          f"({took:.1f} s, {took / max(n, 1):.3f} s/clip)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
