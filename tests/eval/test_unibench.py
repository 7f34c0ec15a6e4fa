"""The scorer end to end: AffectGPT's published per-epoch numbers, and hand-checked small cases."""
from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from affectverse_ds.eval import unibench
from affectverse_ds.eval.predictions import (
    Prediction, epoch_of, prediction_files, read_predictions, write_predictions,
)

REPO = Path(__file__).resolve().parents[2]

# data/README.md: AffectGPT's A+V+T row, per epoch 30..60
MER2023_HIT = {30: 72.55, 35: 76.79, 40: 73.44, 45: 74.64, 50: 78.54, 55: 75.70, 60: 73.69}
CMUMOSI_WF1 = {30: 81.21, 35: 78.48, 40: 81.30, 45: 80.74, 50: 79.85, 55: 79.53, 60: 78.30}


def run_cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = unibench.main(argv)
    return code, out.getvalue()


def score_args(benchmark, labels, predictions, wheel_dir, *extra) -> list[str]:
    return ["score", "--benchmark", benchmark, "--labels", str(labels), "--predictions", str(predictions),
            "--wheel-dir", str(wheel_dir), *extra]


# ----------------------------------------------------------------------------- reproduction of the published numbers

def _json_by_epoch(reference, benchmark, label_file, outputs) -> dict[int, dict]:
    labels, preds = reference(f"merbench/{label_file}"), reference(f"affectgpt_outputs/{outputs}")
    code, out = run_cli(score_args(benchmark, labels, preds, reference("emotion_wheel"), "--json"))
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    return {row["epoch"]: row for row in rows}


@pytest.fixture(scope="module")
def mer2023_rows(reference):
    return _json_by_epoch(reference, "mer2023", "mer2023-dataset-process/label-6way.npz", "mer2023")


@pytest.fixture(scope="module")
def cmumosi_rows(reference):
    return _json_by_epoch(reference, "cmumosi", "cmumosi-process/label.npz", "cmumosi")


@pytest.mark.parametrize("epoch, expected", sorted(MER2023_HIT.items()))
def test_mer2023_hit_rate_per_epoch(mer2023_rows, epoch, expected):
    row = mer2023_rows[epoch]
    assert row["metric"] == "hit"
    assert round(row["main"], 2) == expected
    assert (row["scored"], row["skipped"], row["missing"], row["duplicates"]) == (323, 88, 0, [])


@pytest.mark.parametrize("epoch, expected", sorted(CMUMOSI_WF1.items()))
def test_cmumosi_wf1_nonzero_per_epoch(cmumosi_rows, epoch, expected):
    row = cmumosi_rows[epoch]
    assert row["metric"] == "wf1_nonzero"
    assert row["file"].endswith("-openset-sentiment.npz")
    assert round(row["main"], 2) == expected
    assert (row["scored"], row["skipped"], row["missing"]) == (656, 30, 0)


def test_cmumosi_acc2_at_epoch_40(cmumosi_rows):
    assert round(cmumosi_rows[40]["secondary"]["acc2"], 2) == 81.25


@pytest.mark.parametrize("rows_fixture, best_epoch", [("mer2023_rows", 50), ("cmumosi_rows", 40)])
def test_best_of_n_is_labelled(request, rows_fixture, best_epoch):
    rows = request.getfixturevalue(rows_fixture)
    assert [e for e, r in rows.items() if r["is_best"]] == [best_epoch]
    assert {r["best_of"] for r in rows.values()} == {7}


def test_text_output_lists_every_epoch_and_the_best(reference):
    labels = reference("merbench/mer2023-dataset-process/label-6way.npz")
    code, out = run_cli(score_args("mer2023", labels, reference("affectgpt_outputs/mer2023"),
                                   reference("emotion_wheel")))
    assert code == 0
    assert all(f"hit {v:.2f}" in out for v in MER2023_HIT.values())
    assert "best-of-7 (selected per benchmark), epoch 50: hit 78.54" in out
    assert "fixed checkpoint (last file), epoch 60: hit 73.69" in out


