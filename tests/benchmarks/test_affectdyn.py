"""affectdyn, the synthetic benchmark: deterministic, readable by the real scanner and builder, and
learnable by construction (a hand-written detector recovers the labels from the decoded media)."""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from affectverse_ds.benchmarks import get_benchmark
from affectverse_ds.benchmarks.affectdyn import CLASSES, VALENCE
from affectverse_ds.safe_pickle import load_npz
from data_prep import make_affectdyn as gen
from data_prep.make_affectdyn import make_affectdyn

N_TRAIN, N_TEST, SEED = 24, 6, 3  # 30 clips for the detector: chance is 1/6


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """One generated dataset root, shared by the read-only tests of this module."""
    root = tmp_path_factory.mktemp("affectdyn")
    make_affectdyn(root, N_TRAIN, N_TEST, SEED)
    return root


def _meta(root: Path) -> dict:
    return json.loads((root / gen.PROCESS_DIR / gen.META_FILE).read_text(encoding="utf-8"))


def _tree_bytes(proc: Path) -> dict[str, bytes]:
    """Every file under a generated ``affectdyn-process`` folder, by relative path."""
    return {str(p.relative_to(proc)): p.read_bytes() for p in sorted(proc.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- determinism

def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    a = _tree_bytes(make_affectdyn(tmp_path / "a", 4, 2, seed=7))
    b = _tree_bytes(make_affectdyn(tmp_path / "b", 4, 2, seed=7, workers=2))
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []
    assert sum(k.endswith(".mp4") for k in a) == 6


def test_another_seed_gives_other_clips(tmp_path):
    a = _tree_bytes(make_affectdyn(tmp_path / "a", 3, 0, seed=7))
    b = _tree_bytes(make_affectdyn(tmp_path / "b", 3, 0, seed=8))
    videos = [k for k in a if k.endswith(".mp4")]
    assert videos and all(a[k] != b[k] for k in videos)


def test_cli_writes_the_tree(tmp_path, capsys):
    assert gen.main(["--out", str(tmp_path), "--n-train", "1", "--n-test", "1", "--seed", "0"]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    assert len(list((tmp_path / "affectdyn-process" / "video").glob("*.mp4"))) == 2


def test_refuses_to_overwrite_unless_asked(tmp_path):
    make_affectdyn(tmp_path, 1, 0, seed=0)
    with pytest.raises(FileExistsError):
        make_affectdyn(tmp_path, 1, 0, seed=0)
    make_affectdyn(tmp_path, 0, 1, seed=0, overwrite=True)
    assert [p.name for p in (tmp_path / gen.PROCESS_DIR / "video").iterdir()] == ["affectdyn_test_00000.mp4"]


# ----------------------------------------------------------------------------- layout and labels

def test_layout_is_mer_unibench_processed(tree):
    proc = tree / "affectdyn-process"
    names = {c["name"]: c for c in _meta(tree)["clips"]}
    assert sorted(p.name for p in (proc / "video").iterdir()) == sorted(f"{n}.mp4" for n in names)
    # label.npz: one pickled dict per split, readable by MER-UniBench's own np.load(allow_pickle=True)
    raw = np.load(proc / "label.npz", allow_pickle=True)
    assert sorted(raw.files) == ["test_corpus", "train_corpus"]
    train = raw["train_corpus"].item()
    assert len(train) == N_TRAIN and all(set(e) == {"emo", "val"} for e in train.values())
    assert load_npz(proc / "label.npz")["test_corpus"] == raw["test_corpus"].item()
    with open(proc / "transcription-engchi-polish.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["name", "chinese", "english"]
    assert sorted(r[0] for r in rows[1:]) == sorted(names) and all(r[1] and r[2] for r in rows[1:])
    assert "SYNTHETIC" in (proc / "README.txt").read_text(encoding="utf-8")


def test_media_format(tree):
    clip = _meta(tree)["clips"][0]
    with av.open(str(tree / "affectdyn-process" / "video" / f"{clip['name']}.mp4")) as c:
        video, audio = c.streams.video[0], c.streams.audio[0]
        assert (video.codec_context.name, video.width, video.height, video.average_rate) == ("h264", 320, 240, 25)
        assert (audio.codec_context.name, audio.sample_rate, audio.channels) == ("aac", 16000, 1)
        n_frames = sum(1 for _ in c.decode(video=0))
    assert n_frames == clip["n_frames"] and 4 * 25 <= n_frames <= 8 * 25


def test_registered_as_synthetic_discrete():
    bench = get_benchmark("affectdyn")
    assert bench.synthetic and bench.group == "discrete"
    assert set(bench.classes) == {"happy", "sad", "angry", "worried", "surprise", "neutral"}
    assert (bench.train_splits, bench.test_split) == (("train",), "test")
    assert not any(get_benchmark(name).synthetic for name in ("mer2023", "meld", "cmumosi"))


@pytest.mark.parametrize("split,n", [("train", N_TRAIN), ("test", N_TEST)])
def test_scanner_reads_every_item_with_its_label(tree, split, n):
    items = get_benchmark("affectdyn").scanners["unibench"](tree, split)
    truth = {c["name"]: c for c in _meta(tree)["clips"] if c["split"] == split}
    assert len(items) == n and {i.name for i in items} == set(truth)
    for item in items:
        assert item.reject is None and item.video is not None and item.video.is_file()
        assert (item.label.emo, item.label.val) == (truth[item.name]["emo"], truth[item.name]["val"])
        assert item.subtitle == truth[item.name]["subtitle_en"]


def test_classes_balanced_and_valence_follows_class(tree):
    clips = _meta(tree)["clips"]
    counts = Counter(c["emo"] for c in clips if c["split"] == "train")
    assert set(counts) == set(CLASSES) and max(counts.values()) - min(counts.values()) <= 1
    for c in clips:
        assert np.sign(c["val"]) == np.sign(VALENCE[c["emo"]]) and abs(c["val"]) <= 2.5


def test_misleading_subtitle_fraction_is_exact_and_names_a_wrong_emotion(tree):
    clips = _meta(tree)["clips"]
    words = {emo: gen.EMOTION_LINES[emo][0] for emo in CLASSES}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        of_split = [c for c in clips if c["split"] == split]
        misleading = [c for c in of_split if c["misleading"]]
        assert len(misleading) == round(gen.MISLEADING_FRACTION * n)
        for c in of_split:
            if c["misleading"]:
                assert c["misleading"] != c["emo"] and c["subtitle_en"] == words[c["misleading"]]
            else:
                assert c["subtitle_en"] in {en for en, _ in gen.NEUTRAL_LINES}


def test_shard_builder_accepts_every_clip(tree, tmp_path):
    from affectverse_ds.data.shards import build_shards

    report = build_shards("affectdyn", "unibench", tree, "test", tmp_path / "shards", progress=False)
    assert (report.items, report.accepted, report.rejected) == (N_TEST, N_TEST, 0)


# ----------------------------------------------------------------------------- the class design

def _curve(emo: str, feature: str, d: np.ndarray) -> np.ndarray:
    times, values = zip(*gen.CLASS_DESIGN[emo][feature])
    return np.interp(d, times, values)


VIDEO, AUDIO = ("mouth", "tilt", "raise", "open"), ("pitch", "energy")
FIRST_HALF, SECOND_HALF = np.linspace(0, 0.5, 51), np.linspace(0.5, 1, 51)[1:]


def _same(a: str, b: str, features, d) -> bool:
    return all(np.allclose(_curve(a, f, d), _curve(b, f, d)) for f in features)


def test_design_pairs_need_the_future_or_both_modalities():
    # happy/surprise: identical first half, different second half
    assert _same("happy", "surprise", VIDEO + AUDIO, FIRST_HALF)
    assert not _same("happy", "surprise", VIDEO, SECOND_HALF) and not _same("happy", "surprise", AUDIO, SECOND_HALF)
    # sad/worried: one face; the voice parts only after the turn
    assert _same("sad", "worried", VIDEO, np.linspace(0, 1, 101))
    assert _same("sad", "worried", AUDIO, FIRST_HALF) and not _same("sad", "worried", AUDIO, SECOND_HALF)
    # happy/angry: one voice; only the face differs
    assert _same("happy", "angry", AUDIO, np.linspace(0, 1, 101)) and not _same("happy", "angry", VIDEO, FIRST_HALF)
    # all six differ once both modalities and the whole clip are seen
    full = np.linspace(0, 1, 101)
    assert not any(_same(a, b, VIDEO + AUDIO, full) for a in CLASSES for b in CLASSES if a < b)


# ----------------------------------------------------------------------------- learnable by construction
# A hand-written detector that knows only where a face's mouth and brows sit in the frame and that
# the voice is a harmonic tone. It reads the decoded media, never the generator's parameters.

DARK = 80  # luma below this is ink (mouth, brows, eyes); skin and backgrounds are far brighter
MOUTH_BOX = (slice(145, 230), slice(100, 220))
BROW_BAND = slice(35, 100)  # the topmost ink in a column of this band is a brow (the eyes sit below)
BROW_COLUMNS = ((100, 152, -1), (168, 220, 1))  # left / right brow, and the slope sign of "inner raised"
WINDOWS = {"start": (0.0, 0.15), "mid": (0.42, 0.58), "end": (0.85, 1.0)}


def face_features(gray: np.ndarray) -> tuple[float, float, float]:
    """One decoded frame (luma) -> (mouth ink area, mouth curvature in px (+ smile), brow tilt (+ inner raised))."""
    ink = gray < DARK
    mouth = ink[MOUTH_BOX]
    has = mouth.any(0)
    if has.sum() < 6:
        return 0.0, 0.0, 0.0
    top = mouth.argmax(0)[has].astype(float)  # upper lip edge, per column
    k = max(1, len(top) // 6)
    centre = top[len(top) // 2 - k // 2: len(top) // 2 + k // 2 + 1].mean()
    curve = centre - np.r_[top[:k], top[-k:]].mean()  # rows grow downwards: a lower centre is a smile
    tilts = []
    for lo, hi, sign in BROW_COLUMNS:
        band = ink[BROW_BAND, lo:hi]
        cols = np.nonzero(band.any(0))[0]
        if len(cols) > 5:
            tilts.append(sign * np.polyfit(cols, band[:, cols].argmax(0), 1)[0])
    return float(mouth.sum()), float(curve), float(np.mean(tilts)) if tilts else 0.0


def voice_pitch(audio: np.ndarray, rate: int) -> np.ndarray:
    """Per 100 ms window: pitch in semitones above 100 Hz (FFT peak in 70-600 Hz), NaN where quiet."""
    win = rate // 10
    frames = audio[: len(audio) // win * win].reshape(-1, win)
    rms = np.sqrt((frames ** 2).mean(1))
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(win), n=4 * win, axis=1))
    freqs = np.fft.rfftfreq(4 * win, 1 / rate)
    band = (freqs > 70) & (freqs < 600)
    pitch = freqs[band][spectrum[:, band].argmax(1)]
    voiced = rms > 0.3 * np.median(rms)
    return np.where(voiced, 12 * np.log2(pitch / 100), np.nan)


def window(n: int, name: str) -> slice:
    """The items of a length-``n`` sequence that fall in window ``name`` (never empty)."""
    lo, hi = WINDOWS[name]
    return slice(int(lo * n), max(int(hi * n), int(lo * n) + 1))


def luma(frame: av.VideoFrame) -> np.ndarray:
    """The decoded Y plane as (H, W) uint8: the luma, without a colour conversion."""
    plane = frame.planes[0]
    return np.frombuffer(plane, np.uint8).reshape(frame.height, plane.line_size)[:, : frame.width].copy()


def clip_summary(path: Path) -> dict[str, dict[str, float]]:
    """Medians of the face and voice features over the start, middle and end of a clip."""
    with av.open(str(path)) as c:
        frames = [luma(f) for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        rate = c.streams.audio[0].sample_rate
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    pitch = voice_pitch(audio, rate)
    out = {}
    for name in WINDOWS:
        face = np.array([face_features(g) for g in frames[window(len(frames), name)]])
        out[name] = {"area": float(np.median(face[:, 0])), "curve": float(np.median(face[:, 1])),
                     "tilt": float(np.median(face[:, 2])),
                     "pitch": float(np.nanmedian(pitch[window(len(pitch), name)]))}
    return out


def detect(s: dict[str, dict[str, float]]) -> str:
    """Rules read off the class design: mouth opening, smile or frown, brow tilt, and where the pitch goes."""
    start, mid, end = s["start"], s["mid"], s["end"]
    if end["area"] > 1.8 * start["area"]:
        return "surprise"  # the mouth drops open
    smile = end["curve"] - start["curve"]
    if smile > 3:
        return "happy"
    if smile > -3:
        return "neutral"
    if end["tilt"] - start["tilt"] < -0.1:
        return "angry"  # brows pulled down into a V
    return "worried" if end["pitch"] > mid["pitch"] else "sad"  # same face: the voice climbs back, or sinks


@pytest.fixture(scope="module")
def measured(tree) -> list[tuple[str, dict]]:
    """(label the builder reads, detector measurements of the decoded clip) for every clip of the tree."""
    scan = get_benchmark("affectdyn").scanners["unibench"]
    return [(item.label.emo, clip_summary(item.video)) for item in scan(tree, "train") + scan(tree, "test")]


def test_detector_recovers_labels_from_decoded_media(measured):
    truth = [emo for emo, _ in measured]
    predicted = [detect(summary) for _, summary in measured]
    accuracy = np.mean([p == t for p, t in zip(predicted, truth)])
    assert len(measured) == N_TRAIN + N_TEST
    confusion = dict(Counter(zip(truth, predicted)))
    assert accuracy >= 0.8, f"accuracy {accuracy:.2f}; (truth, predicted) counts: {confusion}"
    # negative control: the same predictions against labels shifted by one clip agree about as often as chance
    shifted = np.mean([p == t for p, t in zip(predicted, truth[1:] + truth[:1])])
    assert shifted < 0.5


def test_rendered_pairs_differ_only_where_designed(measured):
    """In the decoded media: sad/worried differ only in the voice's second half, happy/angry only in the face."""
    by_class = {emo: [s for e, s in measured if e == emo] for emo in CLASSES}
    pitch_turn = {emo: [s["end"]["pitch"] - s["mid"]["pitch"] for s in by_class[emo]] for emo in ("sad", "worried")}
    assert max(pitch_turn["sad"]) < 0 < min(pitch_turn["worried"])
    for emo in ("sad", "worried"):  # one face: frown, inner brows raised
        assert all(s["end"]["curve"] < -3 and s["end"]["tilt"] > 0.1 for s in by_class[emo])
    for emo in ("happy", "angry"):  # one voice: pitch climbs through the whole clip
        assert all(s["mid"]["pitch"] > s["start"]["pitch"] + 1 and s["end"]["pitch"] > s["mid"]["pitch"] + 1
                   for s in by_class[emo])
    assert all(s["end"]["curve"] > 3 for s in by_class["happy"])
    assert all(s["end"]["curve"] < -3 for s in by_class["angry"])


# ----------------------------------------------------------------------------- the precursor variant

def test_precursor_variant_adds_a_brief_cue_before_the_turn_only_in_the_diverging_classes():
    """Same clips as base (same seeds and parameters); surprise and worried get a small bump well before
    the turn, in one feature each; every other class and feature is unchanged."""
    from affectverse_ds.benchmarks import affectdyn_gen as lib

    base = gen.split_specs("train", 24, seed=5)
    cue = gen.split_specs("train", 24, seed=5, variant="precursor")
    assert [s.emo for s in base] == [s.emo for s in cue] and [s.seed for s in base] == [s.seed for s in cue]
    seen = set()
    for b, c in zip(base, cue):
        cb = lib.feature_curves(b, np.random.default_rng(b.seed))
        cc = lib.feature_curves(c, np.random.default_rng(c.seed))
        changed = [f for f in lib.FEATURES if not np.array_equal(cb[f], cc[f])]
        if b.emo not in lib.PRECURSOR:
            assert changed == []
            continue
        feat, peak = lib.PRECURSOR[b.emo]
        assert changed == [feat]
        seen.add(b.emo)
        t = np.arange(len(cb[feat])) / lib.CONTROL_RATE
        d = lib.design_time(t / b.seconds, b.turn)
        diff = cc[feat] - cb[feat]
        assert np.all(diff[(d < lib.PRECURSOR_AT[0]) | (d > lib.PRECURSOR_AT[-1])] == 0)  # brief
        assert diff.any() and d[diff != 0].max() < 0.5  # before the turn
        assert 0 < diff.max() <= b.intensity * peak + 1e-9
        later = np.abs(cb[feat][d > 0.7] - cb[feat][(d > 0.2) & (d < 0.25)].mean()).max()
        assert diff.max() < 0.5 * later  # subtle next to the divergence it announces
    assert seen == set(lib.PRECURSOR)


def test_precursor_variant_is_recorded_and_unknown_variants_are_refused(tmp_path):
    proc = make_affectdyn(tmp_path / "p", 2, 0, seed=1, variant="precursor")
    meta = _meta(tmp_path / "p")
    assert meta["variant"] == "precursor" and {c["variant"] for c in meta["clips"]} == {"precursor"}
    assert len(list((proc / "video").glob("*.mp4"))) == 2
    with pytest.raises(ValueError, match="unknown affectdyn variant"):
        make_affectdyn(tmp_path / "q", 1, 0, seed=1, variant="cue")
