"""The Table 3 ablation experiment: intervals, the per-variant summary and its comparisons, reuse of finished
runs and the tables recomputed from the per-clip file, on made-up runs."""
from __future__ import annotations

import argparse
import math

from pathlib import Path

import numpy as np
import pytest

from affectverse_ds.experiments import ablation as exp
from affectverse_ds.experiments import ablation_tables as tables


def test_t_interval_matches_a_hand_computation():
    mean, lo, hi = tables.t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert mean == 2.0 and lo == pytest.approx(2 - half) and hi == pytest.approx(2 + half)
    assert all(math.isnan(x) for x in tables.t_interval([5.0])[1:])


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_more_clips():
    rng = np.random.default_rng(0)
    small, large = rng.integers(0, 2, 20).astype(float), rng.integers(0, 2, 2000).astype(float)
    m, lo, hi = tables.bootstrap_interval(small)
    assert lo <= m <= hi
    _, lo2, hi2 = tables.bootstrap_interval(large)
    assert hi2 - lo2 < hi - lo
    assert tables.bootstrap_interval(np.ones(10))[1:] == (1.0, 1.0)


def _seed(score, hits, fid=None):
    out = {"score": {"1": score, "0.5": score}, "hits": {"1": hits, "0.5": hits}}
    if fid is not None:
        out["fidelity"] = {"0.5": {"v": {p: {"cos": dict(fid[p]), "mse": dict(fid[p])} for p in fid}}}
    return out


def _raw():
    clips = {f"c{i}": [0.0, float("nan")] for i in range(4)}  # wheel 2: the label maps onto nothing
    good = dict(clips, c0=[100.0, float("nan")], c1=[100.0, float("nan")], c2=[100.0, float("nan")])
    fid = {"ewm": {"c0": 0.9, "c1": 0.8}, "repeat_last": {"c0": 0.5, "c1": 0.4}, "mean_observed": {"c0": 0.7, "c1": 0.7}}
    one = dict(clips, c3=[100.0, float("nan")])
    return {"precursor": {"f": {"0": _seed(75.0, good, fid), "1": _seed(75.0, good, fid)},
                          "b": {"0": _seed(50.0, dict(one, c0=[100.0, float("nan")])), "1": _seed(50.0, dict(one, c0=[100.0, float("nan")]))},
                          "a": {"0": _seed(25.0, one), "1": _seed(25.0, one)}}}


def test_summary_pairs_arms_on_the_same_clips():
    args = argparse.Namespace(keep_ratios=[1.0, 0.5], arms=["a", "b", "f"], seeds=2, n_train=1, n_test=4)
    summary = tables.summarise(_raw(), args)
    rows = {(r["arm"], r["keep_ratio"]): r for r in summary["precursor"]["scores"]}
    f = rows[("f", 1.0)]
    assert f["mean"] == 75.0 and f["n_clips"] == 4
    assert f["boot95"][0] <= 75.0 <= f["boot95"][1] and f["boot95"][1] > f["boot95"][0]
    comp = {(r["arm"], r["minus"], r["keep_ratio"]): r for r in summary["precursor"]["comparisons"]}
    assert set(comp) == {(x, y, k) for x, y in (("f", "b"), ("f", "a"), ("b", "a")) for k in (1.0, 0.5)}
    assert comp[("f", "a", 1.0)]["t95"][0] == 50.0 and comp[("f", "a", 1.0)]["paired_boot95"][0] == pytest.approx(50.0)
    fb = comp[("f", "b", 1.0)]
    assert fb["seeds"] == [25.0, 25.0] and fb["paired_boot95"][0] == pytest.approx(25.0)
    assert fb["paired_boot95"][1] <= 25.0 <= fb["paired_boot95"][2]
    t8 = [r for r in summary["precursor"]["table8"] if r["metric"] == "cos"]
    by = {r["predictor"]: r for r in t8}
    assert by["ewm"]["mean"] == pytest.approx(0.85)
    assert by["repeat_last"]["ewm_minus_this_t95"][0] == pytest.approx(0.4)
    md = tables.to_markdown(summary, args)
    assert "| 0.5 | (f) |" in md and "| 1 | (f) - (b) | +25.00 |" in md


