"""The adversarial corpus (issue #18) through every reader: no kind of bad input crashes anything, every
failure is one line, and every input is accounted for (accepted + rejected == input; skips counted and logged).

The corpus itself is ``tests/support/corpus.py``; the figures in README's "Reliability" section come
from this file (``python -m pytest tests/adversarial -m "slow or not slow" -q``).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from affectverse_ds.config import ConfigError, dump_config, load_config
from affectverse_ds.data import schema
from affectverse_ds.data.collator import SampleError
from affectverse_ds.data.loader import LoaderError, build_eval_loader, build_train_loader, decode_sample, read_sizes
from affectverse_ds.distributed import free_port
from affectverse_ds.tools.fixture_shards import sample_record
from affectverse_ds.tools.hostile_media import long_audio_clip

from tests.support import corpus
from tests.support.evaluation import make_checkpoint, tiny_eval_config
from tests.support.wheels import write_tiny_wheels
from tests.support.launch import launch_module

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SKIP_LOG = "skipping a corrupt sample"


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def _cfg(shard_dir, backbone, *extra, workers=0):
    return load_config(REPO / "launch" / "configs" / "tiny.yaml", [
        f"data.shard_dir={shard_dir}", f"backbone.path={backbone}", f"data.num_workers={workers}",
        "train.micro_batch=2", "data.shuffle_buffer=4", *extra])


@pytest.fixture(scope="module")
def train_corpus(tmp_path_factory) -> corpus.Corpus:
    return corpus.write_corpus_shards(tmp_path_factory.mktemp("adv_train"), split="train")


# ----------------------------------------------------------------------------- every kind, one sample at a time


@pytest.fixture(scope="module")
def encoders(tiny_backbone_dir, tokenizer, extractor):
    from affectverse_ds.data.collator import SampleEncoder

    data = _cfg("unused", tiny_backbone_dir).data
    return {s: SampleEncoder(tokenizer, extractor, data, s) for s in ("avt", "at")}


@pytest.mark.parametrize("kind", list(corpus.SAMPLE_KINDS))
def test_every_kind_is_one_skip_reason(kind, make_good, encoders):
    bad = corpus.SAMPLE_KINDS[kind][1](make_good())
    with pytest.raises(SampleError) as err:  # SampleError is what the loader's skip handler counts
        encoders["avt"](decode_sample(bad))  # the loader's two stages, with video
    assert "\n" not in str(err.value)
    if kind in corpus.FRAME_KINDS:  # the video is unusable, not the sample: audio + text still read
        decoded = decode_sample(bad)
        assert decoded.frames == [] and encoders["at"](decoded) is not None
    else:
        assert str(err.value).startswith(bad["__key__"])
    problems, sample = schema.check_sample(bad, strict=True)  # verify_shards' form of the same check
    assert problems and sample is None and all("\n" not in p for p in problems)


@pytest.fixture
def make_good():
    return lambda: sample_record("meld", "train", 0, seconds=1.0, frame_size=56)


def test_good_samples_pass_the_shared_check(make_good):
    decoded = decode_sample(make_good())
    assert decoded.audio.shape == (16000,) and len(decoded.frames) == 3


def test_long_flac_is_rejected_before_it_is_decoded(make_good, monkeypatch):
    """A 20 min FLAC in a 1 s sample: its header says so, and no audio frame is read."""
    import soundfile as sf

    reads = []
    monkeypatch.setattr(sf, "read", lambda *a, **k: reads.append(k) or (_ for _ in ()).throw(AssertionError))
    with pytest.raises(SampleError, match="holds 19200000 samples"):
        decode_sample(corpus.SAMPLE_KINDS["audio_hours"][1](make_good()))
    assert reads == []


# ----------------------------------------------------------------------------- the training loader


@pytest.mark.parametrize("workers", [0, 2])
def test_train_loader_skips_counts_and_logs_every_bad_sample(train_corpus, tiny_backbone_dir, tokenizer,
                                                             extractor, workers, caplog):
    cfg = _cfg(train_corpus.folder, tiny_backbone_dir, workers=workers)
    with caplog.at_level(logging.WARNING, logger="affectverse_ds.data.loader"):
        loader = build_train_loader(cfg, tokenizer, rank=0, world=1, epoch=0, extractor=extractor)
        batches = list(loader)
    assert len(batches) == len(loader) == train_corpus.total // 2  # the epoch ran to its end
    seen = {m["key"] for b in batches for m in b["meta"]}
    assert seen == set(train_corpus.good)  # only good samples, and every one of them
    assert loader.stats.skipped >= len(train_corpus.bad)  # each bad sample at least once (the stream cycles)
    if workers == 0:  # worker processes log to their own stderr, not to this caplog
        logged = " ".join(r.getMessage() for r in caplog.records)  # skip lines, and "video unusable" lines
        assert all(key in logged for key in train_corpus.bad)


def test_eval_loader_accounts_for_every_sample(tmp_path, tiny_backbone_dir, tokenizer, extractor, caplog):
    c = corpus.write_corpus_shards(tmp_path, split="test")
    cfg = _cfg(tmp_path, tiny_backbone_dir)
    with caplog.at_level(logging.WARNING, logger="affectverse_ds.data.loader"):
        loader = build_eval_loader(cfg, tokenizer, "meld", rank=0, world=1, extractor=extractor)
        batches = list(loader)
    read = [m["key"] for b in batches for m in b["meta"]]
    skipped = max(m["skipped"] for b in batches for m in b["meta"])
    assert sorted(read) == sorted(c.good)
    assert len(read) + skipped == c.total == loader.total_samples  # accepted + rejected == input
    skips = [r.getMessage() for r in caplog.records if SKIP_LOG in r.getMessage()]
    assert len(skips) == len(c.bad) and all("\n" not in m for m in skips)
    logged = " ".join(r.getMessage() for r in caplog.records)  # a bad frame's key is on its "video unusable" line
    assert all(key in logged for key in c.bad)


# ----------------------------------------------------------------------------- start-up checks (class 6)


@pytest.mark.parametrize("override, key", [
    ("train.save_every=0", "train.save_every"), ("data.num_workers=-1", "data.num_workers"),
    ("train.seed=-1", "train.seed"), ("data.frame_size=0", "data.frame_size"),
    ("train.log_every=0", "train.log_every"), ("data.shuffle_buffer=-3", "data.shuffle_buffer"),
])
def test_values_that_crashed_later_are_one_line_errors_at_start(override, key, tmp_path, capsys):
    with pytest.raises(ConfigError, match=key):
        load_config(REPO / "launch" / "configs" / "tiny.yaml", [override])
    launch = launch_module("train")
    rc = launch.main(["--ds", "ds_configs/zero2.json", "--config", "launch/configs/tiny.yaml", override,
                      f"train.out_dir={tmp_path}"])
    assert rc == 2 and key in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"a.tar": "many"}', b'{"a.tar": -1}',
                                     b"[" * 50000])
def test_malformed_sizes_json_is_one_line(tmp_path, content):
    (tmp_path / schema.SIZES_FILE).write_bytes(content)
    with pytest.raises(LoaderError) as err:
        read_sizes(tmp_path)
    assert "\n" not in str(err.value)


def test_garbage_tar_as_the_only_shard_is_one_line_at_start(tmp_path, tiny_backbone_dir, tokenizer, extractor):
    shard = tmp_path / "meld-train-000000.tar"
    shard.write_bytes(np.random.default_rng(0).bytes(20000))
    (tmp_path / schema.SIZES_FILE).write_text(json.dumps({shard.name: 5}))
    with pytest.raises(LoaderError, match="not a readable tar") as err:
        build_train_loader(_cfg(tmp_path, tiny_backbone_dir, workers=1), tokenizer, rank=0, world=1, epoch=0,
                           extractor=extractor)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("workers", [0, 1])
def test_shards_with_no_good_sample_end_with_one_line(tmp_path, tiny_backbone_dir, tokenizer, extractor, workers):
    """Every sample bad (a readable tar): the stream cannot feed a batch; one line, even from a worker."""
    corpus.write_corpus_shards(tmp_path, n_good=0, n_shards=1)
    loader = build_train_loader(_cfg(tmp_path, tiny_backbone_dir, workers=workers), tokenizer, rank=0, world=1,
                                epoch=0, extractor=extractor)
    with pytest.raises(LoaderError) as err:
        list(loader)
    assert "\n" not in str(err.value) and "corrupt samples in a row" in str(err.value)


# ----------------------------------------------------------------------------- verify_shards (class 7)


def test_verify_shards_lists_every_problem_one_line_each(tmp_path):
    c = corpus.write_corpus_shards(tmp_path, split="test", frame_size=schema.FRAME_SIZE, n_good=3)
    proc = subprocess.run([sys.executable, "-m", "data_prep.verify_shards", str(tmp_path)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stdout.splitlines()
    for key, kind in c.bad.items():
        assert any(line.startswith(key + ":") for line in lines), kind  # every bad sample, not just the first
    assert not any(line.startswith(key + ":") for key in c.good for line in lines)
    assert any("unexpected member .pkl" in line for line in lines)
    assert any("unexpected member .npy" in line for line in lines)
    assert "missing manifest.parquet" in lines


def test_verify_shards_survives_a_garbage_tar_and_bad_sizes(tmp_path):
    c = corpus.write_corpus_shards(tmp_path, split="test", frame_size=schema.FRAME_SIZE, n_good=2, kinds=[])
    (tmp_path / "meld-test-000009.tar").write_bytes(b"\x00garbage" * 300)
    sizes = json.loads((tmp_path / schema.SIZES_FILE).read_text())
    (tmp_path / schema.SIZES_FILE).write_text(json.dumps({**sizes, "meld-test-000009.tar": 1}))
    proc = subprocess.run([sys.executable, "-m", "data_prep.verify_shards", str(tmp_path)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert any(line.startswith("meld-test-000009.tar") for line in proc.stdout.splitlines())
    assert c.total == 2
    (tmp_path / schema.SIZES_FILE).write_text("{broken")
    proc = subprocess.run([sys.executable, "-m", "data_prep.verify_shards", str(tmp_path)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "sizes.json is not valid JSON" in proc.stdout and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- the builder (classes 7, 8, 9)


@pytest.fixture(scope="module")
def hostile_tree(tmp_path_factory):
    """MELD official layout with every media/label kind the fixture maker plants, plus a 2 s clip whose audio
    track runs 10 min (the builder's memory case; bench/hostile_memory.py measures it at 4 h)."""
    from data_prep.make_fixtures import applicable_injections, make_fixture

    kinds = applicable_injections("meld", "official")
    root = make_fixture("meld", "official", tmp_path_factory.mktemp("adv_raw") / "meld", n=len(kinds) + 2,
                        inject=kinds, split="test", seed=3)
    record = json.loads((root / "fixture.json").read_text())
    clean = [it["name"] for it in record["items"] if it["inject"] is None]
    target = next(root.rglob(f"{clean[-1].split('_', 1)[1]}.mp4"))  # test_dia7_utt0 -> dia7_utt0.mp4
    long_audio_clip(target, audio_seconds=600)
    return root, record, clean[-1]


def test_builder_cli_accounts_for_every_item(hostile_tree, tmp_path):
    root, record, long_audio = hostile_tree
    out = tmp_path / "shards"
    proc = subprocess.run([sys.executable, "-m", "data_prep.build_shards", "--benchmark", "meld", "--layout",
                           "official", "--root", str(root), "--split", "test", "--out", str(out), "--workers", "2",
                           "--no-progress"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = _one_line(proc.stdout)
    rows = pq.read_table(out / schema.MANIFEST_FILE).to_pylist()
    assert len(rows) == len(record["items"])  # accepted + rejected == input
    accepted = [r for r in rows if r["status"] == "accepted"]
    rejected = [r for r in rows if r["status"] == "rejected"]
    assert f"{len(rows)} items, {len(accepted)} accepted, {len(rejected)} rejected" in summary
    assert all(r["reason"] and "\n" not in r["reason"] for r in rejected)
    long_row = next(r for r in rows if r["name"] == long_audio)
    assert long_row["status"] == "accepted" and abs(long_row["audio_seconds"] - long_row["duration"]) < 0.01
    assert long_row["duration"] < 3
    assert sum(json.loads((out / schema.SIZES_FILE).read_text()).values()) == len(accepted)


def test_long_audio_track_is_not_decoded_past_the_clip(tmp_path, monkeypatch):
    """Class 8: a 2 s video with 10 min of audio: the audio decoded stops near the clip's end + interleave slack
    (not 10 min), so memory per item is bounded whatever the track length."""
    from affectverse_ds.data import media

    clip = long_audio_clip(tmp_path / "a.mp4", audio_seconds=600)
    pushed = []
    original = media._AudioTrack.push
    monkeypatch.setattr(media._AudioTrack, "push", lambda self, frame: (pushed.append(frame.samples),
                                                                        original(self, frame))[1])
    decoded = media.decode_clip(clip)
    assert abs(decoded.duration - 2.0) < 0.2 and len(decoded.audio) == media.audio_length(decoded.duration)
    limit = media.DecodeConfig().max_duration + 1  # the longest clip the builder keeps, plus one audio frame
    assert sum(pushed) / 16000 < limit, sum(pushed) / 16000


@pytest.mark.parametrize("case", ["missing_label_file", "refused_pickle", "unwritable_out"])
def test_builder_cli_fatal_errors_are_one_line(case, tmp_path):
    root = tmp_path / "root"
    (root / "meld-process").mkdir(parents=True)
    layout, out = "official", tmp_path / "out"
    if case == "refused_pickle":
        layout = "unibench"
        np.savez(root / "meld-process" / "label.npz",
                 test_corpus=np.array({"a": {"emo": 0, "x": corpus._RunsCode()}}, dtype=object))
    elif case == "unwritable_out":
        out.write_text("a file where the output folder should be")
    proc = subprocess.run([sys.executable, "-m", "data_prep.build_shards", "--benchmark", "meld", "--layout", layout,
                           "--root", str(root), "--split", "test", "--out", str(out), "--no-progress"], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=300)
    line = _one_line(proc.stderr)
    if case == "unwritable_out":  # caught by the start-up checks, before any work: their exit status and prefix
        assert proc.returncode == 2 and line.startswith("preflight: ") and "not writable" in line, proc.stderr
    else:
        assert proc.returncode == 1 and line.startswith("error: "), proc.stderr
    assert "adversarial pickle ran" not in proc.stdout + proc.stderr


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    kids = [int(p) for p in out]
    return kids + [g for k in kids for g in _descendants(k)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")  # a zombie is gone


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pgrep and /proc")
def test_killing_the_builder_parent_ends_its_workers(tmp_path):
    """Class 9: SIGKILL to the builder alone (no process group kill) leaves no decoder running."""
    from data_prep.make_fixtures import make_fixture

    root = make_fixture("meld", "official", tmp_path / "raw", n=40, split="test", seed=5)
    workers: list[int] = []
    proc = subprocess.Popen([sys.executable, "-m", "data_prep.build_shards", "--benchmark", "meld", "--layout",
                             "official", "--root", str(root), "--split", "test", "--out", str(tmp_path / "out"),
                             "--workers", "2", "--no-progress"], cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(workers) < 2 and proc.poll() is None:
            time.sleep(0.2)
            workers = _descendants(proc.pid)
        assert len(workers) >= 2, "the pool never started"
        os.kill(proc.pid, signal.SIGKILL)  # the parent alone
        proc.wait(timeout=30)
        deadline = time.time() + 20
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.2)
        left = [w for w in workers if _alive(w)]
        assert not left, f"workers {left} outlived their parent"
    finally:
        for w in set(workers) | set(_descendants(proc.pid)):  # never leave a process behind, fixed or not
            try:
                os.kill(w, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()


# ----------------------------------------------------------------------------- the evaluator CLI


# Every kind, the three that once crashed the evaluator's gold reader included (deep JSON raised
# RecursionError; emo 5, or a null emo beside val=Infinity, reached the scorer): eval.gold now runs the
# shard contract's validate_meta on each sample, as the loader does.
def test_evaluate_cli_on_a_hostile_test_split(tmp_path, tiny_backbone_dir, capsys):
    kinds = sorted(corpus.SAMPLE_KINDS)
    shards = tmp_path / "shards"
    c = corpus.write_corpus_shards(shards, split="test", n_good=4, kinds=kinds)
    reference = tmp_path / "reference"
    write_tiny_wheels(reference / "emotion_wheel")
    cfg = tiny_eval_config(tiny_backbone_dir, shards, reference)
    ckpt = make_checkpoint(cfg, tmp_path / "ckpt" / "step_000001", 1)
    config = dump_config(cfg, tmp_path / "eval.yaml")
    launch = launch_module("evaluate")
    rc = launch.main(["--config", str(config), "--benchmarks", "meld", "--modality", "avt", "--keep-ratio", "1.0",
                      "--mode", "rank", "--out", str(tmp_path / "results"), "--no-probe",
                      "--checkpoint", str(ckpt / "export")])
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err, err
    run = json.loads((tmp_path / "results" / "meld.json").read_text())["runs"][0]
    counts = run["counts"]
    assert counts["evaluated"] == len(c.good)
    assert counts["loader_skipped"] == len(c.bad)
    assert counts["evaluated"] + counts["loader_skipped"] == c.total  # nothing lost


# ----------------------------------------------------------------------------- training on 2 ranks (slow)


@pytest.mark.slow
def test_two_rank_training_runs_through_the_corpus_and_logs_the_skips(train_corpus, tiny_backbone_dir, tmp_path):
    """DeepSpeed's launcher, 2 CPU ranks, one loader worker each, every hostile kind in the shards: the run
    finishes, and the skips reach metrics.jsonl (summed over ranks) as well as the workers' log lines."""
    out = tmp_path / "run"
    cmd = [str(VENV_BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), "launch/train.py",
           "--ds", "ds_configs/zero2.json", "--config", "launch/configs/tiny.yaml",
           f"data.shard_dir={train_corpus.folder}", f"backbone.path={tiny_backbone_dir}", f"train.out_dir={out}",
           "train.max_steps=4", "train.save_every=4", "train.log_every=1", "data.num_workers=1",
           "train.micro_batch=2", "train.grad_accum=1", "data.shuffle_buffer=4"]
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT, timeout=600)
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    skipped = [r["data/skipped_samples"] for r in rows]
    assert skipped == sorted(skipped) and skipped[-1] >= 1  # counted, never decreasing within the epoch
    assert {key for key in train_corpus.bad if key in text} == set(train_corpus.bad)  # each kind has its line
    assert text.count(SKIP_LOG) >= skipped[-1]  # and each counted skip (bad samples recur as the stream cycles)
    assert "adversarial pickle ran" not in text
