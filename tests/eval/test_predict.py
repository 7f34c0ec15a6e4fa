"""The predict CLI and the streaming API on a fixture clip with the tiny backbone."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from affectverse_ds import predict as P
from affectverse_ds.config import load_config
from affectverse_ds.data.media import decode_clip

REPO = Path(__file__).resolve().parents[2]
SECONDS = 2.0


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_backbone_dir, tiny_wheel_dir):
    from affectverse_ds.model.affect_model import build_model
    from affectverse_ds.model.export import export_trainable
    from data_prep.make_fixtures import encode_clip

    root = tmp_path_factory.mktemp("predict")
    cfg = load_config(REPO / "launch" / "configs" / "tiny.yaml", [
        f"backbone.path={tiny_backbone_dir}", f"eval.wheel_dir={tiny_wheel_dir}", "eval.max_new_tokens=4"])
    torch.manual_seed(3)
    model = build_model(cfg, "cpu")
    with torch.no_grad():
        for _, p in model.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    ckpt = root / "step_000005"
    export_trainable(model, cfg, ckpt / "export")
    clip = root / "clip.mp4"
    encode_clip(clip, SECONDS, 2)  # H.264 + AAC, as the shard builder's fixtures
    bad = root / "broken.mp4"
    bad.write_bytes(b"\x00\x01not a video" * 50)
    predictor = P.Predictor.from_checkpoint(ckpt)
    return SimpleNamespace(root=root, ckpt=ckpt, clip=clip, bad=bad, predictor=predictor)


def test_decode_uses_the_shard_builders_media_code(setup):
    obs = setup.predictor.decode(setup.clip, "hello")
    clip = decode_clip(setup.clip)  # the builder's defaults: 3 FPS, 224 px, 16 kHz
    assert obs.frames == clip.frames and len(obs.frames) == math.ceil(SECONDS * 3)
    np.testing.assert_allclose(obs.audio, clip.audio.astype(np.float32) / 32768.0)
    assert obs.subtitle == "hello" and obs.seconds == pytest.approx(SECONDS)


def test_prefix_keeps_the_first_part_of_the_clip(setup):
    obs = setup.predictor.decode(setup.clip)
    n, a = len(obs.frames), len(obs.audio)
    for r in (0.1, 0.5, 1.0):
        part = obs.prefix(r)
        assert part.frames == obs.frames[:max(1, math.ceil(r * n))]
        assert len(part.audio) == round(r * a)
        np.testing.assert_array_equal(part.audio, obs.audio[:len(part.audio)])


def test_cli_prints_answer_and_emotions(setup, capsys):
    assert P.main(["--checkpoint", str(setup.ckpt), str(setup.clip), "--subtitle", "I am fine."]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{setup.clip}: 6 frames, 2.00 s, audio yes")
    assert out[1].startswith("answer: ") and "| emotions: " in out[1]


def test_cli_trajectory_prints_ten_ratios_and_plots(setup, tmp_path, capsys):
    plot = tmp_path / "traj.png"
    assert P.main(["--checkpoint", str(setup.ckpt / "export"), str(setup.clip), "--trajectory", "--plot", str(plot),
                   "--benchmark", "meld"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "% (" in line]
    assert [line.split("%")[0].strip() for line in lines] == [str(10 * k) for k in range(1, 11)]
    seconds = [float(line.split("(")[1].split("s)")[0]) for line in lines]
    assert seconds == sorted(seconds) and seconds[-1] == pytest.approx(SECONDS)
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_trajectory_at_full_observation_equals_the_plain_prediction(setup):
    obs = setup.predictor.decode(setup.clip)
    results = setup.predictor.trajectory(obs, ratios=(0.3, 1.0))
    assert [r.ratio for r in results] == [0.3, 1.0]
    assert results[0].frames == 2 and results[1].frames == 6
    assert results[1].answer == setup.predictor.predict(obs).answer


def test_streaming_matches_the_whole_clip_without_redecoding(setup):
    obs = setup.predictor.decode(setup.clip, "hi")
    whole = setup.predictor.predict(obs)
    session = setup.predictor.stream(subtitle="hi")
    half = len(obs.audio) // 2
    session.add_frames(obs.frames[:3])
    session.add_audio(obs.audio[:half])
    first = session.predict()
    assert first.frames == 3 and first.audio_samples == half

    # what was received stays as received: the same JPEG bytes objects, the audio joined into one array
    held = list(session._obs.frames)
    session.add_frames(obs.frames[3:])
    session.add_audio((obs.audio[half:] * 32768.0).round().astype(np.int16))  # int16 chunks are accepted too
    last = session.predict()
    assert last.answer == whole.answer and last.frames == 6 and last.audio_samples == len(obs.audio)
    assert [r.frames for r in session.history] == [3, 6]
    assert all(a is b for a, b in zip(session._obs.frames, held)) and len(session._chunks) == 1


def test_streaming_encodes_each_raw_frame_once(setup, monkeypatch):
    """Raw frames are resized and JPEG-encoded when they arrive, never again at a later prediction."""
    session = setup.predictor.stream()
    encoded = []
    encode = session._jpeg
    monkeypatch.setattr(session, "_jpeg", lambda frame: encoded.append(1) or encode(frame))
    rgb = np.random.default_rng(0).integers(0, 255, (2, 100, 120, 3), dtype=np.uint8)
    session.add_frames(rgb)
    session.predict()
    session.add_frames(rgb[:1])
    session.predict()
    session.predict()
    assert len(encoded) == 3 and [r.frames for r in session.history] == [2, 3, 3]


def test_streaming_accepts_raw_frames_and_rejects_bad_audio(setup):
    session = setup.predictor.stream()
    with pytest.raises(ValueError, match="nothing observed"):
        session.predict()
    rgb = np.random.default_rng(0).integers(0, 255, (2, 120, 160, 3), dtype=np.uint8)
    assert session.add_frames(list(rgb)) == 2
    from PIL import Image
    import io

    with Image.open(io.BytesIO(session._obs.frames[0])) as im:
        assert im.size == (224, 224)  # resized to the shards' frame size
    with pytest.raises(ValueError, match="16000 Hz"):
        session.add_audio(np.zeros(100, dtype=np.float32), sample_rate=8000)
    with pytest.raises(ValueError, match="mono"):
        session.add_audio(np.zeros((100, 2), dtype=np.float32))
    assert session.predict().frames == 2


def test_unreadable_video_is_an_error_message_not_a_crash(setup, capsys):
    assert P.main(["--checkpoint", str(setup.ckpt), str(setup.bad)]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert P.main(["--checkpoint", str(setup.root / "nope"), str(setup.clip)]) == 2


@pytest.mark.parametrize("content", [b"\x00garbage" * 30, None])  # None: the file cut in half
def test_damaged_ewm_weights_are_a_one_line_error(setup, tmp_path, capsys, content):
    import shutil

    ckpt = tmp_path / "step_000005"
    shutil.copytree(setup.ckpt, ckpt)
    ewm = ckpt / "export" / "ewm.safetensors"
    ewm.write_bytes(content if content is not None else ewm.read_bytes()[: ewm.stat().st_size // 2])
    assert P.main(["--checkpoint", str(ckpt), str(setup.clip)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # beside transformers' progress bars
    assert "Traceback" not in err
    assert len(errors) == 1 and errors[0].startswith(f"error: {ewm}: not a readable safetensors file")


def test_without_emotion_wheels_the_trained_answer_is_still_parsed(tmp_path):
    cfg = load_config(None, [f"eval.wheel_dir={tmp_path / 'emotion_wheel'}"])
    extractor, mapper = P.emotion_readers(cfg)
    assert mapper is None
    assert extractor.extract("The character's emotional state is happy, sad and tired.") == ["happy", "sad", "tired"]
    assert extractor.extract("no template here") == []
