"""An oversized field in a transcript or label CSV (issue #26): the row is read one bounded line at a time
(``benchmarks/text_files.py``), its item is rejected with one line naming the file and the line, every other
item is built as before, and a 200 MB field keeps peak memory within 100 MB of an ordinary file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from affectverse_ds.benchmarks import get_benchmark
from affectverse_ds.benchmarks.fixtures import make_fixture
from affectverse_ds.benchmarks.text_files import LINE_LIMIT
from affectverse_ds.data.shards import scan_split

from tests.support import corpus
from tests.support.peak_memory import peaks
from tests.support.wheels import write_tiny_wheels

FIELD_LIMIT = 131072  # the csv module's default field_size_limit


def _meld_official(row: dict[str, str], split: str) -> str:
    return f"{split}_dia{row['Dialogue_ID']}_utt{row['Utterance_ID']}"


def _mmsa(row: dict[str, str], split: str) -> str:
    return f"{row['video_id']}_{row['clip_id']}"


def _named(row: dict[str, str], split: str) -> str:
    return row["name"]


# (benchmark, layout, file under the fixture root, column made huge, what the reason calls the row, item name)
FILES = [
    ("meld", "official", "test_sent_emo.csv", "Utterance", "label", _meld_official),  # the name's columns follow it
    ("mer2023", "official", "test1-label.csv", "discrete", "label", _named),
    ("mer2023", "official", "transcription.csv", "sentence", "transcript", _named),
    ("cmumosi", "official", "label.csv", "text", "label", _mmsa),  # the split (mode) column follows it
    ("simsv2", "official", "meta.csv", "text", "label", _mmsa),
    ("ovmerd", "unibench", "ovmerdplus-process/ovlabel.csv", "openset", "label", _named),
    ("ovmerd", "unibench", "ovmerdplus-process/subtitle_eng.csv", "sentence", "transcript", _named),
    ("meld", "unibench", "meld-process/transcription-engchi-polish.csv", "chinese", "transcript", _named),
    ("meld", "unibench", "meld-process/transcription-engchi-polish.csv", "english", "transcript", _named),
]


def _fixture(bench: str, layout: str, out: Path) -> tuple[Path, str]:
    root = make_fixture(bench, layout, out, n=4, inject=[])
    return root, json.loads((root / "fixture.json").read_text())["split"]


def _scan(bench: str, layout: str, root: Path, split: str) -> dict[str, str | None]:
    return {item.name: item.reject for item in scan_split(get_benchmark(bench), layout, root, split)}


@pytest.mark.parametrize("n_chars", [300_000, 2 << 20], ids=["over-field-limit", "over-line-limit"])
@pytest.mark.parametrize("bench, layout, file, column, kind, item_name", FILES,
                         ids=[f"{b}-{f.rsplit('/', 1)[-1]}-{c}" for b, _, f, c, _, _ in FILES])
def test_an_oversized_field_rejects_its_item_only_naming_file_and_line(bench, layout, file, column, kind, item_name,
                                                                      n_chars, tmp_path):
    root, split = _fixture(bench, layout, tmp_path / "raw")
    before = _scan(bench, layout, root, split)
    assert all(reason is None for reason in before.values()), before
    victim = corpus.inflate_csv_field(root / file, 1, column, n_chars)
    after = _scan(bench, layout, root, split)
    name = item_name(victim, split)
    reason = after.pop(name)
    if n_chars > LINE_LIMIT:
        length = (root / file).read_text(encoding="utf-8").splitlines()[2]
        cause = f"line of {len(length)} characters is over the {LINE_LIMIT}-character limit"
    else:
        cause = f"field larger than field limit ({FIELD_LIMIT})"
    assert reason.startswith(f"{kind} row unreadable: {Path(file).name} line 3: {cause}"), reason
    assert "\n" not in reason
    before.pop(name)
    assert after == before  # every other item is there, built as before


def test_an_oversized_row_in_the_wheels_format_csv_is_refused_in_one_line(tmp_path):
    """The scorer's vocabulary is refused, not read with a row missing (scores would change silently)."""
    from affectverse_ds.eval.wheel import read_format_table

    write_tiny_wheels(tmp_path)
    corpus.inflate_csv_field(tmp_path / "format.csv", 1, "format", 2 << 20)
    with pytest.raises(ValueError) as err:
        read_format_table(tmp_path / "format.csv")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'format.csv'}: row unreadable (format.csv line 3: line of ")
    assert "\n" not in message


# ----------------------------------------------------------------------------- peak memory

BIG_MB = 200

_MEASURE = """
from pathlib import Path
from affectverse_ds.benchmarks import get_benchmark
from affectverse_ds.data.shards import scan_split

def measure(arg):
    bench, layout, root, split = arg.split("|")
    items = scan_split(get_benchmark(bench), layout, Path(root), split)
    return json.dumps({item.name: item.reject for item in items})
"""


@pytest.mark.parametrize("bench, layout, file, column, kind, item_name",
                         [FILES[0], FILES[-1]], ids=["meld-label-csv", "meld-transcript"])
def test_a_200_mb_field_stays_within_100_mb_of_an_ordinary_file(bench, layout, file, column, kind, item_name,
                                                                 tmp_path, capsys):
    """Peak RSS of scanning the split with a 200 MB field against scanning the same fixture untouched, in one
    fresh process (ordinary first). The big file is written in pieces and deleted afterwards."""
    ordinary, split = _fixture(bench, layout, tmp_path / "ordinary")
    hostile, _ = _fixture(bench, layout, tmp_path / "hostile")
    victim = corpus.inflate_csv_field(hostile / file, 1, column, BIG_MB << 20)
    try:
        assert (hostile / file).stat().st_size > BIG_MB << 20
        base, attack = peaks(_MEASURE, [f"{bench}|{layout}|{root}|{split}" for root in (ordinary, hostile)])
    finally:
        (hostile / file).unlink()
    expected = json.loads(base.outcome)
    got = json.loads(attack.outcome)
    name = item_name(victim, split)
    assert got.pop(name).startswith(f"{kind} row unreadable: {Path(file).name} line 3: line of ")
    expected.pop(name)
    assert got == expected
    assert attack.peak_mb - base.peak_mb < 100, (base.peak_mb, attack.peak_mb)
    with capsys.disabled():
        print(f"\npeak RSS {bench} {Path(file).name} scan: ordinary {base.peak_mb:.0f} MB, "
              f"{BIG_MB} MB field {attack.peak_mb:.0f} MB")
