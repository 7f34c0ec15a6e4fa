"""Shard writing: manifest accounting for every item, byte-identical rebuilds, resume, webdataset read-back."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import soundfile as sf
import webdataset as wds
from PIL import Image

from affectverse_ds.benchmarks import get_benchmark
from affectverse_ds.benchmarks.base import Label, RawItem
from affectverse_ds.data import schema
from affectverse_ds.data.shards import ShardLimits, build_split
from data_prep.verify_shards import verify_dir

LIMITS = ShardLimits(max_count=2)  # several shards from a handful of clips


def _items(root: Path, make_clip) -> list[RawItem]:
    """One item per kind of input the builder must account for."""
    joy = Label(emo="joy")
    (root / "junk.mp4").write_bytes(b"not a video" * 100)
    return [
        RawItem("good_a", "test", joy, video=make_clip("good_a.mp4", seconds=2.0), subtitle="Hi there."),
        RawItem("good_b", "test", Label(emo="anger"), video=make_clip("good_b.mp4", seconds=1.0)),
        RawItem("good_c", "test", joy, video=make_clip("good_c.mp4", seconds=1.4)),
        RawItem("mute", "test", joy, video=make_clip("mute.avi", codec="mpeg4", audio=False)),
        RawItem("rotated", "test", joy, video=make_clip("rot.mp4", rotation=270)),
        RawItem("odd", "test", joy, video=make_clip("odd.mp4", size=(65, 47), pix_fmt="yuv444p")),
        RawItem("vfr", "test", joy, video=make_clip("vfr.mp4", pts_ms=[0, 40, 300, 340, 900, 1200])),
        RawItem("corrupt", "test", joy, video=root / "junk.mp4"),
        RawItem("blip", "test", joy, video=make_clip("blip.mp4", seconds=0.04)),
        RawItem("unlabelled", "test", None, reject="unknown label 'happyish'"),
        RawItem("good_a", "test", joy, video=root / "good_a.mp4"),  # duplicate name
    ]


def _build(items, root, out, **kw):
    return build_split(get_benchmark("meld"), "test", items, root, out, limits=LIMITS, progress=False, **kw)


def _tree_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix in (".tar", ".json", ".parquet")}


@pytest.fixture
def built(tmp_path, make_clip):
    items = _items(tmp_path, make_clip)
    out = tmp_path / "shards"
    report = _build(items, tmp_path, out, workers=1)
    return items, out, report


def test_every_item_in_manifest_with_reason(built):
    items, out, report = built
    rows = {(r["name"], r["status"]): r for r in pq.read_table(out / schema.MANIFEST_FILE).to_pylist()}
    assert len(pq.read_table(out / schema.MANIFEST_FILE)) == len(items) == report.items
    assert report.accepted == 7 and report.rejected == 4
    assert "unreadable video" in rows[("corrupt", "rejected")]["reason"]
    assert "clip too short" in rows[("blip", "rejected")]["reason"]
    assert rows[("unlabelled", "rejected")]["reason"] == "unknown label 'happyish'"
    assert "duplicate key" in rows[("good_a", "rejected")]["reason"]
    assert rows[("mute", "accepted")]["reason"] == "no audio stream (audio missing); empty subtitle"
    assert rows[("mute", "accepted")]["audio_seconds"] == 0.0
    assert "rotated 270" in rows[("rotated", "accepted")]["reason"]
    assert "odd frame size 65x47" in rows[("odd", "accepted")]["reason"]
    assert "variable frame rate" in rows[("vfr", "accepted")]["reason"]
    good = rows[("good_a", "accepted")]
    assert (good["frames"], good["duration"], good["audio_seconds"]) == (6, 2.0, 2.0)
    assert json.loads(good["label"]) == {"emo": "joy", "val": None, "openset": None}
    assert json.loads((out / schema.SIZES_FILE).read_text()) == {
        "meld-test-000000.tar": 2, "meld-test-000001.tar": 2, "meld-test-000002.tar": 2, "meld-test-000003.tar": 1}


def test_build_record_counts_what_the_scan_found(built):
    items, out, _ = built
    record = json.loads((out / "meld-test.build.json").read_text())
    assert record["scanned"] == len(items) == record["items"]
    assert record["media_found"] == 10 and record["media_missing"] == 0
    assert record["rejected_by_reason"] == {"duplicate": 1, "label": 1}  # decoder rejections come later
    assert record["text_quality"] == {"empty": 10}  # every item but good_a has no subtitle
    assert record["shapes"] == []  # hand-made items: no release shape


def test_read_back_with_plain_webdataset(built):
    _, out, _ = built
    assert verify_dir(out) == []
    samples = list(wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False))
    assert len(samples) == 7
    by_name = {json.loads(s["json"])["name"]: s for s in samples}
    meta = json.loads(by_name["good_a"]["json"])
    assert schema.validate_meta(meta) == []
    assert meta["subtitle"] == "Hi there." and meta["answer"] == "The character's emotional state is joy."
    assert "Subtitle: Hi there." in meta["text"] and meta["text"].startswith("<|im_start|>system")
    assert [k for k in by_name["good_a"] if k.endswith(".jpg")] == [f"f{i:03d}.jpg" for i in range(6)]
    assert Image.open(io.BytesIO(by_name["good_a"]["f005.jpg"])).size == (224, 224)
    pcm, rate = sf.read(io.BytesIO(by_name["good_a"]["flac"]), dtype="int16")
    assert rate == 16000 and pcm.shape == (32000,)
    assert "flac" not in by_name["mute"] and json.loads(by_name["mute"]["json"])["modalities"]["audio"] is False


def test_verify_reports_problems(built):
    _, out, _ = built
    sizes = json.loads((out / schema.SIZES_FILE).read_text())
    sizes["meld-test-000000.tar"] = 5
    (out / schema.SIZES_FILE).write_text(json.dumps(sizes))
    (out / "meld-test-000009.tar.tmp").write_bytes(b"")
    problems = verify_dir(out)
    assert "unfinished shard meld-test-000009.tar.tmp" in problems
    assert any("meld-test-000000.tar: 2 samples, sizes.json says 5" in p for p in problems)


def test_identical_bytes_with_one_and_two_workers(tmp_path, built, make_clip):
    items, out, _ = built
    again = tmp_path / "again"
    _build(items, tmp_path, again, workers=2)
    assert _tree_bytes(again) == _tree_bytes(out)


def test_resume_keeps_finished_shards(tmp_path, built):
    items, out, _ = built
    reference = _tree_bytes(out)
    # an interrupted run: last two shards never finished, one left half-written, no manifest yet
    (out / "meld-test-000003.tar").unlink()
    (out / "meld-test-000002.tar").rename(out / "meld-test-000002.tar.tmp")
    (out / schema.MANIFEST_FILE).unlink()
    kept = (out / "meld-test-000000.tar").stat().st_mtime_ns
    _build(items, tmp_path, out, workers=1, resume=True)
    assert (out / "meld-test-000000.tar").stat().st_mtime_ns == kept  # not rewritten
    assert not list(out.glob("*.tmp"))
    assert _tree_bytes(out) == reference


def test_resume_refuses_changed_settings(tmp_path, built):
    items, out, _ = built
    with pytest.raises(ValueError, match="cannot resume"):
        build_split(get_benchmark("meld"), "test", items, tmp_path, out, limits=ShardLimits(max_count=3),
                    progress=False, resume=True)


def test_resume_refuses_a_build_another_tar_writer_started(tmp_path, built):
    """Shards of an older writer (members in another order) are never mixed with new ones in one split."""
    items, out, _ = built
    record = out / "meld-test.build.json"
    older = json.loads(record.read_text())
    del older["writer"]  # what a build before the webdataset.TarWriter switch recorded
    record.write_text(json.dumps(older))
    with pytest.raises(ValueError, match=r"cannot resume .*\(writer\)"):
        _build(items, tmp_path, out, workers=1, resume=True)


def test_two_splits_share_one_folder(tmp_path, make_clip):
    out = tmp_path / "shards"
    clip = make_clip("c.mp4")
    for split in ("train", "test"):
        _build([RawItem(f"{split}_0", split, Label(emo="joy"), video=clip)], tmp_path, out)
    # rebuilding one split replaces its rows and sizes, and keeps the other split's
    build_split(get_benchmark("meld"), "train", [RawItem("t", "train", Label(emo="joy"), video=clip)],
                tmp_path, out, progress=False)
    rows = pq.read_table(out / schema.MANIFEST_FILE).to_pylist()
    assert sorted((r["split"], r["name"]) for r in rows) == [("test", "test_0"), ("train", "t")]
    assert verify_dir(out) == []


EXPECTED = {  # planted fixture kind -> (status, words of the manifest reason)
    "corrupt": ("rejected", "unreadable video"), "truncated": ("rejected", "video"),
    "zerolen": ("rejected", "video"), "noaudio": ("accepted", "no audio stream"),
    "short": ("accepted", "sub-second clip"), "rotated": ("accepted", "rotated 90 degrees"),
    "vfr": ("accepted", "variable frame rate"), "oddsize": ("accepted", "odd frame size 161x121"),
    "nonutf8": ("accepted", "invalid UTF-8"), "emptysub": ("accepted", "empty subtitle"),
    "badlabel": ("rejected", ""), "nan": ("rejected", "nan"), "nomedia": ("rejected", "no media file"),
    "dup": ("rejected", "duplicate name"),
}


@pytest.mark.parametrize("benchmark, layout", [("meld", "unibench"), ("mer2023", "official"),
                                               ("iemocap", "official")])
def test_cli_end_to_end_on_fixtures(tmp_path, benchmark, layout):
    from data_prep.build_shards import main as build_main
    from data_prep.make_fixtures import applicable_injections, make_fixture
    from data_prep.verify_shards import main as verify_main

    kinds = applicable_injections(benchmark, layout)
    root = make_fixture(benchmark, layout, tmp_path / "raw", n=2, inject=kinds)
    record = json.loads((root / "fixture.json").read_text())
    out = tmp_path / "shards"
    assert build_main(["--benchmark", benchmark, "--layout", layout, "--root", str(root), "--split",
                       record["split"], "--out", str(out), "--workers", "2", "--no-progress"]) == 0
    assert verify_main([str(out)]) == 0
    rows = pq.read_table(out / schema.MANIFEST_FILE).to_pylist()
    assert len(rows) == len(record["items"])  # nothing disappears
    for entry in record["items"]:
        mine = [r for r in rows if r["name"] == entry["name"]]
        row = mine[-1] if entry["inject"] == "dup" else mine[0]
        status, words = EXPECTED.get(entry["inject"], ("accepted", ""))
        assert row["status"] == status and words in row["reason"], (entry, row)
        if status == "accepted" and entry["inject"] != "short":
            assert row["frames"] == math.ceil(row["duration"] * 3 - 1e-6) >= 3


def test_cli_all_builds_every_split_found(tmp_path):
    from data_prep.build_shards import main as build_main
    from data_prep.make_fixtures import make_fixture
    from data_prep.verify_shards import verify_dir

    root = tmp_path / "raw"
    for name in ("meld", "mer2024"):
        make_fixture(name, "unibench", root, n=1)
    out = tmp_path / "shards"
    assert build_main(["--all", "--layout", "unibench", "--root", str(root), "--out", str(out), "--no-progress"]) == 0
    rows = pq.read_table(out / schema.MANIFEST_FILE).to_pylist()
    assert {r["benchmark"] for r in rows} == {"meld", "mer2024"}
    assert verify_dir(out) == []
