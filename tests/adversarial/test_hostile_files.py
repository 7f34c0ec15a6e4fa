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

sys.path.insert(0, str(Path(__file__).parent))
import corpus  # noqa: E402

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
import json, resource, sys
from affectverse_ds.safe_pickle import load_npz
rows = []
for p in sys.argv[1:]:
    try:
        load_npz(p)
        outcome = "loaded"
    except OSError as err:
        outcome = str(err)
    rows.append({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "outcome": outcome})
print(json.dumps(rows))
"""


def test_inflating_npz_member_is_refused_before_inflating(tmp_path, capsys):
    ordinary = REPO / "tests" / "reference" / "merbench" / "meld-process" / "label.npz"
    bomb = corpus.npz_with_inflating_member(tmp_path / "label.npz", inflated_mb=512)
    assert bomb.stat().st_size < 4 << 20
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(ordinary), str(bomb)], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    base, attack = json.loads(proc.stdout.strip().splitlines()[-1])
    assert base["outcome"] == "loaded"
    assert attack["outcome"].startswith(f"{bomb}: member unused.npy inflates to ") and "\n" not in attack["outcome"]
    assert attack["maxrss_mb"] - base["maxrss_mb"] < 100, (base, attack)
    with capsys.disabled():
        print(f"\npeak RSS npz: ordinary {base['maxrss_mb']:.0f} MB, 512 MB member {attack['maxrss_mb']:.0f} MB")