def test_arms_without_the_same_seeds_are_not_paired():
    raw = _raw()
    del raw["precursor"]["b"]["1"]
    with pytest.raises(SystemExit, match="different seeds"):
        tables.summarise(raw, argparse.Namespace(keep_ratios=[1.0], arms=["b", "f"]))


def test_tables_are_recomputed_from_the_per_clip_file(tmp_path):
    args = argparse.Namespace(keep_ratios=[1.0, 0.5], arms=["a", "b", "f"], seeds=2, n_train=1, n_test=4)
    import json

    (tmp_path / "per_clip.json").write_text(json.dumps({"args": vars(args), "raw": _raw()}))
    assert exp.recompute(tmp_path) == json.loads(json.dumps(tables.summarise(_raw(), args)))
    assert (tmp_path / "results.md").read_text() == tables.to_markdown(tables.summarise(_raw(), args), args)


def test_a_finished_run_is_reused_only_when_what_made_it_matches(tmp_path, monkeypatch):
    # what counts as a complete checkpoint is checkpoint.py's business (tested there): here, a folder named step_*
    monkeypatch.setattr(exp, "latest_checkpoint", lambda d: next(iter(sorted(Path(d).glob("step_*"))), None))
    spec = {"overrides": ["train.seed=0", "ewm.enabled=false"], "shards": "/s", "recipe": "data: {}\n"}
    run = tmp_path / "keepmask"
    assert exp.reusable(run, spec) is None  # nothing there
    exp.write_spec(run, spec)
    assert exp.reusable(run, spec) is None  # no finished checkpoint
    (run / "checkpoints" / "step_000010").mkdir(parents=True)
    assert exp.reusable(run, spec) == run / "checkpoints" / "step_000010"
    assert exp.reusable(run, {**spec, "overrides": ["train.seed=1", "ewm.enabled=false"]}) is None
    assert exp.reusable(run, {**spec, "recipe": "data: {x: 1}\n"}) is None
    (run / "run_spec.json").write_text("{not json")
    assert exp.reusable(run, spec) is None
    exp.write_spec(run, spec)
    assert exp.reusable(run, spec, needs_checkpoint=False) is True


def test_arms_are_table_3_rows():
    assert exp.parse_args([]).arms == ["a", "b", "f"] and exp.parse_args([]).seeds == 5
    with pytest.raises(SystemExit):
        exp.parse_args(["--arms", "a,z"])
    overrides = {arm: set(extra) for arm, (_, _, extra) in tables.ARMS.items()}
    assert "ewm.enabled=false" in overrides["a"] and "ewm.temporal_split=false" in overrides["a"]
    assert "ewm.enabled=false" in overrides["b"] and "ewm.temporal_split=true" in overrides["b"]
    assert "ewm.enabled=true" in overrides["f"] and "ewm.context_source=full" in overrides["f_full"]


def test_wheel_score_is_the_mean_over_wheels_of_each_wheels_hit_rate():
    hits = np.array([[100.0, np.nan], [0.0, 100.0], [100.0, 100.0]])
    assert tables.wheel_score(hits) == pytest.approx(((200 / 3) + 100) / 2)


