"""A run or an evaluation never says something false (issue #26, round 2): a shard ``sizes.json`` lists but the
folder lacks, a test sample key present in two shards, an interrupted checkpoint save, a ``--max-batches`` that
evaluates nothing, and a checkpoint path holding '=' are each refused in one line or recorded, before any work
that would lose or misreport samples."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from affectverse_ds.config import dump_config, load_config
from affectverse_ds.data import schema
from affectverse_ds.data.loader import LoaderError, list_shards, train_plan

from tests.support import corpus
from tests.support.evaluation import make_checkpoint, tiny_eval_config
from tests.support.wheels import write_tiny_wheels
from tests.support.launch import launch_module

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "launch" / "configs" / "tiny.yaml"


def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


# ----------------------------------------------------------------------------- a listed shard deleted


def test_a_deleted_listed_shard_is_refused_at_start_naming_it(tmp_path):
    c = corpus.write_corpus_shards(tmp_path / "shards", n_good=6, kinds=[], n_shards=3)
    c.shards[1].unlink()
    with pytest.raises(LoaderError) as err:
        list_shards(c.folder, "meld", ["train"])
    message = _one_line(err)
    assert f"lists 1 shard(s) missing from the folder ({c.shards[1].name})" in message
    cfg = load_config(TINY, [f"data.shard_dir={c.folder}", "data.train_benchmarks={meld: 1.0}",
                             "data.num_workers=0"])
    with pytest.raises(LoaderError, match=c.shards[1].name):  # the epoch plan, before any step
        train_plan(cfg, 1)
    assert json.loads((c.folder / schema.SIZES_FILE).read_text())[c.shards[1].name] > 0  # nothing rewritten


# ----------------------------------------------------------------------------- the evaluator CLI


@pytest.fixture
def eval_setup(tmp_path, tiny_backbone_dir):
    """Test shards, tiny wheels, a config file and a checkpoint export holding only its config (enough for
    everything the evaluator checks before it builds a model)."""
    c = corpus.write_corpus_shards(tmp_path / "shards", split="test", n_good=4, kinds=[], n_shards=2)
    write_tiny_wheels(tmp_path / "reference" / "emotion_wheel")
    cfg = tiny_eval_config(tiny_backbone_dir, c.folder, tmp_path / "reference")
    export = tmp_path / "ckpt" / "step_000001" / "export"
    export.mkdir(parents=True)
    dump_config(cfg, export / "config.yaml")
    return c, cfg, dump_config(cfg, tmp_path / "eval.yaml"), export.parent


def _evaluate(config: Path, ckpt: Path, out: Path, *extra: str) -> int:
    launch = launch_module("evaluate")
    return launch.main(["--config", str(config), "--benchmarks", "meld", "--modality", "avt", "--keep-ratio", "1.0",
                        "--mode", "rank", "--out", str(out), "--no-probe", "--checkpoint", str(ckpt), *extra])


def test_a_test_sample_key_in_two_shards_is_refused_naming_both(eval_setup, tmp_path, capsys):
    c, _cfg, config, ckpt = eval_setup
    copy = c.folder / schema.SHARD_PATTERN.format(benchmark="meld", split="test", index=2)
    shutil.copyfile(c.shards[0], copy)  # the same clips again, counted in sizes.json: the split built twice
    sizes = json.loads((c.folder / schema.SIZES_FILE).read_text())
    sizes[copy.name] = sizes[c.shards[0].name]
    (c.folder / schema.SIZES_FILE).write_text(json.dumps(sizes))
    capsys.readouterr()
    rc = _evaluate(config, ckpt, tmp_path / "results")
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1, lines
    assert f"is in both {c.shards[0].name} and {copy.name}" in lines[0] and "verify_shards" in lines[0]
    assert not (tmp_path / "results" / "meld.json").exists()  # nothing scored twice


@pytest.mark.parametrize("value", ["0", "-1"])
def test_max_batches_that_evaluates_nothing_is_refused_at_parse_time(value, eval_setup, tmp_path, capsys):
    _c, _cfg, config, ckpt = eval_setup
    with pytest.raises(SystemExit) as done:
        _evaluate(config, ckpt, tmp_path / "results", "--max-batches", value)
    assert done.value.code == 2
    assert f"--max-batches: must be a positive number of batches, not {value}" in capsys.readouterr().err
    from affectverse_ds.eval.inference import EvalPlan

    with pytest.raises(ValueError, match="max_batches must be a positive"):  # the library refuses it too
        EvalPlan([str(ckpt)], max_batches=int(value))


def test_samples_left_out_by_max_batches_are_not_reported_as_unreadable(tmp_path, tiny_backbone_dir, capsys):
    c = corpus.write_corpus_shards(tmp_path / "shards", split="test", n_good=4, kinds=[], n_shards=1)
    write_tiny_wheels(tmp_path / "reference" / "emotion_wheel")
    cfg = tiny_eval_config(tiny_backbone_dir, c.folder, tmp_path / "reference")  # batches of 2
    ckpt = make_checkpoint(cfg, tmp_path / "ckpt" / "step_000001", 1)
    capsys.readouterr()
    assert _evaluate(dump_config(cfg, tmp_path / "eval.yaml"), ckpt / "export", tmp_path / "results",
                     "--max-batches", "1") == 0
    counts = json.loads((tmp_path / "results" / "meld.json").read_text())["runs"][0]["counts"]
    assert (counts["evaluated"], counts["left_out_by_max_batches"], counts["media_failed"]) == (2, 2, 0)
    assert "could not be read" not in (tmp_path / "results" / "summary.md").read_text()


def test_a_checkpoint_path_holding_an_equals_sign_is_a_checkpoint(tmp_path):
    launch = launch_module("evaluate")
    ckpt = tmp_path / "runs" / "lr=1e-4" / "step_000001"
    dotted = tmp_path / "sweep.lr=2"  # 'section.key=value'-shaped, but a folder that exists
    ckpt.mkdir(parents=True)
    dotted.mkdir()
    args = launch.parse_args(["--config", "c.yaml", "--checkpoint", str(ckpt), str(dotted), "data.num_workers=0"])
    assert args.checkpoint == [str(ckpt), str(dotted)] and args.overrides == ["data.num_workers=0"]


def test_an_interrupted_save_is_evaluated_with_a_warning_and_recorded(tmp_path, tiny_backbone_dir, capsys):
    from affectverse_ds.model.export import resolve_checkpoint

    c = corpus.write_corpus_shards(tmp_path / "shards", split="test", n_good=2, kinds=[], n_shards=1)
    write_tiny_wheels(tmp_path / "reference" / "emotion_wheel")
    cfg = tiny_eval_config(tiny_backbone_dir, c.folder, tmp_path / "reference")
    ckpt = make_checkpoint(cfg, tmp_path / "ckpt" / "step_000001", 1)  # no COMPLETE: interrupted
    why = f"{ckpt}: no COMPLETE marker (an interrupted save?)"
    assert resolve_checkpoint(ckpt).unverified.startswith(why)
    (tmp_path / "done" / "step_000001").mkdir(parents=True)
    shutil.copytree(ckpt / "export", tmp_path / "done" / "step_000001" / "export")
    (tmp_path / "done" / "step_000001" / "COMPLETE").write_text("1\n")
    assert resolve_checkpoint(tmp_path / "done" / "step_000001").unverified == ""
    capsys.readouterr()
    rc = _evaluate(dump_config(cfg, tmp_path / "eval.yaml"), ckpt, tmp_path / "results")
    out = capsys.readouterr()
    assert rc == 0 and f"[eval] warning: {why}" in out.out + out.err
    result = json.loads((tmp_path / "results" / "meld.json").read_text())
    assert result["unverified_checkpoints"]["step_000001"].startswith(why)
    assert why in (tmp_path / "results" / "summary.md").read_text()
    assert result["runs"][0]["counts"]["evaluated"] == len(c.good)  # every sample still evaluated


# ----------------------------------------------------------------------------- a JPEG whose body is cut short


def _body_cut(record: dict) -> dict:
    """The first frame keeps its whole header (size, tables) and loses the second half of its scan data."""
    frame = sorted(k for k in record if schema.FRAME_EXT_RE.match(k))[0]
    data = record[frame]
    return {**record, frame: data[:len(data) // 2]}


def test_a_jpeg_cut_short_fails_the_strict_check_and_its_skip_names_the_key(tmp_path, monkeypatch, tokenizer, caplog):
    from affectverse_ds.data.loader import build_eval_loader
    from data_prep.verify_shards import verify_dir

    monkeypatch.setitem(corpus.SAMPLE_KINDS, "jpeg_body_cut", ("JPEG body cut in half", _body_cut))
    c = corpus.write_corpus_shards(tmp_path / "shards", split="test", n_good=3, kinds=["jpeg_body_cut"],
                                   n_shards=1, frame_size=schema.FRAME_SIZE)
    (bad,) = c.bad
    problems = [p for p in verify_dir(c.folder) if not p.startswith("missing manifest")]
    assert len(problems) == 1 and problems[0].startswith(
        f"{bad}: f000.jpg is not a readable image: OSError: image file is truncated"), problems
    cfg = load_config(TINY, [f"data.shard_dir={c.folder}", "data.num_workers=0",
                             f"backbone.path={tokenizer.name_or_path}"])
    loader = build_eval_loader(cfg, tokenizer, "meld", rank=0, world=1, batch_size=2)
    with caplog.at_level("WARNING", logger="affectverse_ds.data.loader"):
        names = [m["name"] for batch in loader for m in batch["meta"]]
    assert sorted(names) == sorted(c.good.values())  # the three good ones, nothing else lost
    skips = [r.getMessage() for r in caplog.records if "skipping a corrupt sample" in r.getMessage()]
    assert len(skips) == 1 and f"{bad}: OSError: image file is truncated" in skips[0], skips


# ----------------------------------------------------------------------------- one bad raw entry, not the split


def _meld_fixture(tmp_path: Path, n: int = 4) -> tuple[Path, str]:
    from data_prep.make_fixtures import make_fixture

    root = make_fixture("meld", "unibench", tmp_path / "raw", n=n, inject=[])
    return root, json.loads((root / "fixture.json").read_text())["split"]


def _build(root: Path, split: str, out: Path) -> dict[str, tuple[str, str]]:
    import pyarrow.parquet as pq

    from data_prep.build_shards import main as build_main

    assert build_main(["--benchmark", "meld", "--layout", "unibench", "--root", str(root), "--split", split,
                       "--out", str(out), "--no-progress"]) == 0
    return {r["name"]: (r["status"], r["reason"] or "") for r in pq.read_table(out / schema.MANIFEST_FILE).to_pylist()}


def test_a_symlink_loop_in_subvideo_rejects_its_item_only(tmp_path):
    root, split = _meld_fixture(tmp_path)
    clips = sorted((root / "meld-process" / "subvideo").iterdir())
    clips[0].unlink()
    clips[0].symlink_to(clips[0].name)  # points at itself: ELOOP on every stat
    rows = _build(root, split, tmp_path / "shards")
    assert rows.pop(clips[0].stem) == (
        "rejected", f"media path meld-process/subvideo/{clips[0].name} cannot be resolved (a symlink loop)")
    assert len(rows) == len(clips) - 1 and all(status == "accepted" for status, _ in rows.values())


def test_an_oversized_transcript_field_rejects_its_item_only_naming_the_file(tmp_path):
    root, split = _meld_fixture(tmp_path)
    transcript = root / "meld-process" / "transcription-engchi-polish.csv"
    lines = transcript.read_text().splitlines()
    name = lines[2].split(",")[0]
    lines[2] = f'{name},x,"{"a" * (1 << 19)}"'  # over the csv module's 128 KB field limit (200 MB: test_hostile_csv)
    transcript.write_text("\n".join(lines) + "\n")
    rows = _build(root, split, tmp_path / "shards")
    status, reason = rows.pop(name)
    assert status == "rejected" and reason.startswith(
        f"transcript row unreadable: {transcript.name} line 3: field larger than field limit"), reason
    assert len(rows) == len(lines) - 2 and all(status == "accepted" for status, _ in rows.values())


@pytest.mark.parametrize("flag, value, says", [("--max-duration", "-5", "must be a number of seconds in (0, 333]"),
                                               ("--max-duration", "nan", "must be a number of seconds in (0, 333]"),
                                               ("--workers", "-3", "must be at least 1, not -3"),
                                               ("--shard-max-count", "0", "must be at least 1, not 0")])
def test_builder_ranges_are_refused_at_parse_time(flag, value, says, tmp_path, capsys):
    from data_prep.build_shards import main as build_main

    with pytest.raises(SystemExit) as done:
        build_main(["--benchmark", "meld", "--layout", "unibench", "--root", str(tmp_path), "--split", "test",
                    "--out", str(tmp_path / "out"), flag, value])
    assert done.value.code == 2 and f"argument {flag}: {says}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written
