"""IEMOCAP's plain-text annotation (EmoEvaluation summary lines, transcriptions) read one bounded line at a time
(issue #26, as the CSVs of test_hostile_csv.py): an over-limit line rejects its utterance only, naming the file
and the line, every other item is built as before, and a 200 MB line keeps peak memory within 100 MB of an
ordinary file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from affectverse_ds.benchmarks import get_benchmark
from affectverse_ds.benchmarks.fixtures import make_fixture
from affectverse_ds.benchmarks.text_files import LINE_LIMIT
from affectverse_ds.data.shards import scan_split
from tests.support.peak_memory import peaks

DIALOG = Path("Session5/dialog")


def _fixture(out: Path) -> Path:
    return make_fixture("iemocap", "official", out, n=4, inject=[])


def _scan(root: Path) -> dict[str, str | None]:
    return {item.name: item.reject for item in scan_split(get_benchmark("iemocap"), "official", root, "test")}


def _inflate(path: Path, startswith: str, n_chars: int) -> int:
    """Pad the first line starting with ``startswith`` to over ``n_chars`` characters (written in pieces);
    returns its line number (1-based)."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    number = next(i for i, line in enumerate(lines) if line.startswith(startswith))
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines[:number])
        f.write(lines[number].rstrip("\n") + " ")
        for _ in range(n_chars // (1 << 20) + 1):
            f.write("x" * min(1 << 20, n_chars))
        f.write("\n")
        f.writelines(lines[number + 1:])
    return number + 1


@pytest.mark.parametrize("where", ["EmoEvaluation", "transcriptions"])
def test_an_over_limit_line_rejects_its_utterance_only(where, tmp_path):
    root = _fixture(tmp_path / "raw")
    before = _scan(root)
    assert all(reason is None for reason in before.values()), before
    victim = sorted(before)[1]
    path = next((root / DIALOG / where).glob("*.txt"))
    start = "[" if where == "EmoEvaluation" else victim
    if where == "EmoEvaluation":  # the second summary line is the victim's
        summary = [line for line in path.read_text().splitlines() if line.startswith("[")]
        start = next(line for line in summary if f"\t{victim}\t" in line)
    number = _inflate(path, start, 2 << 20)
    after = _scan(root)
    kind = "label row" if where == "EmoEvaluation" else "transcript"
    reason = after.pop(victim)
    assert reason.startswith(f"{kind} unreadable: {path.name} line {number}: line of ") and "\n" not in reason
    assert f"over the {LINE_LIMIT}-character limit" in reason
    before.pop(victim)
    assert after == before


_MEASURE = """
from pathlib import Path
from affectverse_ds.benchmarks import get_benchmark
from affectverse_ds.data.shards import scan_split

def measure(root):
    return json.dumps({i.name: i.reject for i in scan_split(get_benchmark("iemocap"), "official", Path(root), "test")})
"""


def test_a_200_mb_transcript_line_stays_within_100_mb_of_an_ordinary_file(tmp_path, capsys):
    ordinary, hostile = _fixture(tmp_path / "ordinary"), _fixture(tmp_path / "hostile")
    path = next((hostile / DIALOG / "transcriptions").glob("*.txt"))
    victim = sorted(_scan(hostile))[0]
    _inflate(path, victim, 200 << 20)
    try:
        base, attack = peaks(_MEASURE, [str(ordinary), str(hostile)])
    finally:
        path.unlink()
    got, expected = json.loads(attack.outcome), json.loads(base.outcome)
    assert got.pop(victim).startswith(f"transcript unreadable: {path.name} line ")
    expected.pop(victim)
    assert got == expected
    assert attack.peak_mb - base.peak_mb < 100, (base.peak_mb, attack.peak_mb)
    with capsys.disabled():
        print(f"\npeak RSS iemocap scan: ordinary {base.peak_mb:.0f} MB, 200 MB transcript line {attack.peak_mb:.0f} MB")