def test_command_line_defaults_parse_and_score_with_the_packaged_wheels():
    """The documented command parses (a merge once left its --wheel-dir default undefined) and, without
    --wheel-dir, scores with the wheels shipped in the package."""
    args = exp.parse_args(["--seeds", "3", "--variants", "base,precursor", "--out", "x"])
    assert args.seeds == 3 and args.variants == ["base", "precursor"]
    assert args.keep_ratios == [1.0, 0.7, 0.5, 0.3]
    from pathlib import Path

    assert any(Path(args.wheel_dir).iterdir())
    assert args.override == []
    more = exp.parse_args(["--arms", "b", "--override", "ewm.kappa_min=0.95", "--override", "train.lr=1e-4"])
    assert more.override == ["ewm.kappa_min=0.95", "train.lr=1e-4"]
    md = tables.to_markdown({}, argparse.Namespace(**{**vars(more), "n_train": 1, "n_test": 1}))
    assert "Every arm also trained with: `ewm.kappa_min=0.95` `train.lr=1e-4`" in md


def test_clip_fidelity_is_evaluations_probe_per_clip():
    """Table 8 per clip (the experiment) and summed (evaluation) come from one probe: per-clip values, averaged
    over clips, give evaluation's rows; the experiment's former formula (pooling matrices) agrees."""
    from types import SimpleNamespace

    import torch

    from affectverse_ds.eval.probes import FidelitySums, fidelity_from_trace
    from affectverse_ds.model.ewm import EmotionWorldModule, adaptive_pool_matrix

    g = torch.Generator().manual_seed(0)
    b, t, d, s, n_s = 4, 9, 5, 3, 2
    z = [torch.randn(b, t, d, generator=g) for _ in range(2)]
    lengths = [torch.tensor([9, 7, 9, 5]), torch.tensor([9, 9, 6, 4])]
    split = [torch.tensor([4, 7, 3, 2]), torch.tensor([5, 2, 3, 1])]  # clip 1 has no video future
    use = [torch.tensor([True, True, True, False]), torch.ones(b, dtype=torch.bool)]
    imagined = [torch.randn(b, s, n_s, d, generator=g) for _ in range(2)]
    trace = SimpleNamespace(z=z, lengths=lengths, split=split, use=use, imagined=imagined)
    names = ["c0", "c1", "c2", "c3"]
    per: dict = {}
    exp.add_clip_fidelity(per, trace, names)
    assert sorted(per["v"]["ewm"]["cos"]) == ["c0", "c2"] and sorted(per["a"]["ewm"]["cos"]) == names
    sums = FidelitySums()
    fidelity_from_trace(trace, sums)
    for row in sums.rows("m", "avt", 0.5):
        clips = per[row.stream][row.predictor]
        assert np.mean(list(clips["cos"].values())) == pytest.approx(np.mean(row.cos), abs=1e-6)
        assert np.mean(list(clips["mse"].values())) == pytest.approx(np.mean(row.mse), abs=1e-6)
    for m, stream in enumerate(("v", "a")):  # the experiment's own formula before it called the probe
        tp, fut = split[m], (lengths[m] - split[m]).clamp(min=0)
        target = adaptive_pool_matrix(tp, fut, n_s, t) @ z[m]
        last = z[m][torch.arange(b), (tp - 1).clamp(min=0)]
        observed = adaptive_pool_matrix(torch.zeros_like(tp), tp, 1, t) @ z[m]
        preds = {"ewm": imagined[m], "repeat_last": last[:, None, None].expand(-1, 1, n_s, -1),
                 "mean_observed": observed[:, None].expand(-1, 1, n_s, -1)}
        for pname, pred in preds.items():
            _, mse, cos = EmotionWorldModule.imagination_loss(pred, target)
            for i, name in enumerate(names):
                if name in per[stream][pname]["cos"]:
                    assert per[stream][pname]["cos"][name] == pytest.approx(float(cos[i].mean()), abs=1e-6)
                    assert per[stream][pname]["mse"][name] == pytest.approx(float(mse[i].mean()), abs=1e-6)


