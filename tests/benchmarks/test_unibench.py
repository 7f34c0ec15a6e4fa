"""The MER-UniBench processed layout, for all nine benchmarks, read back from fixtures."""
from __future__ import annotations

import csv
import shutil

import pytest

from affectverse_ds.benchmarks import get_benchmark
from affectverse_ds.safe_pickle import load_npz
from data_prep.make_fixtures import BENCHMARKS, make_fixture



def written_labels(bench, proc, split) -> dict:
    """The labels as the fixture wrote them, decoded independently of the scanner."""
    if bench.name == "ovmerd":
        with open(proc / "ovlabel.csv", encoding="utf-8") as f:
            return {r["name"]: tuple(w.strip() for w in r["openset"].strip("[]").split(",")) for r in csv.DictReader(f)}
    member = "whole_corpus" if bench.name == "iemocap" else f"{split}_corpus"
    (npz,) = list(proc.glob("*.npz"))
    entries = load_npz(npz)[member]
    if bench.group == "sentiment":
        return {k: v["val"] for k, v in entries.items()}
    if bench.name in ("meld", "iemocap"):
        return {k: bench.classes[v["emo"]] for k, v in entries.items()}
    return {k: v["emo"] for k, v in entries.items()}


def label_value(bench, label):
    return label.openset if bench.group == "openset" else label.val if bench.group == "sentiment" else label.emo


@pytest.mark.parametrize("name", BENCHMARKS)
def test_unibench_fixture_reads_back(tmp_path, scan_fixture, name):
    bench = get_benchmark(name)
    layout = bench.extra["layout"]
    items, record, root = scan_fixture(name, "unibench", n=3, seed=1)
    proc = root / bench.process_dirs[0]  # the release's folder name (ovmerdplus-process for OV-MERD+)
    assert [i.name for i in items] == sorted(r["name"] for r in record["items"])
    expected = written_labels(bench, proc, record["split"])
    for item in items:
        assert item.reject is None and item.split == record["split"]
        assert label_value(bench, item.label) == expected[item.name]
        assert item.video == proc / layout.video_dirs[0] / f"{item.name}{layout.video_exts[0]}"
        assert item.audio == proc / layout.audio_dirs[0] / f"{item.name}.wav"
        assert item.video.is_file() and item.audio.is_file()
        assert item.subtitle and "(unused" not in item.subtitle  # the benchmark's own language column
        assert item.segment is None and item.crop is None


def test_unibench_root_may_be_the_process_folder(scan_fixture):
    items, _, root = scan_fixture("meld", "unibench", n=2)
    again = get_benchmark("meld").scanners["unibench"](root / "meld-process", "test")
    assert [(i.name, i.video) for i in again] == [(i.name, i.video) for i in items]


def test_unibench_without_audio_folder_takes_audio_from_video(scan_fixture):
    items, _, _ = scan_fixture("sims", "unibench", n=2, audio_dir=False)
    assert items and all(i.audio is None and i.reject is None for i in items)


def test_unibench_video_folder_fallback(tmp_path):
    root = make_fixture("cmumosei", "unibench", tmp_path / "fx", n=2)
    proc = root / "cmumosei-process"
    (proc / "subvideo_new").rename(proc / "subvideo")
    items = get_benchmark("cmumosei").scanners["unibench"](root, "test")
    assert all(i.reject is None and i.video.parent.name == "subvideo" for i in items)


def test_unibench_transcript_missing_or_undecodable(tmp_path):
    root = make_fixture("cmumosi", "unibench", tmp_path / "fx", n=2)
    transcript = root / "cmumosi-process" / "transcription-engchi-polish.csv"
    scan = get_benchmark("cmumosi").scanners["unibench"]
    text = transcript.read_text(encoding="utf-8")
    transcript.write_bytes(text.encode("utf-16"))  # re-saved by a spreadsheet
    assert all(i.subtitle and "\ufffd" not in i.subtitle for i in scan(root, "test"))
    transcript.write_bytes(bytes(range(256)) * 50)  # not text at all
    items = scan(root, "test")
    assert len(items) == 2 and all(i.reject is None and i.subtitle == "" for i in items)
    transcript.unlink()  # CMU-MOSEI's transcript is missing from the public source
    assert [i.subtitle for i in scan(root, "test")] == ["", ""]


def test_unibench_missing_video_folder_rejects_every_item(tmp_path):
    root = make_fixture("mer2023", "unibench", tmp_path / "fx", n=2)
    shutil.rmtree(root / "mer2023-dataset-process" / "video")
    items = get_benchmark("mer2023").scanners["unibench"](root, "test1")
    assert len(items) == 2 and all(i.reject.startswith("no media file") for i in items)
