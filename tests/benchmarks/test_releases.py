"""The real releases' trees (issue #14, cases 1-8): file names and header lines as the public sources
give them, label data from the real MER-UniBench files (``merbench`` fixture) where a release has it.

Sources of each shape: docs/datasets.md.
"""
from __future__ import annotations

import csv
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from affectverse_ds.benchmarks import get_benchmark
from affectverse_ds.benchmarks.base import LayoutNotFound
from affectverse_ds.benchmarks.layouts import TEXT_NOTES, normalise_subtitle
from affectverse_ds.benchmarks.mer2023 import NO_VALENCE_NOTE
from affectverse_ds.data.shards import build_shards, inspect_root, scan_split
from data_prep import build_shards as cli
from data_prep.make_fixtures import make_fixture

# Header lines as the releases write them.
MELD_HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"
MMSA_HEADER = "video_id,clip_id,text,label,label_T,label_A,label_V,annotation,mode"
MER2023_LABEL_HEADER = "name,discrete,valence"
MERTOOLS_TRANSCRIPT_HEADER = "name,sentence"  # MERTools MER2023 baseline (main-baseline.py)


def first_line(path: Path) -> str:
    return path.read_text(encoding="utf-8").splitlines()[0]


def rows_of(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def scan(name: str, layout: str, root: Path, split: str):
    return scan_split(get_benchmark(name), layout, root, split)


# ----------------------------------------------------------------------------- case 1: ovmerdplus-process

def test_case1_ovmerd_plus_folder_is_read_and_listed(tmp_path):
    root = make_fixture("ovmerd", "unibench", tmp_path / "unibench", n=3)
    assert (root / "ovmerdplus-process" / "ovlabel.csv").is_file()  # MER-UniBench's folder name
    assert not (root / "ovmerd-process").exists()
    items = scan("ovmerd", "unibench", root, "test")
    assert len(items) == 3 and all(i.reject is None for i in items)
    assert all(i.shape.startswith("unibench: ovmerdplus-process/") for i in items)
    (scan_row,) = [s for s in inspect_root("unibench", root) if s.benchmark == "ovmerd"]
    assert scan_row.status == "ok" and len(scan_row.items) == 3


def test_case1_older_ovmerd_folder_still_read(tmp_path):
    root = make_fixture("ovmerd", "unibench", tmp_path / "old", n=2, shape="ovmerd-process")
    items = scan("ovmerd", "unibench", root, "test")
    assert len(items) == 2 and all(i.shape.startswith("unibench: ovmerd-process/") for i in items)


# ----------------------------------------------------------------------------- case 2: CH-SIMS v2 meta.csv

def test_case2_simsv2_meta_csv(tmp_path, merbench):
    root = make_fixture("simsv2", "official", tmp_path / "fx", n=3,
                        labels=merbench / "simsv2-process" / "label.npz")
    assert first_line(root / "meta.csv") == MMSA_HEADER and not (root / "label.csv").exists()
    items = scan("simsv2", "official", root, "test")
    real = get_benchmark("simsv2").load_labels(merbench / "simsv2-process", "test").labels
    assert len(items) == 3
    for item in items:
        assert item.reject is None and item.shape == "mmsa: meta.csv, Raw/<video_id>/<clip_id>"
        assert item.label.val == pytest.approx(real[item.name].val)


def test_case2_label_csv_shape_and_the_message_when_neither(tmp_path):
    root = make_fixture("simsv2", "official", tmp_path / "fx", n=2, shape="label.csv")
    assert [i.shape for i in scan("simsv2", "official", root, "test")] == ["mmsa: label.csv, Raw/<video_id>/<clip_id>"] * 2
    (root / "label.csv").rename(root / "labels.tsv")
    with pytest.raises(LayoutNotFound, match=r"looked for label\.csv or meta\.csv in .*found .*labels\.tsv"):
        scan("simsv2", "official", root, "test")


# ----------------------------------------------------------------------------- case 3: MELD.Raw train/ CSV

def test_case3_meld_train_csv_inside_train_folder(tmp_path, merbench):
    root = make_fixture("meld", "official", tmp_path / "fx", n=3, split="train",
                        labels=merbench / "meld-process" / "label.npz")
    assert first_line(root / "train" / "train_sent_emo.csv") == MELD_HEADER
    assert not (root / "train_sent_emo.csv").exists()
    items = scan("meld", "official", root, "train")
    real = get_benchmark("meld").load_labels(merbench / "meld-process", "train").labels
    assert len(items) == 3
    for item in items:
        assert item.reject is None and item.label.emo == real[item.name].emo
        assert item.shape == "meld.official: train/train_sent_emo.csv, train_splits/"


def test_case3_flat_shape_read_too(tmp_path):
    root = make_fixture("meld", "official", tmp_path / "fx", n=2, split="train", shape="flat")
    assert (root / "train_sent_emo.csv").is_file()
    assert [i.shape for i in scan("meld", "official", root, "train")] == ["meld.official: train_sent_emo.csv, train_splits/"] * 2


# ----------------------------------------------------------------------------- case 4: MERTools transcript

def test_case4_mertools_transcript_name_sentence(tmp_path, merbench):
    root = make_fixture("mer2023", "official", tmp_path / "fx", n=3,
                        labels=merbench / "mer2023-dataset-process" / "label-6way.npz")
    assert first_line(root / "transcription.csv") == MERTOOLS_TRANSCRIPT_HEADER
    assert first_line(root / "test1-label.csv") == MER2023_LABEL_HEADER
    texts = {r["name"]: r["sentence"] for r in rows_of(root / "transcription.csv")}
    items = scan("mer2023", "official", root, "test1")
    assert [i.subtitle for i in items] == [texts[i.name] for i in items] and all(texts.values())
    assert all(i.shape == "mer2023.official: test1-label.csv, transcription.csv:sentence" for i in items)


def test_case4_unknown_transcript_columns_reach_every_manifest_row(tmp_path):
    root = make_fixture("mer2023", "official", tmp_path / "fx", n=2)
    rows = rows_of(root / "transcription.csv")
    write_rows(root / "transcription.csv", [{"name": r["name"], "text": r["sentence"]} for r in rows])
    out = tmp_path / "shards"
    report = build_shards("mer2023", "official", root, "test1", out, progress=False)
    assert report.accepted == 2
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    problem = "transcript transcription.csv has no 'name' and 'sentence/chinese' columns (has name, text)"
    assert len(manifest) == 2 and all(problem in r["reason"] for r in manifest)


# ----------------------------------------------------------------------------- case 5: test3 -10 marker

def test_case5_real_test3_valence_marker_is_no_score(merbench):
    items = scan("mer2023", "unibench", merbench, "test3")
    assert len(items) == 834
    assert all(i.label is None and i.reject.startswith("no media file") for i in items)  # no media here
    labels = get_benchmark("mer2023").load_labels(merbench / "mer2023-dataset-process", "test3").labels
    assert len(labels) == 834 and {label.val for label in labels.values()} == {None}
    test1 = get_benchmark("mer2023").load_labels(merbench / "mer2023-dataset-process", "test1").labels
    assert all(label.val is not None for label in test1.values())


def test_case5_marker_noted_in_manifest_and_official_csv(tmp_path):
    root = make_fixture("mer2023", "unibench", tmp_path / "fx", n=2, split="test3")
    items = scan("mer2023", "unibench", root, "test3")
    assert all(i.label.val is None and NO_VALENCE_NOTE in i.notes for i in items)
    out = tmp_path / "shards"
    build_shards("mer2023", "unibench", root, "test3", out, progress=False)
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert [json.loads(r["label"])["val"] for r in manifest] == [None, None]
    assert all(NO_VALENCE_NOTE in r["reason"] for r in manifest)
    official = make_fixture("mer2023", "official", tmp_path / "off", n=2, split="test3")
    assert {r["valence"] for r in rows_of(official / "test3-label.csv")} == {"-10.0"}
    assert [i.label.val for i in scan("mer2023", "official", official, "test3")] == [None, None]


# ----------------------------------------------------------------------------- case 6: final_videos re-cuts

def test_case6_meld_final_videos_recut_wins_and_is_recorded(tmp_path):
    root = make_fixture("meld", "official", tmp_path / "fx", n=3)
    clips = root / "output_repeated_splits_test"
    shutil.copy(clips / "dia0_utt0.mp4", clips / "final_videos_testdia0_utt0.mp4")  # beside the plain cut
    (clips / "dia0_utt1.mp4").rename(clips / "final_videos_testdia0_utt1.mp4")  # only the re-cut
    shutil.copy(clips / "dia1_utt0.mp4", clips / "final_videos_testdia101_utt0.mp4")  # no CSV row (issue #22)
    items = {i.name: i for i in scan("meld", "official", root, "test")}
    assert sorted(items) == ["test_dia0_utt0", "test_dia0_utt1", "test_dia1_utt0"]
    assert items["test_dia0_utt0"].video.name == "final_videos_testdia0_utt0.mp4"
    assert items["test_dia0_utt0"].notes == ["clip final_videos_testdia0_utt0.mp4 (re-cut) used instead of dia0_utt0.mp4"]
    assert items["test_dia0_utt1"].video.name == "final_videos_testdia0_utt1.mp4"
    assert items["test_dia1_utt0"].video.name == "dia1_utt0.mp4" and items["test_dia1_utt0"].notes == []
    out = tmp_path / "shards"
    build_shards("meld", "official", root, "test", out, progress=False)
    manifest = {r["name"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert manifest["test_dia0_utt0"]["source"] == "output_repeated_splits_test/final_videos_testdia0_utt0.mp4"
    assert "re-cut" in manifest["test_dia0_utt0"]["reason"]


# ----------------------------------------------------------------------------- case 7: C1 controls, mojibake

@pytest.mark.parametrize("raw, clean, kinds", [
    ("I\u0092m fine \u0096 really\u0085", "I\u2019m fine \u2013 really\u2026", ["c1_control"]),  # pre-2020 MELD
    ("don\u00e2\u20ac\u2122t", "don\u2019t", ["mojibake"]),  # UTF-8 read as cp1252
    ("don\u00e2\u0080\u0099t", "don\u2019t", ["mojibake"]),  # UTF-8 read as latin-1
    ("a\tb\x00c\x81", "a bc", ["c1_control", "control"]),
    ("bad \ufffd byte", "bad \ufffd byte", ["replacement_char"]),
    ("  \u0081 ", "", ["c1_control", "empty"]),
    ("\u00c3lvaro caf\u00e9 \u4f60\u597d", "\u00c3lvaro caf\u00e9 \u4f60\u597d", []),  # real accents, Chinese: untouched
])
def test_case7_subtitle_rule(raw, clean, kinds):
    assert normalise_subtitle(raw) == (clean, kinds)


def test_case7_cp1252_bytes_in_a_utf8_csv(tmp_path):
    """A CSV saved as cp1252 bytes (0x92 for the apostrophe) between UTF-8 rows: the byte is not lost as U+FFFD."""
    root = make_fixture("meld", "official", tmp_path / "fx", n=2)
    path = root / "test_sent_emo.csv"
    raw = path.read_bytes()
    first = rows_of(path)[0]["Utterance"]
    path.write_bytes(raw.replace(first.encode(), b"It\x92s \x93fine\x94 \xff", 1))
    items = scan("meld", "official", root, "test")
    (item,) = [i for i in items if "fine" in i.subtitle]
    assert item.subtitle == "It\u2019s \u201cfine\u201d \ufffd"
    assert TEXT_NOTES["c1_control"] in item.notes and TEXT_NOTES["replacement_char"] in item.notes


def test_case7_meld_c1_characters_repaired_counted_and_recorded(tmp_path):
    root = make_fixture("meld", "official", tmp_path / "fx", n=3)
    rows = rows_of(root / "test_sent_emo.csv")
    rows[0]["Utterance"] = "Oh, I\u0092m sorry \u0097 really."  # as the CSVs before declare-lab's cp1252 fix
    rows[1]["Utterance"] = "You don\u00e2\u20ac\u2122t say."
    write_rows(root / "test_sent_emo.csv", rows)
    out = tmp_path / "shards"
    build_shards("meld", "official", root, "test", out, progress=False)
    manifest = {r["name"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    first = f"test_dia{rows[0]['Dialogue_ID']}_utt{rows[0]['Utterance_ID']}"
    assert "C1 control characters mapped" in manifest[first]["reason"]
    record = json.loads((out / "meld-test.build.json").read_text())
    assert record["text_quality"] == {"c1_control": 1, "mojibake": 1}
    assert record["shapes"] == ["meld.official: test_sent_emo.csv, output_repeated_splits_test/"]
    with tarfile.open(out / "meld-test-000000.tar") as tar:
        metas = [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
    texts = {m["name"]: m["subtitle"] for m in metas}
    assert texts[first] == "Oh, I\u2019m sorry \u2014 really."
    assert not any(0x80 <= ord(c) <= 0x9F for m in metas for c in m["text"])  # none reach the chat text


# ----------------------------------------------------------------------------- case 8: --all never skips silently

def test_case8_all_fails_naming_a_present_unreadable_benchmark(tmp_path, capsys):
    root = tmp_path / "data"
    make_fixture("meld", "unibench", root, n=2)
    (root / "cmumosi-process").mkdir()
    (root / "cmumosi-process" / "label.npz").write_bytes(b"not an npz at all")
    rc = cli.main(["--all", "--layout", "unibench", "--root", str(root), "--out", str(tmp_path / "out"),
                   "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "cmumosi/train: unreadable" in out and "error: cmumosi/train is present" in err
    assert "not built: cmumosi/test, cmumosi/train, cmumosi/val" in err
    assert ("meld/test: 2 items, 2 accepted, 0 rejected, 1 shards; subtitles: clean; "
            "shape: unibench: meld-process/, transcription-engchi-polish.csv:english") in out  # still built
    assert "sims/*: absent: no sims-process/ under" in out  # absent is listed, not an error
    assert "sims" not in err


def test_case8_label_file_missing_from_present_folder(tmp_path, capsys):
    root = make_fixture("meld", "unibench", tmp_path / "data", n=2)
    (root / "meld-process" / "label.npz").unlink()
    assert cli.main(["--dry-run", "--all", "--layout", "unibench", "--root", str(root)]) == 1
    out, err = capsys.readouterr()
    assert "meld/test: unreadable: label file not found: looked for label.npz in" in out
    assert "found subaudio/, subvideo/, transcription-engchi-polish.csv" in out


def test_case8_official_meld_without_its_train_csv(tmp_path, capsys):
    """The pre-fix failure: train/train_sent_emo.csv unseen, the train split skipped with exit 0."""
    root = make_fixture("meld", "official", tmp_path / "fx", n=2, split="train")
    make_fixture("meld", "official", root, n=2, split="test")
    assert cli.main(["--dry-run", "--all", "--layout", "official", "--root", str(root)]) == 1  # no dev CSV
    out, _ = capsys.readouterr()
    assert "meld/train: ok [meld.official: train/train_sent_emo.csv" in out
    assert "meld/val: unreadable: MELD val label file not found: looked for dev_sent_emo.csv or dev/dev_sent_emo.csv" in out
    assert "mer2023/*: absent" in out and "iemocap/*: absent" in out


def test_dry_run_decodes_nothing_and_names_what_it_found(tmp_path, capsys):
    root = make_fixture("meld", "unibench", tmp_path / "data", n=3, inject=("nomedia", "badlabel"))
    make_fixture("ovmerd", "unibench", root, n=2)
    rc = cli.main(["--dry-run", "--all", "--layout", "unibench", "--root", str(root)])
    out, _ = capsys.readouterr()
    assert rc == 0
    (meld_line,) = [line for line in out.splitlines() if line.startswith("meld/test:")]
    assert meld_line.startswith("meld/test: ok [unibench: meld-process/, transcription-engchi-polish.csv:english] "
                                "3 items, media 2 found / 1 missing, rejected: label 1, no media file 1;")
    assert "ovmerd/test: ok [unibench: ovmerdplus-process/, subtitle_eng.csv:sentence] 2 items" in out
    assert "meld/val: no split: " in out and "no 'val_corpus' (has test_corpus, train_corpus)" in out
    assert not any(p.suffix in (".tar", ".parquet") for p in tmp_path.rglob("*"))


def test_dry_run_of_one_benchmark(tmp_path, capsys):
    root = make_fixture("mer2023", "official", tmp_path / "fx", n=2)
    args = ["--dry-run", "--layout", "official", "--root", str(root)]
    assert cli.main(args + ["--benchmark", "mer2023", "--split", "test1"]) == 0
    assert capsys.readouterr().out.startswith("mer2023/test1: ok [mer2023.official: test1-label.csv, transcription.csv:sentence] 2 items")
    assert cli.main(args + ["--benchmark", "meld"]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("meld/*: absent: MELD train label file not found: looked for train/train_sent_emo.csv or train_sent_emo.csv")
    assert "error: meld not found under" in err
