"""Special files and inflating archives (issue #26): a FIFO in place of a listed shard, a label file or
``sizes.json`` is refused in one line naming it (never waited on), and an ``.npz`` member that inflates past
its reader's limit is refused before it is inflated, with peak memory within 100 MB of an ordinary archive."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from affectverse_ds.bounded import BoundedReadError
from affectverse_ds.data import schema
from affectverse_ds.data.loader import LoaderError, list_shards, read_sizes

from tests.support import corpus
from tests.support.peak_memory import peaks

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, OMP_NUM_THREADS="1")
pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs")


def _shards_with_a_fifo(tmp_path: Path) -> tuple[Path, Path]:
    c = corpus.write_corpus_shards(tmp_path / "shards", n_good=4, kinds=[], n_shards=2)
    fifo = c.shards[1]
    fifo.unlink()
    os.mkfifo(fifo)
    return c.folder, fifo


def test_loader_refuses_a_fifo_shard_in_one_line(tmp_path):
    folder, fifo = _shards_with_a_fifo(tmp_path)
    with pytest.raises(LoaderError) as err:
        list_shards(folder, "meld", ["train"])
    assert str(err.value).startswith(f"shard {fifo}: refused: a FIFO") and "\n" not in str(err.value)


def test_fifo_sizes_json_is_refused(tmp_path):
    os.mkfifo(tmp_path / schema.SIZES_FILE)
    with pytest.raises(LoaderError, match="refused: a FIFO"):
        read_sizes(tmp_path)


def test_verify_shards_names_a_fifo_shard_and_checks_the_rest(tmp_path):
    folder, fifo = _shards_with_a_fifo(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "data_prep.verify_shards", str(folder)], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env=ENV)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out
    assert f"{fifo.name}: refused: a FIFO, not a regular file" in out


def test_a_fifo_label_file_is_refused(tmp_path):
    from affectverse_ds.safe_pickle import load_npz

    os.mkfifo(tmp_path / "label.npz")
    with pytest.raises(BoundedReadError, match="label.npz: refused: a FIFO"):
        load_npz(tmp_path / "label.npz")


_MEASURE = """
from affectverse_ds.safe_pickle import load_npz

def measure(path):
    try:
        load_npz(path)
        return "loaded"
    except OSError as err:
        return str(err)
"""


def test_inflating_npz_member_is_refused_before_inflating(tmp_path, capsys):
    ordinary = REPO / "tests" / "reference" / "merbench" / "meld-process" / "label.npz"
    bomb = corpus.npz_with_inflating_member(tmp_path / "label.npz", inflated_mb=512)
    assert bomb.stat().st_size < 4 << 20
    base, attack = peaks(_MEASURE, [str(ordinary), str(bomb)])
    assert base.outcome == "loaded"
    assert attack.outcome.startswith(f"{bomb}: member unused.npy inflates to ") and "\n" not in attack.outcome
    assert attack.peak_mb - base.peak_mb < 100, (base, attack)
    with capsys.disabled():
        print(f"\npeak RSS npz: ordinary {base.peak_mb:.0f} MB, 512 MB member {attack.peak_mb:.0f} MB")


# ----------------------------------------------------------------------------- a sparse tar member


SPARSE_MB = 512


def _shard_with_sparse_flac(tmp_path: Path) -> tuple[corpus.Corpus, str]:
    """One shard of 3 good samples whose first sample's ``.flac`` is replaced by a sparse file declaring 512 MB
    (written by GNU tar --sparse: a few KB in the shard, 512 MB once read)."""
    import shutil
    import tarfile

    if not shutil.which("tar"):
        pytest.skip("GNU tar writes the sparse member")
    c = corpus.write_corpus_shards(tmp_path / "shards", n_good=3, kinds=[], n_shards=1)
    shard = c.shards[0]
    with tarfile.open(shard) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "members", filter="data")
    victim = next(n for n in names if n.endswith(".flac"))
    with open(tmp_path / "members" / victim, "r+b") as f:
        f.truncate(0)
        f.write(b"fLaC")
        f.truncate(SPARSE_MB << 20)
    subprocess.run(["tar", "--sparse", "--format=gnu", "-cf", str(shard), "-C", str(tmp_path / "members"), *names],
                   check=True)
    with tarfile.open(shard) as tar:
        info = tar.getmember(victim)
    assert info.size == SPARSE_MB << 20 and shard.stat().st_size < 4 << 20
    return c, victim.split(".", 1)[0]


_MEASURE_SHARD = """
from data_prep.verify_shards import verify_dir

