"""Clip decoding: the 3 FPS timestamp rule, 224x224 frames, 16 kHz mono audio, and bad media."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from affectverse_ds.data.media import DecodeConfig, MediaError, decode_clip, frame_count, plan_geometry


def _image(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(float)


def _red_centre(jpeg: bytes) -> tuple[float, float]:
    """(row, col) of the red corner marker as fractions of the frame."""
    img = _image(jpeg)
    ys, xs = np.nonzero((img[..., 0] > 180) & (img[..., 1] < 90))
    return ys.mean() / img.shape[0], xs.mean() / img.shape[1]


@pytest.mark.parametrize("seconds,expected", [(2.0, 6), (1.0, 3), (2.2, 7), (0.4, 2)])
def test_frame_count_rule(seconds, expected):
    # timestamps 0, 1/3, 2/3, ... strictly below the duration
    assert frame_count(seconds) == expected


def test_clip_frames_and_audio(make_clip):
    clip = decode_clip(make_clip("a.mp4", seconds=2.0))
    assert clip.duration == pytest.approx(2.0)
    assert len(clip.frames) == frame_count(2.0) == 6
    assert all(Image.open(io.BytesIO(f)).size == (224, 224) for f in clip.frames)
    assert clip.audio.dtype == np.int16 and clip.audio.shape == (32000,)  # mono, 16 kHz, AAC padding trimmed
    assert np.abs(clip.audio.astype(float)).max() > 1000  # the tone survived resampling
    assert clip.notes == []


def test_sampled_frame_is_the_one_on_screen(tmp_path, make_clip):
    # 10 fps clip whose frame i has grey level 20 * i: frame k of 3 FPS must be source frame floor(10 k / 3)
    import av

    path = tmp_path / "grey.mp4"
    from affectverse_ds.benchmarks.clip_writer import VideoStream, mux_clip

    mux_clip(path, VideoStream("libx264", 10, (32, 32), options={"crf": "5"}),
             (av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * i, np.uint8), format="rgb24") for i in range(12)))
    clip = decode_clip(path)
    levels = [_image(f).mean() for f in clip.frames]
    assert len(levels) == 4  # 1.2 s: t = 0, 1/3, 2/3, 1
    assert levels == pytest.approx([20 * (10 * k // 3) for k in range(4)], abs=4)


def test_rotated_video_is_turned_upright(make_clip):
    clip = decode_clip(make_clip("rot.mp4", rotation=90))
    assert any("rotated 90" in n for n in clip.notes)
    row, col = _red_centre(clip.frames[0])
    assert row > 0.6 and col < 0.4  # 90 degrees counter-clockwise: top-left goes to bottom-left (as ffmpeg shows it)


def test_odd_size_and_variable_frame_rate(make_clip):
    odd = decode_clip(make_clip("odd.mp4", size=(65, 47), pix_fmt="yuv444p"))
    assert "odd frame size 65x47" in odd.notes and len(odd.frames) == 6
    stamps = [0, 40, 80, 200, 240, 500, 540, 580, 1000, 1040, 1500, 1900]
    vfr = decode_clip(make_clip("vfr.mp4", pts_ms=stamps))
    assert any(n.startswith("variable frame rate") for n in vfr.notes)
    assert vfr.duration == pytest.approx(1.94)
    assert len(vfr.frames) == frame_count(vfr.duration) == 6
    assert vfr.audio.shape == (round(1.94 * 16000),)


def test_no_audio_stream_is_kept(make_clip):
    clip = decode_clip(make_clip("mute.avi", codec="mpeg4", audio=False))
    assert clip.audio is None and len(clip.frames) == 6
    assert "no audio stream (audio missing)" in clip.notes


def test_separate_audio_file_trimmed_and_padded(make_clip, make_wav):
    video = make_clip("v.mp4", seconds=2.0, audio=False)
    assert decode_clip(video, audio=make_wav("long.wav", 3.0)).audio.shape == (32000,)
    short = decode_clip(video, audio=make_wav("short.wav", 1.0, rate=8000))
    assert short.audio.shape == (32000,) and not short.audio[20000:].any()
    assert any("shorter than video" in n for n in short.notes)


def test_segment_crop_and_max_duration(make_clip):
    path = make_clip("dialog.mp4", seconds=3.0, size=(96, 48))
    cut = decode_clip(path, segment=(0.5, 1.5), crop="left")
    assert cut.duration == pytest.approx(1.0) and len(cut.frames) == 3 and cut.audio.shape == (16000,)
    assert _red_centre(cut.frames[0])[1] < 0.5  # the left half keeps the red corner, stretched to 224
    right = _image(decode_clip(path, crop="right").frames[0])
    assert not ((right[..., 0] > 180) & (right[..., 1] < 90)).any()
    capped = decode_clip(path, cfg=DecodeConfig(max_duration=1.0))
    assert len(capped.frames) == 3 and capped.audio.shape == (16000,)
    assert any(n.startswith("cut to max duration") for n in capped.notes)


def test_center_crop_geometry():
    g = plan_geometry(640, 360, 0, None, DecodeConfig(center_crop=True))
    assert (g.width, g.height, g.box) == (398, 224, (87, 0))
    half = plan_geometry(640, 360, 0, "right", DecodeConfig())
    assert (half.width, half.height, half.box) == (448, 224, (224, 0))
    rot = plan_geometry(640, 360, 90, None, DecodeConfig())
    assert (rot.width, rot.height) == (224, 224)


def test_bad_media_raise_with_reason(tmp_path, make_clip):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00garbage" * 500)
    with pytest.raises(MediaError, match="unreadable video"):
        decode_clip(junk)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="unreadable video"):
        decode_clip(empty)
    full = make_clip("full.mp4", seconds=6.0, faststart=True).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(MediaError, match="truncated video|unreadable video"):
        decode_clip(cut)
    with pytest.raises(MediaError, match="clip too short: 0.04 s gives 1 frame"):
        decode_clip(make_clip("blip.mp4", seconds=0.04))


def test_sub_second_clip_kept_with_note(make_clip):
    clip = decode_clip(make_clip("short.mp4", seconds=0.6))
    assert len(clip.frames) == 2 and "sub-second clip (0.60 s)" in clip.notes


def test_dropping_unsampled_frames_changes_nothing(make_clip, monkeypatch):
    # the decoder may drop non-reference frames no sampling time falls on; the result must equal a full decode
    from affectverse_ds.data import media

    path = make_clip("bframes.mp4", seconds=3.0)  # x264 default: B-frames, reordered packets
    cases = [dict(), dict(segment=(0.45, 2.2)), dict(cfg=DecodeConfig(max_duration=1.3))]
    fast = [decode_clip(path, **kw) for kw in cases]
    decisions = []
    original = media._VideoFeed._needed
    monkeypatch.setattr(media._VideoFeed, "_needed", lambda self, p: decisions.append(original(self, p)) or True)
    full = [decode_clip(path, **kw) for kw in cases]
    assert decisions.count(False) > decisions.count(True)  # most packets were droppable
    for a, b in zip(fast, full):
        assert a.frames == b.frames and a.duration == b.duration and (a.audio == b.audio).all()