def test_the_evaluation_command_is_the_demos_in_one_setting_without_probes(monkeypatch, tmp_path):
    """The ablation and the demo share one evaluation command (``demo.evaluate``): the ablation's asks for A+V+T
    only, every keep ratio and no Table 8 probe (it measures fidelity per clip itself)."""
    from affectverse_ds import demo

    calls = []
    monkeypatch.setattr(demo, "_run", lambda cmd, log, progress=None: calls.append(cmd))
    demo.evaluate([Path("/c/a"), Path("/c/b")], Path("/shards"), Path("/wheels"), tmp_path / "res", "avt",
                  "1,0.5", tmp_path / "log", None, "--no-probe")
    cmd = calls[0]
    assert cmd[:3] == demo.TORCHRUN and "affectverse_ds.launch.evaluate" in cmd and "--no-probe" in cmd
    for flag, value in (("--modality", "avt"), ("--keep-ratio", "1,0.5"), ("--mode", "rank"),
                        ("--out", str(tmp_path / "res")), ("--nproc_per_node", str(demo.RANKS))):
        assert cmd[cmd.index(flag) + 1] == value
    assert cmd[cmd.index("--checkpoint") + 1:cmd.index("--checkpoint") + 3] == ["/c/a", "/c/b"]
    assert "data.shard_dir=/shards" in cmd and "eval.wheel_dir=/wheels" in cmd


def test_a_run_is_compared_arm_by_arm_with_another_run_on_common_seeds(tmp_path):
    """--against: (b) here vs (b) there, seed i against seed i; a seed only one run has is left out, and runs on
    other test clips are refused."""
    import json

    args = argparse.Namespace(keep_ratios=[1.0, 0.5], arms=["a", "b", "f"], seeds=2, n_train=1, n_test=4)
    here, there = _raw(), _raw()
    there["precursor"]["b"] = there["precursor"]["a"]  # (b) there: 25, hits on c3 only
    del there["precursor"]["f"]
    there["precursor"]["a"] = {**there["precursor"]["a"], "7": there["precursor"]["a"]["0"]}
    (tmp_path / "here").mkdir()
    (tmp_path / "there").mkdir()
    (tmp_path / "here" / "per_clip.json").write_text(json.dumps({"args": vars(args), "raw": here}))
    (tmp_path / "there" / "per_clip.json").write_text(json.dumps({"args": vars(args), "raw": there}))
    text = exp.compare(tmp_path / "here", tmp_path / "there")
    rows = {(r["arm"], r["keep_ratio"]): r for r in json.loads((tmp_path / "here" / "against.json").read_text())["rows"]}
    assert set(rows) == {(a, k) for a in "ab" for k in (1.0, 0.5)}  # (f) is not in both runs
    b = rows[("b", 1.0)]
    assert b["seeds"] == ["0", "1"] and b["t95"][0] == 25.0 and b["paired_boot95"][0] == pytest.approx(25.0)
    assert rows[("a", 1.0)]["seeds"] == ["0", "1"] and rows[("a", 1.0)]["t95"][0] == 0.0
    assert "| precursor | 1 | (b) | 50.00 | 25.00 | +25.00 |" in text
    elsewhere = _raw()
    for seed in elsewhere["precursor"]["a"].values():
        seed["hits"]["1"] = {f"other{n}": v for n, v in seed["hits"]["1"].items()}
    with pytest.raises(SystemExit, match="other clips"):
        tables.against(here, elsewhere, [1.0])
    with pytest.raises(SystemExit, match="keep 0.7"):
        tables.against(here, there, [0.7])
    with pytest.raises(SystemExit, match="no per_clip.json"):
        exp.compare(tmp_path / "here", tmp_path / "nowhere")