def measure(folder):
    return json.dumps(verify_dir(folder))
"""


def test_a_sparse_flac_member_is_refused_before_it_is_read(tmp_path, capsys):
    c, key = _shard_with_sparse_flac(tmp_path)
    (got,) = peaks(_MEASURE_SHARD, [str(c.folder)])
    problems = json.loads(got.outcome)
    flagged = [p for p in problems if p.startswith(f"{key}: ")]
    assert flagged == [f"{key}: member .flac declares {SPARSE_MB << 20} bytes, over the "
                       f"{schema.MAX_AUDIO_BYTES}-byte limit (not read)"], problems
    assert got.peak_mb < 450, got  # reading the member would take 512 MB more
    with capsys.disabled():
        print(f"\npeak RSS verify_shards with a {SPARSE_MB} MB sparse .flac: {got.peak_mb:.0f} MB")


def test_the_loader_skips_a_sparse_flac_sample_naming_it(tmp_path, caplog):
    from affectverse_ds.data.loader import Shard, SkipCounter
    from affectverse_ds.data.loader import decode_sample
    from affectverse_ds.data.tars import tar_samples

    c, key = _shard_with_sparse_flac(tmp_path)
    skips = SkipCounter()
    kept = []
    with caplog.at_level("WARNING", logger="affectverse_ds.data.loader"):
        for raw in tar_samples(handler=skips)(iter([{"url": str(Shard(str(c.shards[0]), 3).path)}])):
            try:
                kept.append(decode_sample(raw).meta["key"])
            except Exception as err:  # noqa: BLE001  the loader's handler would count it
                skips(err)
    assert sorted(kept + [key]) == sorted(c.good) and skips.count == 1  # nothing else lost
    assert any(f"{key}: member .flac declares" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- the scorer CLI


class _RunsCode:
    def __reduce__(self):
        return (print, ("adversarial pickle ran",))


def _score(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "affectverse_ds.eval.unibench", "score", "--benchmark", "meld", *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=ENV)


@pytest.mark.parametrize("which", ["labels", "predictions"])
def test_unibench_score_refuses_a_pickle_in_one_line_naming_the_file(which, tmp_path):
    import numpy as np

    labels = REPO / "tests" / "reference" / "merbench" / "meld-process" / "label.npz"
    poisoned = tmp_path / ("label.npz" if which == "labels" else "run-openset.npz")
    np.savez(poisoned, name2reason=np.array([_RunsCode()], dtype=object))
    preds = tmp_path / "preds.jsonl"
    preds.write_text("")
    proc = _score("--labels", str(poisoned if which == "labels" else labels),
                  "--predictions", str(poisoned if which == "predictions" else preds))
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and lines == [f"error: {poisoned}: member name2reason.npy: refusing to unpickle "
                                              f"global builtins.print"], proc.stderr[-2000:]
    assert "adversarial pickle ran" not in proc.stdout + proc.stderr


def test_unibench_score_names_a_garbage_wheel_workbook(tmp_path):
    import shutil

    from affectverse_ds.eval.wheel import PACKAGED_WHEEL_DIR

    wheels = tmp_path / "wheels"
    shutil.copytree(PACKAGED_WHEEL_DIR, wheels)
    (wheels / "wheel3.xlsx").write_bytes(os.urandom(5000))
    labels = REPO / "tests" / "reference" / "merbench" / "meld-process" / "label.npz"
    (tmp_path / "preds.jsonl").write_text("")
    proc = _score("--labels", str(labels), "--predictions", str(tmp_path / "preds.jsonl"), "--wheel-dir", str(wheels))
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and lines == [f"error: {wheels / 'wheel3.xlsx'}: not a readable .xlsx workbook "
                                              f"(BadZipFile: File is not a zip file)"], proc.stderr[-2000:]
