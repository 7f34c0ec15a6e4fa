"""Bad input gets a reason and nothing disappears: every planted kind comes back as a RawItem."""
from __future__ import annotations

import os
import pickle

import av
import numpy as np
import pytest

from affectverse_ds.benchmarks import get_benchmark
from affectverse_ds.benchmarks.layouts import subtitle_note
from affectverse_ds.data.media import MediaError, decode_clip
from affectverse_ds.safe_pickle import UnsafePickleError, load_npz
from data_prep.make_fixtures import (
    BENCHMARKS, LABEL_KINDS, MEDIA_KINDS, OFFICIAL, SHORT_SECONDS, SUBTITLE_KINDS, applicable_injections, make_fixture,
)

CASES = [(name, "unibench") for name in BENCHMARKS] + [(name, "official") for name in OFFICIAL]
REASONS = {  # a planted label-level kind -> what its rejection reason says
    "badlabel": ("unknown label", "is not a number", "empty open-set label", "unknown IEMOCAP category"),
    "nan": ("score is nan",),
    "dup": ("duplicate name",),
    "nomedia": ("no media file",),
}
DECODER_REASONS = {  # a planted media kind the decoder refuses -> how its reason starts (.mp4 or .avi)
    "corrupt": ("unreadable video",),
    "truncated": ("unreadable video", "truncated video"),
    "zerolen": ("no video stream", "empty video"),
}


@pytest.mark.parametrize("name, layout", CASES)
def test_label_and_subtitle_faults_land_with_reasons(scan_fixture, name, layout):
    kinds = tuple(k for k in applicable_injections(name, layout) if k in LABEL_KINDS + SUBTITLE_KINDS)
    items, record, _ = scan_fixture(name, layout, n=1, inject=kinds)
    assert len(items) == len(record["items"])  # nothing disappears, duplicates included
    assert sorted(i.name for i in items) == sorted(r["name"] for r in record["items"])
    planted = {}
    for entry in record["items"]:
        if entry["inject"]:
            planted[entry["inject"]] = entry["name"]
    assert set(planted) == set(kinds)
    for kind, item_name in planted.items():
        same_name = [i for i in items if i.name == item_name]
        item = same_name[-1]  # for dup, the repeat is the later entry
        if kind in REASONS:
            assert item.reject and any(r in item.reject for r in REASONS[kind]), (kind, item.reject)
            assert item.label is None and "\n" not in item.reject
        else:
            assert item.reject is None and item.label is not None, (kind, item.reject)
            assert item.subtitle == "" if kind == "emptysub" else "\ufffd" in item.subtitle
            assert subtitle_note(item)
    if "dup" in planted:
        first = [i for i in items if i.name == planted["dup"]][0]
        assert first.reject is None and first.label is not None
    clean = [i for i in items if i.name not in planted.values()]
    assert clean and all(i.reject is None for i in clean)


def test_inapplicable_injections_are_refused(tmp_path):
    assert "nan" not in applicable_injections("meld", "unibench")
    assert "dup" not in applicable_injections("sims", "unibench") and "dup" in applicable_injections("sims", "official")
    assert "rotated" not in applicable_injections("iemocap", "unibench")
    with pytest.raises(ValueError, match="nan"):
        make_fixture("meld", "official", tmp_path / "fx", inject=("nan",))
    with pytest.raises(ValueError):
        make_fixture("mer2024", "official", tmp_path / "fx2")


def probe(path):
    """(streams, n video frames, width, height, rotation, frame times) of a clip."""
    with av.open(str(path)) as container:
        kinds = sorted(s.type for s in container.streams)
        frames = list(container.decode(video=0)) if container.streams.video else []
        stream = container.streams.video[0] if container.streams.video else None
        return (kinds, len(frames), stream and stream.width, stream and stream.height,
                frames[0].rotation if frames else None, [f.time for f in frames])


@pytest.mark.parametrize("name", ["meld", "iemocap"])  # .mp4 (H.264/AAC) and .avi (MPEG-4/PCM)
def test_media_faults_are_kept_for_the_decoder(scan_fixture, name):
    kinds = tuple(k for k in applicable_injections(name, "unibench") if k in MEDIA_KINDS)
    items, record, root = scan_fixture(name, "unibench", n=1, inject=kinds)
    by_kind = {r["inject"]: next(i for i in items if i.name == r["name"]) for r in record["items"] if r["inject"]}
    assert all(i.reject is None and i.video.is_file() for i in items)  # media problems are not the scanner's
    with pytest.raises(av.error.FFmpegError):
        probe(by_kind["corrupt"].video)
    if name == "meld":  # an .mp4 cut short loses its index and does not open
        with pytest.raises(av.error.FFmpegError):
            probe(by_kind["truncated"].video)
    else:  # an .avi opens and ends early
        assert probe(by_kind["truncated"].video)[1] < 25  # every fixture clip is >= 1 s at 25 fps
    assert by_kind["noaudio"].audio is None and probe(by_kind["noaudio"].video)[0] == ["video"]
    assert probe(by_kind["zerolen"].video)[1] == 0
    assert probe(by_kind["short"].video)[1] == round(SHORT_SECONDS * 25)
    assert probe(by_kind["oddsize"].video)[2:4] == (161, 121)
    if name == "meld":
        assert probe(by_kind["rotated"].video)[4] in (90, -90)
        steps = np.diff(probe(by_kind["vfr"].video)[5])
        assert steps.max() - steps.min() > 0.03
    clean = next(i for i in items if i.name not in {v.name for v in by_kind.values()})
    kinds_clean, n_frames, width, height, _, _ = probe(clean.video)
    assert kinds_clean == ["audio", "video"] and (width, height) == (160, 120) and 25 <= n_frames <= 50
    # the decoder the shard builder runs turns each unusable clip into a one-line manifest reason
    for kind, reasons in DECODER_REASONS.items():
        item = by_kind[kind]
        with pytest.raises(MediaError) as err:
            decode_clip(item.video, item.audio, item.segment)
        reason = str(err.value)
        assert reason.startswith(reasons) and "\n" not in reason, (kind, reason)


def test_iemocap_official_media_faults_get_their_own_dialog(scan_fixture):
    items, record, _ = scan_fixture("iemocap", "official", n=2, inject=("nomedia", "short", "noaudio"))
    by_kind = {r["inject"]: next(i for i in items if i.name == r["name"]) for r in record["items"] if r["inject"]}
    assert by_kind["nomedia"].reject.startswith("no media file")
    others = [i for i in items if i is not by_kind["nomedia"]]
    assert all(i.reject is None for i in others)  # the missing dialog video takes no other turn with it
    start, end = by_kind["short"].segment
    assert end - start == pytest.approx(SHORT_SECONDS)
    assert probe(by_kind["noaudio"].video)[0] == ["video"]


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_label_pickle_with_a_callable_is_refused(tmp_path):
    proc = tmp_path / "meld-process"
    proc.mkdir()
    poisoned = {"test_corpus": {"test_dia0_utt0": {"emo": 0, "val": -10, "x": _Exploit()}}}
    np.savez(proc / "label.npz", **{k: np.array(v, dtype=object) for k, v in poisoned.items()})
    with pytest.raises(UnsafePickleError):
        load_npz(proc / "label.npz")
    with pytest.raises(UnsafePickleError):  # a poisoned label file stops the scan; it is not "bad input"
        get_benchmark("meld").scanners["unibench"](tmp_path, "test")
    raw = pickle.dumps(_Exploit())
    assert b"system" in raw  # the payload really names a callable