def test_an_override_reaches_every_arms_training_and_its_run_spec(tmp_path, monkeypatch):
    from affectverse_ds import demo

    trained = []

    def fake_train(tag, shards, base, overrides, logs):
        trained.append((tag, overrides))
        (base / tag / "checkpoints" / "step_000001").mkdir(parents=True)
        return base / tag / "checkpoints" / "step_000001"

    monkeypatch.setattr(exp, "prepare", lambda art, args, variant: (tmp_path / "process", tmp_path / "shards"))
    monkeypatch.setattr(demo, "train", fake_train)
    monkeypatch.setattr(demo, "evaluate", lambda *a, **k: None)
    monkeypatch.setattr(exp, "collect", lambda *a, **k: None)
    monkeypatch.setattr(exp, "write_tables", lambda out, raw, args: {})
    monkeypatch.chdir(tmp_path)
    args = exp.parse_args(["--arms", "b", "--seeds", "1", "--override", "ewm.kappa_min=0.95", "--out", "o"])
    exp.run(args)
    assert trained == [("keepmask", ["train.seed=0", "ewm.kappa_min=0.95", *exp.ARMS["b"][2]])]
    import json

    spec = json.loads((tmp_path / "o" / "base" / "seed0" / "keepmask" / "run_spec.json").read_text())
    assert "ewm.kappa_min=0.95" in spec["overrides"]


def test_bad_arguments_are_refused_with_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    """Keys the experiment sets itself (or a whole section holding one), an override the recipe does not take,
    a bad --epochs, and a --recompute / --against folder without a finished run stop the command before any
    data is made or any training deleted, each with one line."""
    for bad, why in (("train.seed=3", "the experiment sets itself"), ("ewm.enabled=false", "the experiment sets"),
                     ("data.shard_dir=/x", "the experiment sets"), ("ewm.context_source=full", "the experiment sets"),
                     ("train={seed: 3}", "sets train.epochs, train.out_dir, train.seed"),
                     ("train.epochs=2", "use --epochs"), ("no_equals_sign", "expected KEY=VALUE")):
        with pytest.raises(SystemExit):
            exp.parse_args(["--override", bad])
        assert why in capsys.readouterr().err.strip().splitlines()[-1], bad
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit):
            exp.parse_args(["--epochs", bad])
        assert "expected a whole number >= 1" in capsys.readouterr().err
    assert exp.parse_args(["--override", "ewm.kappa_min=0.95"]).override == ["ewm.kappa_min=0.95"]
    for bad, why in (("ewm.no_such_key=1", "no_such_key"), ("ewm.heads=0", "ewm.heads: must be >= 1"),
                     ("ewm.lambda_img=" + "9" * 400, "too large for a float")):
        with pytest.raises(SystemExit, match=rf"^--override: .*{why}"):
            exp.check_args(exp.parse_args(["--override", bad]))
    with pytest.raises(SystemExit, match="holds no per_clip.json"):
        exp.check_args(exp.parse_args(["--recompute", "--out", str(tmp_path / "empty")]))
    with pytest.raises(SystemExit, match="--against: .* holds no per_clip.json"):
        exp.check_args(exp.parse_args(["--against", str(tmp_path / "missing")]))
    exp.check_args(exp.parse_args(["--override", "ewm.kappa_min=0.95", "--epochs", "2"]))  # valid ones pass

    def no_work(*_a, **_k):
        raise AssertionError("the experiment started")

    monkeypatch.setattr(exp, "run", no_work)
    monkeypatch.setattr(exp, "recompute", no_work)
    for argv in (["--override", "ewm.heads=0"], ["--recompute", "--out", str(tmp_path / "empty")]):
        with pytest.raises(SystemExit):
            exp.main(argv)


def test_runs_on_other_clips_or_with_nothing_in_common_are_not_compared(tmp_path):
    import json

    args = {"keep_ratios": [1.0], "arms": ["a"], "seeds": 2, "n_train": 1, "n_test": 4, "data_seed": 0}
    for name, raw, a in (("here", _raw(), args), ("seed1", _raw(), {**args, "data_seed": 1}),
                         ("empty", {}, args)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "per_clip.json").write_text(json.dumps({"args": a, "raw": raw}))
    with pytest.raises(SystemExit, match="other clips .*data_seed"):
        exp.compare(tmp_path / "here", tmp_path / "seed1")
    with pytest.raises(SystemExit, match="share no variant"):
        exp.compare(tmp_path / "here", tmp_path / "empty")