# ----------------------------------------------------------------------------- small hand-checked cases

MER_LABELS = {
    "s1": {"emo": "happy", "val": 1.0}, "s2": {"emo": "sad", "val": -1.0}, "s3": {"emo": "angry", "val": -1.0},
    "s4": {"emo": "neutral", "val": 0.0}, "s5": {"emo": "surprise", "val": 0.0}, "s6": {"emo": "worried", "val": -1.0},
}


@pytest.fixture
def mer_label_file(tmp_path, label_npz):
    return label_npz(tmp_path / "mer2023-dataset-process" / "label-6way.npz", "test1_corpus", MER_LABELS)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_discrete_edge_cases(tmp_path, mer_label_file, tiny_wheel_dir):
    preds = _write_jsonl(tmp_path / "preds.jsonl", [
        {"name": "s1", "answer": "The character's emotional state is happy."},  # hit
        {"name": "s2", "items": []},  # empty prediction: miss
        {"name": "s3", "items": ["angry"]},
        {"name": "s3", "answer": "She is not angry."},  # duplicate: the last entry (negated) is kept
        {"name": "s4", "items": ["neutral"]},
        {"name": "s5", "items": ["surprise"]},
        {"name": "zz", "items": ["happy"]},  # not in the GT
    ])  # s6 has no prediction: scored as empty
    code, out = run_cli(score_args("mer2023", mer_label_file, preds, tiny_wheel_dir, "--json"))
    assert code == 0
    row = json.loads(out)
    # wheels 1, 2, 4, 5 score s1 s2 s3 s6 (1 hit of 4); wheel 3 maps only s1 s2 (1 of 2)
    assert row["per_wheel"] == pytest.approx([25.0, 25.0, 50.0, 25.0, 25.0])
    assert row["main"] == pytest.approx(30.0)
    # neutral and the unmapped 'surprise' are skipped on every wheel
    assert (row["scored"], row["skipped"], row["missing"], row["extra"]) == (4, 2, 1, 1)
    assert row["duplicates"] == ["s3"]
    # closed-set reading: s1 happy, s4 neutral, s5 surprise right; s2 s3 s6 wrong
    assert row["conventional"]["acc_all"] == pytest.approx(50.0)


def test_duplicates_are_printed_in_text_mode(tmp_path, mer_label_file, tiny_wheel_dir):
    preds = _write_jsonl(tmp_path / "p.jsonl", [{"name": "s1", "items": []}, {"name": "s1", "items": ["happy"]}])
    code, out = run_cli(score_args("mer2023", mer_label_file, preds, tiny_wheel_dir))
    assert code == 0
    assert "duplicates 1" in out and "duplicate names (last entry kept): s1" in out


def test_all_neutral_gt_scores_nothing(tmp_path, tiny_wheel_dir, label_npz):
    labels = label_npz(tmp_path / "mer2023-dataset-process" / "label-6way.npz", "test1_corpus",
                             {"a": {"emo": "neutral", "val": 0.0}, "b": {"emo": "neutral", "val": 0.0}})
    preds = _write_jsonl(tmp_path / "p.jsonl", [{"name": "a", "items": ["happy"]}])
    code, out = run_cli(score_args("mer2023", labels, preds, tiny_wheel_dir, "--json"))
    row = json.loads(out)
    assert code == 0 and row["main"] is None
    assert (row["scored"], row["skipped"], row["missing"]) == (0, 2, 1)


