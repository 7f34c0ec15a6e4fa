"""The real MER-UniBench label files (reference data) through the scanners' label path."""
from __future__ import annotations

import pytest

from affectverse_ds.benchmarks import get_benchmark
from affectverse_ds.benchmarks.layouts import items_from_table
from data_prep.make_fixtures import LABEL_FILES, make_fixture

# Split sizes of the real label files (tests/reference/README.md; test splits: docs/evaluation.md).
SIZES = [
    ("mer2023", "train", 3373), ("mer2023", "test1", 411), ("mer2023", "test2", 412), ("mer2023", "test3", 834),
    ("meld", "train", 9989), ("meld", "val", 1109), ("meld", "test", 2610),
    ("iemocap", "train", 5531 - 1241), ("iemocap", "test", 1241),
    ("cmumosi", "train", 1284), ("cmumosi", "val", 229), ("cmumosi", "test", 686),
    ("cmumosei", "train", 16326), ("cmumosei", "val", 1871), ("cmumosei", "test", 4659),
    ("sims", "train", 1368), ("sims", "val", 456), ("sims", "test", 457),
    ("simsv2", "train", 2722), ("simsv2", "val", 647), ("simsv2", "test", 1034),
]


@pytest.mark.parametrize("name, split, size", SIZES)
def test_real_label_files_give_split_sizes(merbench, name, split, size):
    """Without media every entry still comes back, rejected only for its missing clip (labels all parse)."""
    items = get_benchmark(name).scanners["unibench"](merbench, split)
    assert len(items) == size
    assert len({i.name for i in items}) == size
    assert all(i.reject.startswith("no media file") for i in items)
    if name == "iemocap":
        assert {i.name[4] for i in items} == ({"5"} if split == "test" else {"1", "2", "3", "4"})


def test_real_labels_parse_without_rejections(merbench):
    bench = get_benchmark("meld")
    table = bench.load_labels(merbench / bench.process_dir, "test")
    assert not table.rejected and len(table.labels) == 2610
    assert {label.emo for label in table.labels.values()} == set(bench.classes)


@pytest.mark.parametrize("name, layout", [
    ("meld", "unibench"), ("mer2023", "unibench"), ("meld", "official"), ("iemocap", "official"),
    ("mer2023", "official"), ("sims", "official"), ("cmumosi", "official"),
])
def test_fixture_from_real_labels(tmp_path, merbench, name, layout):
    """``--labels``: the first N entries of the real test split, with the real transcript's subtitles."""
    bench = get_benchmark(name)
    proc = merbench / bench.process_dir
    real = [i for i in items_from_table(bench.load_labels(proc, bench.test_split), bench.test_split)][:3]
    root = make_fixture(name, layout, tmp_path / "fx", n=3, labels=proc / LABEL_FILES.get(name, "label.npz"))
    items = bench.scanners[layout](root, bench.test_split)
    assert [i.name for i in items] == sorted(i.name for i in real)
    by_name = {i.name: i.label for i in real}
    for item in items:
        assert item.reject is None
        assert item.label.emo == by_name[item.name].emo
        if by_name[item.name].val is not None and bench.group == "sentiment":
            assert item.label.val == pytest.approx(by_name[item.name].val)
    if layout == "unibench":
        subtitles = {i.name: i.subtitle for i in bench.scanners["unibench"](merbench, bench.test_split)}
        assert all(item.subtitle == subtitles[item.name] for item in items)


def test_fixture_refuses_a_label_file_the_benchmark_does_not_read(tmp_path, merbench):
    with pytest.raises(ValueError, match="label_4way.npz"):
        make_fixture("iemocap", "unibench", tmp_path / "fx", labels=merbench / "iemocap-process" / "label_6way.npz")
