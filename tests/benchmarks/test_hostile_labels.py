"""Hostile label data (issue #18, classes 4 and 5): media paths must stay inside --root, and no
single label entry may abort a split or vanish (accepted + rejected == entries, a manifest row each)."""
from __future__ import annotations

import csv
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from affectverse_ds.benchmarks import get_benchmark
from affectverse_ds.benchmarks.base import Label, RawItem
from affectverse_ds.benchmarks.text_files import read_csv_rows
from affectverse_ds.data.media import DecodeConfig
from affectverse_ds.data.shards import build_shards, encode_item, scan_split
from data_prep.make_fixtures import make_fixture

MMSA_FIELDS = ["video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V", "annotation", "mode"]


def _mmsa_root(tmp_path: Path) -> tuple[Path, Path, list[dict]]:
    """A CH-SIMS tree with one good clip, plus a clip outside the root the label file will point at."""
    root = make_fixture("sims", "official", tmp_path / "root", n=1)
    with open(root / "label.csv", encoding="utf-8", newline="") as f:
        (good,) = list(csv.DictReader(f))
    clip = root / "Raw" / good["video_id"] / f"{good['clip_id']}.mp4"
    outside = tmp_path / "outside"
    (outside / "x").mkdir(parents=True)
    shutil.copy(clip, outside / "x" / "1.mp4")
    return root, clip, [good]