def test_sentiment_directory_prefers_sentiment_files_and_labels_best(tmp_path, tiny_wheel_dir, label_npz):
    labels = label_npz(tmp_path / "cmumosi-process" / "label.npz", "test_corpus", {
        "a": {"emo": 0, "val": 1.5}, "b": {"emo": 0, "val": -2.0}, "c": {"emo": 0, "val": 0.0},
        "d": {"emo": 0, "val": 0.4}})
    out_dir = tmp_path / "outputs"
    out_dir.mkdir()
    names = np.array(["a", "b", "c", "d"])
    np.savez(out_dir / "checkpoint_000010_loss_1.0-openset-sentiment.npz", filenames=names,
             fileitems=np.array(["Positive", "mixed", "negative", "neutral"]))
    np.savez(out_dir / "checkpoint_000020_loss_0.9-openset-sentiment.npz", filenames=names,
             fileitems=np.array(["positive", "negative", "negative", "positive"]))
    np.savez(out_dir / "checkpoint_000020_loss_0.9-openset.npz", filenames=names,
             fileitems=np.array(["[sad]"] * 4))  # ignored: sentiment files exist
    code, out = run_cli(score_args("cmumosi", labels, out_dir, tiny_wheel_dir, "--json"))
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["epoch"] for r in rows] == [10, 20]
    # epoch 10, GT != 0 only: gt>0 T F T, pred>0 T F F ('mixed' and 'neutral' read as not positive)
    assert rows[0]["main"] == pytest.approx(100 * 2 / 3)
    assert rows[0]["secondary"]["acc2"] == pytest.approx(100 * 2 / 3)
    assert (rows[0]["scored"], rows[0]["skipped"]) == (3, 1)
    assert rows[1]["main"] == pytest.approx(100.0)
    assert [r["is_best"] for r in rows] == [False, True] and rows[0]["best_of"] == 2


def test_sentiment_from_free_text_and_scores(tmp_path, tiny_wheel_dir, label_npz):
    labels = label_npz(tmp_path / "cmumosi-process" / "label.npz", "test_corpus", {
        "a": {"emo": 0, "val": 2.0}, "b": {"emo": 0, "val": -1.0}})
    preds = _write_jsonl(tmp_path / "p.jsonl", [
        {"name": "a", "answer": "The sentiment is positive.", "score": 1.0},
        {"name": "b", "answer": "She is sad."},
    ])
    code, out = run_cli(score_args("cmumosi", labels, preds, tiny_wheel_dir, "--json"))
    row = json.loads(out)
    assert code == 0 and row["main"] == pytest.approx(100.0)
    # MAE uses the given score for a and the polarity (-1) for b
    assert row["conventional"]["mae"] == pytest.approx((1.0 + 0.0) / 2)


def test_openset_set_scores(tmp_path, tiny_wheel_dir):
    process = tmp_path / "ovmerd-process"
    process.mkdir()
    (process / "ovlabel.csv").write_text('name,openset\nr1,"[happy, sad]"\nr2,[calm]\nr3,[]\n', encoding="utf-8")
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps({"r1": ["happiness"], "r2": {"items": ["fear"]}}), encoding="utf-8")
    code, out = run_cli(score_args("ovmerd", process / "ovlabel.csv", preds, tiny_wheel_dir, "--json"))
    row = json.loads(out)
    assert code == 0 and row["metric"] == "ov_f"
    # wheel 1: P (1 + 1)/2, R (1/2 + 1)/2; wheels 2-5: only r1 maps, P 1, R 1/2
    f1, f_other = 2 * 0.75 / 1.75, 2 * 0.5 / 1.5
    assert row["per_wheel"] == pytest.approx([100 * f1] + [100 * f_other] * 4)
    assert row["main"] == pytest.approx(100 * (f1 + 4 * f_other) / 5)
    assert row["secondary"] == pytest.approx({"p": 100.0, "r": 100 * (0.75 + 4 * 0.5) / 5})
    assert (row["scored"], row["skipped"], row["rejected_labels"]) == (2, 0, 1)


