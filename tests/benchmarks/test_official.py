"""The official release layouts (MELD, MER2023, IEMOCAP, MMSA) read back from fixtures."""
from __future__ import annotations

import csv
import re

import pytest

from affectverse_ds.benchmarks import get_benchmark
from affectverse_ds.benchmarks.iemocap import four_way_label, speaker_crop
from data_prep.make_fixtures import make_fixture


def read_csv(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("split, csv_name, clip_dir", [
    ("test", "test_sent_emo.csv", "output_repeated_splits_test"),
    ("val", "dev_sent_emo.csv", "dev_splits_complete"),
])
def test_meld_official(scan_fixture, split, csv_name, clip_dir):
    items, record, root = scan_fixture("meld", "official", n=3, split=split)
    rows = {f"{split}_dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}": r for r in read_csv(root / csv_name)}
    assert [i.name for i in items] == sorted(rows) == sorted(r["name"] for r in record["items"])
    for item in items:
        dia_utt = item.name.split("_", 1)[1]
        assert item.reject is None and item.split == split
        assert item.label.emo == rows[item.name]["Emotion"]
        assert item.subtitle == rows[item.name]["Utterance"]
        assert item.video == root / clip_dir / f"{dia_utt}.mp4" and item.video.is_file()


def test_meld_official_clips_unpacked_in_split_folder(tmp_path):
    root = make_fixture("meld", "official", tmp_path / "fx", n=2)
    (root / "test").mkdir()
    (root / "output_repeated_splits_test").rename(root / "test" / "output_repeated_splits_test")
    items = get_benchmark("meld").scanners["official"](root, "test")
    assert all(i.reject is None and i.video.parent.parent.name == "test" for i in items)


@pytest.mark.parametrize("split", ["test1", "test3"])
def test_mer2023_official(scan_fixture, split):
    items, _, root = scan_fixture("mer2023", "official", n=3, split=split)
    rows = {r["name"]: r for r in read_csv(root / f"{split}-label.csv")}
    # MERTools' baseline transcript: name,sentence
    texts = {r["name"]: r["sentence"] for r in read_csv(root / "transcription.csv")}
    assert [i.name for i in items] == sorted(rows)
    for item in items:
        assert item.reject is None
        assert item.label.emo == rows[item.name]["discrete"]
        valence = float(rows[item.name]["valence"])
        assert item.label.val == (None if split == "test3" else valence)  # test3: the -10 no-valence marker
        assert (valence == -10) == (split == "test3")
        assert item.subtitle == texts[item.name]
        assert item.video == root / split / f"{item.name}.mp4"


def test_mer2023_official_empty_valence_is_no_score(tmp_path):
    root = make_fixture("mer2023", "official", tmp_path / "fx", n=2, split="test3")
    path = root / "test3-label.csv"
    rows = read_csv(path)
    lines = "".join(f"{r['name']},{r['discrete']},\n" for r in rows)
    path.write_text("name,discrete,valence\n" + lines, encoding="utf-8")
    items = get_benchmark("mer2023").scanners["official"](root, "test3")
    assert [i.label.val for i in items] == [None, None] and all(i.label.emo for i in items)


def evaluation_lines(root):
    """utterance id -> (start, end, category) from every EmoEvaluation file of the fixture."""
    out = {}
    for path in root.glob("Session*/dialog/EmoEvaluation/*.txt"):
        for m in re.finditer(r"^\[([\d.]+) - ([\d.]+)\]\t(\S+)\t(\S+)", path.read_text(), re.M):
            out.setdefault(m[3], (float(m[1]), float(m[2]), m[4]))
    return out


@pytest.mark.parametrize("split, session", [("test", 5), ("train", 1)])
def test_iemocap_official(scan_fixture, split, session):
    items, _, root = scan_fixture("iemocap", "official", n=6, split=split)
    lines = evaluation_lines(root)
    assert [i.name for i in items] == sorted(lines)
    merged = {"hap": "happy", "exc": "happy", "sad": "sad", "neu": "neutral", "ang": "anger"}
    assert "exc" in {c for _, _, c in lines.values()}  # the fixture exercises the merge
    for item in items:
        start, end, category = lines[item.name]
        dialog = item.name.rsplit("_", 1)[0]
        assert item.reject is None and item.name.startswith(f"Ses0{session}")
        assert item.label.emo == merged[category]
        assert item.segment == (start, end)
        assert item.video == root / f"Session{session}" / "dialog" / "avi" / "DivX" / f"{dialog}.avi"
        # Fixture dialogs are Ses0xF_*: the female wears the markers and sits left.
        assert item.crop == ("left" if item.name.rsplit("_", 1)[1][0] == "F" else "right")
        assert item.subtitle


def test_iemocap_official_release_folder_as_root(tmp_path):
    root = make_fixture("iemocap", "official", tmp_path / "fx", n=2)
    (tmp_path / "fx" / "IEMOCAP_full_release").mkdir()
    (root / "Session5").rename(tmp_path / "fx" / "IEMOCAP_full_release" / "Session5")
    assert len(get_benchmark("iemocap").scanners["official"](tmp_path / "fx", "test")) == 2


def test_iemocap_categories_and_speaker_side():
    assert four_way_label("exc", "u")[0].emo == "happy"
    assert four_way_label("hap", "u")[0].emo == "happy"
    label, reason = four_way_label("fru", "u")
    assert label is None and "outside the 4-way classes" in reason
    assert "did not agree" in four_way_label("xxx", "u")[1]
    assert "unknown IEMOCAP category 'zzz'" in four_way_label("zzz", "u")[1]
    # The marker wearer (the dialog id's letter) is on the left, whatever the gender.
    assert speaker_crop("Ses01M_script01_1_M005") == "left"
    assert speaker_crop("Ses01M_script01_1_F005") == "right"
    assert speaker_crop("Ses05F_impro03_F010") == "left"
    assert speaker_crop("not_an_id") is None


@pytest.mark.parametrize("name", ["cmumosi", "cmumosei", "sims", "simsv2"])
@pytest.mark.parametrize("split, mode", [("test", "test"), ("val", "valid")])
def test_mmsa_official(scan_fixture, name, split, mode):
    items, _, root = scan_fixture(name, "official", n=2, split=split)
    label_file = "meta.csv" if name == "simsv2" else "label.csv"  # CH-SIMS v2's release calls it meta.csv
    rows = {f"{r['video_id']}_{r['clip_id']}": r for r in read_csv(root / label_file)}
    assert all(i.shape == f"mmsa: {label_file}, Raw/<video_id>/<clip_id>" for i in items)
    assert {r["mode"] for r in rows.values()} == {mode}
    assert [i.name for i in items] == sorted(rows)
    for item in items:
        row = rows[item.name]
        assert item.reject is None and item.split == split
        assert item.label.val == float(row["label"])
        assert item.subtitle == row["text"]
        assert item.video == root / "Raw" / row["video_id"] / f"{row['clip_id']}.mp4"
    other = "train" if split != "train" else "test"
    assert get_benchmark(name).scanners["official"](root, other) == []  # rows of other modes stay out


def test_official_scanners_refuse_unknown_splits(tmp_path):
    for name, split in [("meld", "dev"), ("mer2023", "test"), ("iemocap", "val"), ("sims", "valid")]:
        with pytest.raises(KeyError):
            get_benchmark(name).scanners["official"](tmp_path, split)