def _write_label_csv(root: Path, rows: list[dict]) -> None:
    with open(root / "label.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MMSA_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def test_media_paths_from_labels_stay_inside_root(tmp_path):
    root, clip, (good,) = _mmsa_root(tmp_path)
    outside = tmp_path / "outside"
    # a symlink inside Raw/ pointing out, a symlinked video folder pointing out, one pointing inside
    (root / "Raw" / "linkout").mkdir()
    os.symlink(outside / "x" / "1.mp4", root / "Raw" / "linkout" / "1.mp4")
    os.symlink(outside / "x", root / "Raw" / "dirout")
    (root / "Raw" / "linkin").mkdir()
    os.symlink(clip, root / "Raw" / "linkin" / "1.mp4")
    rows = [good] + [{**good, "video_id": vid, "clip_id": "1"}
                     for vid in ("../../outside/x", str(outside / "x"), "linkout", "dirout", "linkin")]
    _write_label_csv(root, rows)
    items = {i.name: i for i in scan_split(get_benchmark("sims"), "official", root, "test")}
    assert len(items) == len(rows)
    assert items[f"{good['video_id']}_{good['clip_id']}"].reject is None
    assert items["linkin_1"].reject is None  # a symlink that stays inside the root is fine
    assert "is not a plain name" in items["../../outside/x_1"].reject
    assert "is not a plain name" in items[f"{outside / 'x'}_1"].reject
    assert items["linkout_1"].reject == "media path Raw/linkout/1.mp4 resolves outside the dataset root"
    assert items["dirout_1"].reject == "media path Raw/dirout/1.mp4 resolves outside the dataset root"
    assert all(i.video is None for i in items.values() if i.reject)

    out = tmp_path / "shards"
    report = build_shards("sims", "official", root, "test", out, progress=False)
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert report.accepted == 2 and report.rejected == 4 and len(manifest) == len(rows)
    assert all(r["source"] is None or not r["source"].startswith("/") for r in manifest)


def test_unibench_symlink_out_of_root_rejected(tmp_path):
    root = make_fixture("meld", "unibench", tmp_path / "root", n=2)
    outside = tmp_path / "elsewhere.mp4"
    victim = sorted((root / "meld-process" / "subvideo").iterdir())[0]
    shutil.move(victim, outside)
    os.symlink(outside, victim)
    items = scan_split(get_benchmark("meld"), "unibench", root, "test")
    assert [i.reject for i in items] == [
        f"media path meld-process/subvideo/{victim.name} resolves outside the dataset root", None]


def test_encoder_refuses_a_hand_made_item_outside_root(tmp_path):
    fixture = make_fixture("meld", "unibench", tmp_path / "fx", n=1)
    (video,) = (fixture / "meld-process" / "subvideo").iterdir()
    root = tmp_path / "root"
    root.mkdir()
    enc = encode_item(RawItem("x", "test", Label(emo="joy"), video=video), get_benchmark("meld"), root, DecodeConfig())
    assert enc.members is None and "resolves outside the dataset root" in enc.row["reason"]


def _write_npz(proc: Path, member: str, entries: dict) -> None:
    proc.mkdir(parents=True, exist_ok=True)
    np.savez(proc / "label-6way.npz", **{member: np.array(entries, dtype=object)})


def test_hostile_label_entries_each_rejected_none_lost(tmp_path):
    proc = tmp_path / "mer2023-dataset-process"
    entries = {
        5: {"emo": "happy", "val": 1.0},
        "5": {"emo": "sad", "val": 0.0},  # the same name as the int key 5
        "inf": {"emo": float("inf"), "val": 0.0},
        "huge": {"emo": "happy", "val": 10 ** 400},  # float() raises OverflowError
        "hugeidx": {"emo": 10 ** 400, "val": 0.0},
        "frac": {"emo": 3.7, "val": 0.0},
        "flag": {"emo": True, "val": 0.0},
        "flagval": {"emo": "sad", "val": True},
        "notdict": [1, 2],
        "ok": {"emo": 2, "val": 0.5},
    }
    _write_npz(proc, "test1_corpus", entries)
    items = scan_split(get_benchmark("mer2023"), "unibench", tmp_path, "test1")
    assert len(items) == len(entries)  # none vanished
    by_name: dict[str, list[RawItem]] = {}
    for item in items:
        by_name.setdefault(item.name, []).append(item)
    first, second = by_name["5"]
    assert first.label is None and first.reject.startswith("no media file")  # a usable label; no clip here
    assert second.reject == "5: key '5' repeats a name already in 'test1_corpus'"
    expect = {
        "inf": "inf: label inf is not an integer class index",
        "huge": "huge: score 1000000000000000000000000000000000000000... is beyond float range",
        "hugeidx": "hugeidx: class index 1000000000000000000000000000000000000000... outside 0..5",
        "frac": "frac: label 3.7 is not an integer class index",
        "flag": "flag: label True is a bool, not a class index",
        "flagval": "flagval: score True is a bool, not a number",
        "notdict": "notdict: label entry is list, not a dict",
    }
    for name, reason in expect.items():
        assert by_name[name][0].reject == reason
    out = tmp_path / "shards"
    report = build_shards("mer2023", "unibench", tmp_path, "test1", out, progress=False)
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert report.items == len(manifest) == len(entries) and report.accepted + report.rejected == len(entries)
    assert sorted(r["name"] for r in manifest) == sorted(str(k) for k in entries)


def test_unterminated_quote_warns_and_keeps_later_rows(tmp_path, caplog):
    path = tmp_path / "t.csv"
    path.write_text('name,text\na,"multi\nline"\nb,"never closed\nc,fine\nd,also fine\n', encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        rows = read_csv_rows(path)
    assert [r["name"] for r in rows] == ["a", "b", "c", "d"]
    assert rows[0]["text"] == "multi\nline" and rows[2]["text"] == "fine"
    assert "malformed CSV row at line 4" in caplog.text


def test_unterminated_quote_in_meld_csv_loses_no_row(tmp_path, caplog):
    root = make_fixture("meld", "official", tmp_path / "fx", n=4)
    path = root / "test_sent_emo.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[1] = lines[1].replace(",Ross,", ',"Ross,', 1)  # a quote opened and never closed
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        items = scan_split(get_benchmark("meld"), "official", root, "test")
    assert len(items) == 4 and sum(i.reject is None for i in items) == 3  # the broken row: rejected, not merged
    assert "malformed CSV row at line 2" in caplog.text
    (broken,) = [i for i in items if i.reject]
    assert broken.reject == "test_dia_utt: Dialogue_ID/Utterance_ID ''/'' are not integers"