@pytest.mark.parametrize("change, message", [
    ({"labels": "missing.npz"}, "label file not found"),
    ({"benchmark": "nosuch"}, "unknown benchmark"),
    ({"predictions": "missing.jsonl"}, "predictions file not found"),
])
def test_cli_errors_exit_2(tmp_path, mer_label_file, tiny_wheel_dir, capsys, change, message):
    args = {"benchmark": "mer2023", "labels": mer_label_file, "predictions": _write_jsonl(tmp_path / "p.jsonl", [])}
    args.update({k: (tmp_path / v if k != "benchmark" else v) for k, v in change.items()})
    assert unibench.main(score_args(args["benchmark"], args["labels"], args["predictions"], tiny_wheel_dir)) == 2
    assert message in capsys.readouterr().err


def test_module_entry_point(tmp_path, mer_label_file, tiny_wheel_dir):
    preds = _write_jsonl(tmp_path / "p.jsonl", [{"name": "s1", "items": ["happy"]}])
    cmd = [sys.executable, "-m", "affectverse_ds.eval.unibench", *score_args("mer2023", mer_label_file, preds,
                                                                             tiny_wheel_dir, "--json")]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["missing"] == 5


# ----------------------------------------------------------------------------- prediction files

def test_prediction_file_formats(tmp_path):
    as_dict = tmp_path / "d.json"
    as_dict.write_text(json.dumps({"x": "She is sad.", "y": ["Happy", " "], "z": {"sentiment": "Negative"}}))
    read = read_predictions(as_dict).entries
    assert read["x"] == Prediction(text="She is sad.")
    assert read["y"] == Prediction(items=("happy",))
    assert read["z"] == Prediction(sentiment="negative")
    as_list = tmp_path / "l.json"
    as_list.write_text(json.dumps([{"name": "x", "items": ["a"]}, {"name": "x", "items": ["b"]}]))
    listed = read_predictions(as_list)
    assert listed.entries["x"].items == ("b",) and listed.duplicates == ["x"]


def test_write_then_read_roundtrip(tmp_path):
    preds = {"a": Prediction(text="ok", score=0.5), "b": Prediction(items=("sad",), sentiment="negative")}
    assert read_predictions(write_predictions(tmp_path / "p.jsonl", preds)).entries == preds


def test_affectgpt_npz_items_are_parsed(tmp_path):
    path = tmp_path / "checkpoint_000030_loss_0.6-openset.npz"
    np.savez(path, filenames=np.array(["a", "b", "a"]), fileitems=np.array(["[Concern, 'worry']", "[]", "[joy]"]))
    read = read_predictions(path)
    assert read.entries == {"a": Prediction(items=("joy",)), "b": Prediction(items=())}
    assert read.duplicates == ["a"]


@pytest.mark.parametrize("name, error", [("bad.npz", "not an AffectGPT output"), ("bad.txt", "unknown predictions format")])
def test_bad_prediction_files(tmp_path, name, error):
    path = tmp_path / name
    if name.endswith(".npz"):
        np.savez(path, other=np.arange(3))
    else:
        path.write_text("x")
    with pytest.raises(ValueError, match=error):
        read_predictions(path)


def test_epoch_of_and_file_selection(tmp_path):
    assert epoch_of("checkpoint_000045_loss_0.551-openset.npz") == 45
    assert epoch_of("epoch_7.jsonl") == 7
    assert epoch_of("preds.jsonl") is None
    for name in ["checkpoint_000010_x-openset.npz", "checkpoint_000005_x-openset.npz", "preds.jsonl", "notes.txt"]:
        (tmp_path / name).write_text("")
    assert [p.name for p in prediction_files(tmp_path, "discrete")] == [
        "checkpoint_000005_x-openset.npz", "checkpoint_000010_x-openset.npz", "preds.jsonl"]
    # no sentiment files: a sentiment benchmark falls back to the open-set lists
    assert len(prediction_files(tmp_path, "sentiment")) == 3


def test_nan_main_score_never_wins_best():
    reports = [unibench.ScoreReport("b", "f1", "hit", float("nan")), unibench.ScoreReport("b", "f2", "hit", 10.0)]
    assert unibench.best_report(reports).file == "f2"
    assert math.isnan(reports[0].main) and reports[0].to_json()["main"] is None
