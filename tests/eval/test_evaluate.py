"""The evaluator end to end on fixture shards with the tiny backbone (both modes, every table and plot),
checkpoint loading, the work split over ranks, Table 8's statistics, and unreadable media counted."""
from __future__ import annotations

import shutil

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from affectverse_ds.benchmarks import get_benchmark
from affectverse_ds.config import load_config
from affectverse_ds.data import schema
from affectverse_ds.data.batch import IM_END_ID
from affectverse_ds.eval import evaluate as ev
from affectverse_ds.eval import inference
from affectverse_ds.distributed import DistInfo, free_port
from affectverse_ds.tools.fixture_shards import write_test_shards
from tests.support.evaluation import make_checkpoint, tiny_eval_config
from tests.support.launch import launch_module

REPO = Path(__file__).resolve().parents[2]
CORRUPT = 1  # meld sample whose first JPEG is truncated: unreadable with video, fine without


def write_rejected_manifest(shard_dir: Path, bench: str, split: str, name: str, label: dict) -> None:
    """A manifest.parquet with one test item the shard builder rejected (as data/shards.py writes it)."""
    from affectverse_ds.data.shards import MANIFEST_SCHEMA

    row = {"key": schema.sample_key(bench, split, name), "benchmark": bench, "name": name, "split": split,
           "status": "rejected", "reason": "truncated video: 0.40 s of 2.00 s", "shard": None,
           "label": json.dumps(label), "duration": None, "frames": 0, "audio_seconds": 0.0, "source": "x.mp4"}
    pq.write_table(pa.Table.from_pylist([row], schema=MANIFEST_SCHEMA), shard_dir / schema.MANIFEST_FILE)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_backbone_dir, tiny_wheel_dir):
    root = tmp_path_factory.mktemp("evaluate")
    shards = root / "shards"
    write_test_shards(shards, 3, benchmark="meld", split=get_benchmark("meld").test_split, seconds=1.0,
                      frame_size=56, corrupt_jpeg=[CORRUPT])
    write_test_shards(shards, 2, benchmark="cmumosi", split=get_benchmark("cmumosi").test_split,
                      seconds=1.0, frame_size=56)
    write_test_shards(shards, 1, benchmark="ovmerd", split=get_benchmark("ovmerd").test_split,
                      seconds=1.0, frame_size=56)
    write_rejected_manifest(shards, "meld", get_benchmark("meld").test_split, "meld_rejected_9",
                            {"emo": "joy", "val": None, "openset": None})
    reference = root / "reference"
    reference.mkdir()
    (reference / "emotion_wheel").symlink_to(tiny_wheel_dir, target_is_directory=True)
    cfg = tiny_eval_config(tiny_backbone_dir, shards, reference)
    ckpts = [make_checkpoint(cfg, root / "ckpt" / "step_000010", 1),
             make_checkpoint(cfg, root / "ckpt" / "step_000020", 2)]
    return SimpleNamespace(root=root, cfg=cfg, ckpts=ckpts, shards=shards, reference=reference)


# ----------------------------------------------------------------------------- checkpoints


def test_resolve_checkpoint_accepts_step_and_export_folders(setup, tmp_path):
    step = setup.ckpts[0]
    assert ev.resolve_checkpoint(step) == ev.CheckpointRef("step_000010", step / "export")
    assert ev.resolve_checkpoint(step / "export") == ev.CheckpointRef("step_000010", step / "export")
    with pytest.raises(FileNotFoundError):
        ev.resolve_checkpoint(tmp_path)
    # checkpoints of a training run are labelled with the run's folder, so two runs never collide
    run_step = tmp_path / "runs" / "ewm" / "checkpoints" / "step_000010"
    shutil.copytree(step, run_step)
    assert ev.resolve_checkpoint(run_step).label == "ewm@step_000010"


def test_load_trained_weights_restores_the_export(setup):
    from safetensors.torch import load_file

    from affectverse_ds.model.affect_model import build_model

    ref = ev.resolve_checkpoint(setup.ckpts[1])
    torch.manual_seed(123)
    fresh = build_model(setup.cfg, "cpu")
    model, _ = ev.load_checkpoint_model(ref, setup.cfg, "cpu")
    saved_ewm = load_file(str(ref.export_dir / "ewm.safetensors"))
    for name, tensor in model.ewm.state_dict().items():
        key = name if name in saved_ewm else f"ewm.{name}"
        torch.testing.assert_close(tensor, saved_ewm[key])
    loaded = dict(model.trainable_parameters())
    changed = [n for n, p in fresh.trainable_parameters() if "lora_" in n and not torch.equal(p, loaded[n])]
    assert changed, "LoRA weights were not loaded from the adapter"
    adapter = load_file(str(ref.export_dir / "lora" / "adapter_model.safetensors"))
    lora_a = next(k for k in adapter if "lora_A" in k)
    suffix = lora_a.split("base_model.model.")[-1].replace(".weight", "")
    mine = next(p for n, p in model.trainable_parameters() if suffix in n and "lora_A" in n)
    torch.testing.assert_close(mine, adapter[lora_a])


def _damage(export: Path, which: str, how: str) -> Path:
    """Damage one weight file of an export: ``truncated`` (first half kept), ``garbage`` or ``foreign`` tensors."""
    path = export / ("ewm.safetensors" if which == "ewm" else "lora/adapter_model.safetensors")
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "garbage":
        path.write_bytes(b"\x00not safetensors at all" * 40)
    else:
        from safetensors.torch import save_file

        save_file({"something.else": torch.zeros(3)}, str(path))
    return path


@pytest.mark.parametrize("which,how", [("ewm", "truncated"), ("ewm", "garbage"), ("ewm", "foreign"),
                                       ("adapter", "truncated"), ("adapter", "foreign")])
def test_damaged_weights_are_a_one_line_error_naming_the_file(setup, tmp_path, which, how):
    ckpt = tmp_path / "step_000010"
    shutil.copytree(setup.ckpts[0], ckpt)
    path = _damage(ckpt / "export", which, how)
    with pytest.raises(ev.CheckpointError) as err:
        ev.load_checkpoint_model(ev.resolve_checkpoint(ckpt), setup.cfg, "cpu")
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and len(message) < 500


def test_launch_cli_reports_a_truncated_ewm_file_in_one_line(setup, tmp_path, capsys):
    launch = launch_module("evaluate")
    from affectverse_ds.config import dump_config

    ckpt = tmp_path / "step_000010"
    shutil.copytree(setup.ckpts[0], ckpt)
    path = _damage(ckpt / "export", "ewm", "truncated")
    config = dump_config(setup.cfg, tmp_path / "eval.yaml")
    rc = launch.main(["--config", str(config), "--benchmarks", "cmumosi", "--out", str(tmp_path / "results"),
                      "--no-probe", "--checkpoint", str(ckpt)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # beside transformers' progress bars
    assert rc == 2 and "Traceback" not in err
    assert len(errors) == 1 and errors[0].startswith(f"error: {path}: not a readable safetensors file")


def test_model_config_takes_model_sections_from_the_checkpoint(setup):
    user = load_config(REPO / "launch" / "configs" / "tiny.yaml", ["ewm.d_w=32", "ewm.heads=4",
                                                                  f"data.shard_dir={setup.shards}"])
    merged = ev.model_config(user, setup.ckpts[0] / "export")
    assert merged.ewm.d_w == setup.cfg.ewm.d_w == 64  # the weights' shape decides
    assert merged.data.shard_dir == str(setup.shards)


# ----------------------------------------------------------------------------- pieces


def test_candidate_answers_are_the_trained_targets(tiny_backbone_dir):
    from affectverse_ds.model.backbone import load_tokenizer

    meld = get_benchmark("meld")
    cands = ev.candidate_answers(meld)
    assert [c.prediction.items for c in cands] == [(c,) for c in meld.classes]
    assert cands[1].text == "The character's emotional state is joy."
    senti = ev.candidate_answers(get_benchmark("cmumosi"))
    assert [c.prediction.sentiment for c in senti] == ["positive", "negative", "neutral"]
    assert senti[0].text == "The sentiment is positive."
    assert ev.candidate_answers(get_benchmark("ovmerd")) is None
    ids = ev.candidate_token_ids(load_tokenizer(tiny_backbone_dir), senti)
    assert all(t[-1] == IM_END_ID for t in ids) and len({tuple(t) for t in ids}) == 3


def _trace(z_v, length, split, imagined, use=None):
    b = z_v.shape[0]
    empty = torch.zeros(b, 1, z_v.shape[-1])
    return SimpleNamespace(
        z=[z_v, empty], lengths=[length, torch.zeros(b, dtype=torch.long)], split=[split, torch.zeros(b, dtype=torch.long)],
        use=[use if use is not None else torch.ones(b, dtype=torch.bool), torch.zeros(b, dtype=torch.bool)],
        imagined=[imagined, torch.zeros(b, imagined.shape[1], imagined.shape[2], z_v.shape[-1])])


def test_fidelity_from_trace_ewm_and_baselines():
    # sample 0: past tokens all e0, future tokens all e1 (4 tokens, split at 2)
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    z = torch.stack([e0, e0, e1, e1])[None]  # (1, 4, 2)
    z = torch.cat([z, z, z])  # 3 samples
    length = torch.tensor([4, 4, 4])
    split = torch.tensor([2, 4, 2])  # sample 1 has no future; sample 2 cannot use the stream
    use = torch.tensor([True, True, False])
    imagined = torch.zeros(3, 2, 2, 2)  # S = 2 steps, N_s = 2
    imagined[:, 0] = e1  # step 1 exact
    imagined[:, 1] = -e1  # step 2 opposite
    sums = ev.FidelitySums()
    ev.fidelity_from_trace(_trace(z, length, split, imagined, use), sums)
    rows = {(r.stream, r.predictor): r for r in sums.rows("m", "avt", 0.5)}
    assert set(rows) == {("v", "ewm"), ("v", "repeat_last"), ("v", "mean_observed")}  # no audio stream
    ewm = rows[("v", "ewm")]
    assert ewm.n == 1
    assert ewm.cos == pytest.approx([1.0, -1.0]) and ewm.mse == pytest.approx([0.0, 8.0])
    last = rows[("v", "repeat_last")]  # predicts e0 against e1: orthogonal, MSE (1 + 4) / 2
    assert last.cos == pytest.approx([0.0, 0.0]) and last.mse == pytest.approx([2.5, 2.5])


def test_fidelity_mean_observed_and_pooling():
    # past: a, b -> mean (a + b) / 2; future of 4 tokens pooled to 2 bins
    z = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [1.0, 1.0], [1.0, 1.0], [3.0, 3.0], [3.0, 3.0]]])
    imagined = torch.zeros(1, 1, 2, 2)
    sums = ev.FidelitySums()
    ev.fidelity_from_trace(_trace(z, torch.tensor([6]), torch.tensor([2]), imagined), sums)
    rows = {r.predictor: r for r in sums.rows("m", "avt", 0.3)}
    mean = rows["mean_observed"]  # (1, 1) against targets (1, 1) and (3, 3): cos 1, MSE (0 + 4) / 2
    assert mean.cos == pytest.approx([1.0]) and mean.mse == pytest.approx([2.0])


def test_probe_kappas():
    # inside the training range U[0.7, 1) (its lower end and middle) as well as the sweep's points below 1
    assert ev.probe_kappas([1.0, 0.7, 0.5], 0.7) == [0.85, 0.7, 0.5]
    assert ev.probe_kappas([1.0], 0.7) == [0.85, 0.7]
    assert ev.probe_kappas([1.0, 0.3, 0.1], 0.5) == [0.75, 0.5, 0.3, 0.1]


def test_mama_heatmap_averages_dual_modality_samples_only():
    sums = ev.MamaSums()
    w = torch.stack([torch.full((4, 6), float(i)) for i in range(3)])  # (B=3, N_q, N_M): sample i is all i
    sums.add(w, torch.tensor([False, False, False]), limit=16)  # a batch without a dual-modality sample
    assert sums.n == 0 and sums.mean() is None
    sums.add(w, torch.tensor([False, True, True]), limit=16)
    assert sums.n == 2 and np.allclose(sums.mean(), 1.5)  # samples 1 and 2, never the single-modality 0
    sums.add(w, torch.tensor([True, True, True]), limit=3)  # the limit counts samples
    assert sums.n == 3 and np.allclose(sums.mean(), 1.0)


def test_read_gold_counts_shards_and_builder_rejects(setup):
    gold = ev.read_gold(setup.shards, get_benchmark("meld"))
    assert sorted(gold.in_shards) == [f"meld_test_{i:05d}" for i in range(3)]
    assert set(gold.labels.labels) == set(gold.in_shards) | {"meld_rejected_9"}
    assert gold.labels.labels["meld_rejected_9"].emo == "joy"
    assert "truncated" in gold.build_rejected["meld_rejected_9"]


# ----------------------------------------------------------------------------- end to end


def _summary_section(text: str, heading: str) -> str:
    start = text.index(f"## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


@pytest.fixture(scope="module")
def runs(setup):
    """Both modes, two checkpoints, A+V+T and A+T, keep ratios 1.0 and 0.5, every output written."""
    out = {}
    for mode in ("generate", "rank"):
        plan = ev.EvalPlan([str(p) for p in setup.ckpts], benchmarks=["meld", "cmumosi", "ovmerd"],
                           modalities=["avt", "at"], keep_ratios=[1.0, 0.5], mode=mode,
                           out_dir=str(setup.root / f"results_{mode}"))
        out[mode] = (ev.evaluate(setup.cfg, plan, device="cpu"), Path(plan.out_dir))
    return out


@pytest.mark.parametrize("mode", ["generate", "rank"])
def test_end_to_end_writes_every_table_and_plot(runs, mode):
    outcome, out = runs[mode]
    for name in ("meld", "cmumosi", "ovmerd"):
        data = json.loads((out / f"{name}.json").read_text())
        assert data["fixed_checkpoint"] == "step_000020"
        assert len(data["runs"]) == 2 * 2 * 2  # checkpoints x settings x keep ratios
        for run in data["runs"]:
            assert run["mode"] == ("rank" if mode == "rank" and name != "ovmerd" else "generate")
            assert Path(run["predictions_file"]).is_file()
    summary = (out / "summary.md").read_text()
    table1 = _summary_section(summary, "Table 1")
    for row in ("step_000020 (fixed checkpoint)", "best-of-2 per benchmark"):
        assert sum(line.startswith(f"| {row} |") for line in table1.splitlines()) == 2  # avt and at
    assert "| MELD | MOSI | OV-MERD+ | Mean (3 of 9) |" in table1
    every = _summary_section(summary, "Every checkpoint")
    assert sum(line.startswith("| step_0000") for line in every.splitlines()) == 4  # 2 checkpoints x 2 settings
    metrics = _summary_section(summary, "Secondary and conventional metrics")
    assert "| MOSI | avt | wf1_nonzero " in metrics and "acc2 " in metrics and "wf1_all " in metrics
    table2 = _summary_section(summary, "Table 2")
    assert "| MELD | Full |" in table2 and "| MOSI | No Video |" in table2 and "| 1 | 0.5 | Avg. |" in table2
    assert (out / "plots" / "keep_ratio.png").stat().st_size > 1000
    for ckpt in ("step_000010", "step_000020"):
        for bench in ("meld", "cmumosi", "ovmerd"):
            assert (out / "plots" / f"mama_{ckpt}_{bench}.png").stat().st_size > 1000
    table8 = _summary_section(summary, "Table 8")
    from affectverse_ds.model.affect_model import AffectVerseModel

    if not hasattr(AffectVerseModel, "imagination_trace"):
        pytest.xfail("the model exposes no imagination_trace(batch, kappa): Table 8 and its plot are empty")
    # probed at kappa 0.5 (the sweep's value below 1), both streams, the EWM and both baselines
    assert {(r.keep_ratio, r.stream, r.predictor) for r in outcome.imagination} >= \
        {(0.5, s, p) for s in ("v", "a") for p in ("ewm", "repeat_last", "mean_observed")}
    assert all(len(r.cos) == 3 and all(-1.0 <= c <= 1.0 for c in r.cos) and min(r.mse) >= 0 and r.n > 0
               for r in outcome.imagination)
    assert "EWM imagination" in table8 and "repeat last observed" in table8 and "mean of observed" in table8
    assert (out / "plots" / "imagination.png").stat().st_size > 1000


@pytest.mark.parametrize("mode", ["generate", "rank"])
def test_unreadable_media_is_counted_never_a_crash(runs, mode):
    outcome, out = runs[mode]
    data = json.loads((out / "meld.json").read_text())
    by_setting = {(r["model"], r["modality"], r["keep_ratio"]): r for r in data["runs"]}
    avt = by_setting[("step_000020", "avt", 1.0)]["counts"]
    assert avt["media_failed"] == 1 and avt["media_failed_names"] == [f"meld_test_{CORRUPT:05d}"]
    assert avt["loader_skipped"] == 1  # the loader's own count agrees
    assert avt["evaluated"] == 2 and avt["build_rejected"] == 1 and avt["samples"] == 4
    assert by_setting[("step_000020", "avt", 1.0)]["report"]["missing"] == 2  # scored as empty predictions
    at = by_setting[("step_000020", "at", 1.0)]["counts"]  # without video the sample reads fine
    assert at["media_failed"] == 0 and at["evaluated"] == 3
    summary = (out / "summary.md").read_text()
    assert f"meld / avt: meld_test_{CORRUPT:05d}" in summary and "meld_rejected_9 (truncated video" in summary


def test_rank_mode_predicts_the_most_likely_candidate(runs):
    _, out = runs["rank"]
    data = json.loads((out / "cmumosi.json").read_text())
    texts = [c.text for c in ev.candidate_answers(get_benchmark("cmumosi"))]
    words = ["positive", "negative", "neutral"]
    for run in data["runs"]:
        for p in run["predictions"]:
            scores = p["candidate_logprobs"]
            assert len(scores) == 3 and all(s < 0 and math.isfinite(s) for s in scores)
            best = max(range(3), key=scores.__getitem__)
            assert p["answer"] == texts[best] and p["sentiment"] == words[best]


def test_best_per_benchmark_row_matches_the_per_checkpoint_scores(runs):
    outcome, _ = runs["generate"]
    at_one = [s for s in outcome.scores if s.keep_ratio == 1.0 and s.modality == "avt"]
    best = [r for r in ev.report.table1_rows(outcome.scores, "step_000020") if r.sources and r.modality == "avt"][0]
    with_scores = 0
    for bench in ("meld", "cmumosi", "ovmerd"):
        mine = [s.score for s in at_one if s.benchmark == bench and not math.isnan(s.score)]
        if mine:
            assert best.values[bench] == max(mine)
            with_scores += 1
        else:  # nothing scored on this benchmark: the best-of cell is empty (NaN), never a number
            assert math.isnan(best.values[bench]) and bench not in best.sources
    assert with_scores >= 2  # the comparison above ran, not only the empty case


def test_benchmark_json_has_a_bootstrap_interval_around_each_score(runs):
    _, out = runs["rank"]
    intervals = 0
    for bench in ("meld", "cmumosi"):
        for run in json.loads((out / f"{bench}.json").read_text())["runs"]:
            low, high = run["interval_95"]
            if run["score"] is not None:
                assert low <= run["score"] + 1e-9 and run["score"] <= high + 1e-9
                intervals += 1
    assert intervals >= 8  # 2 benchmarks x 2 checkpoints x 2 settings x 2 keep ratios


def test_work_split_over_two_ranks_gathers_the_single_rank_result(setup, runs):
    plan = ev.EvalPlan([str(setup.ckpts[1])], benchmarks=["cmumosi", "meld"], modalities=["avt"], keep_ratios=[1.0],
                       mode="rank", probe=False, write=False)
    parts = [ev.run_rank(setup.cfg, plan, DistInfo(r, 2, 0, "127.0.0.1", 0, "single"), "cpu") for r in (0, 1)]
    names = [{s.name for run in part.runs for s in run.samples} for part in parts]
    assert names[0] and names[1] and not names[0] & names[1]
    merged = ev.merge_outputs(parts)
    _, out = runs["rank"]
    for bench in ("cmumosi", "meld"):
        single = {r["model"] + r["modality"] + str(r["keep_ratio"]): r for r in
                  json.loads((out / f"{bench}.json").read_text())["runs"]}["step_000020avt1.0"]
        gathered = next(r for r in merged.runs if r.benchmark == bench)
        assert {s.name: s.prediction.to_json() for s in gathered.samples} == \
               {p["name"]: {k: v for k, v in p.items() if k not in ("name", "candidate_logprobs")}
                for p in single["predictions"]}


def test_random_belief_ablation_is_reproducible(setup, tmp_path):
    """``ewm.belief=random`` draws its beliefs from a seeded, forked generator: two evaluations agree exactly
    and the caller's RNG stream is not consumed."""
    cfg = tiny_eval_config(setup.cfg.backbone.path, setup.shards, setup.reference, "ewm.belief=random")
    ckpt = make_checkpoint(cfg, tmp_path / "step_000030", seed=5)
    plan = ev.EvalPlan([str(ckpt)], benchmarks=["cmumosi"], modalities=["avt"], keep_ratios=[1.0, 0.5],
                       mode="rank", probe=False, write=False)
    info = DistInfo(0, 1, 0, "127.0.0.1", 0, "single")
    first, second = (ev.run_rank(setup.cfg, plan, info, "cpu") for _ in range(2))
    logprobs = [[s.candidate_logprobs for run in out.runs for s in run.samples] for out in (first, second)]
    assert logprobs[0] and logprobs[0] == logprobs[1]
    state = torch.get_rng_state()
    with inference.belief_rng(cfg, "cmumosi", "avt", 0, 0, 1.0):
        drawn = torch.randn(3)
    assert torch.equal(torch.get_rng_state(), state)  # forked: the caller's stream goes on where it was
    with inference.belief_rng(cfg, "cmumosi", "avt", 0, 0, 1.0):
        assert torch.equal(torch.randn(3), drawn)
    with inference.belief_rng(setup.cfg, "x"):  # belief "ewm": nothing seeded, nothing forked
        torch.randn(3)
    assert not torch.equal(torch.get_rng_state(), state)


def test_launch_cli(setup, tmp_path, capsys):
    launch = launch_module("evaluate")
    config = tmp_path / "eval.yaml"
    from affectverse_ds.config import dump_config

    dump_config(setup.cfg, config)
    out = tmp_path / "results"
    rc = launch.main(["--config", str(config), "--benchmarks", "cmumosi", "--modality", "vt", "--keep-ratio", "1.0",
                      "--mode", "rank", "--out", str(out), "--no-probe",
                      "--checkpoint", str(setup.ckpts[0] / "export"), "eval.batch_size=1"])
    assert rc == 0
    data = json.loads((out / "cmumosi.json").read_text())
    assert [(r["model"], r["modality"], r["mode"]) for r in data["runs"]] == [("step_000010", "vt", "rank")]
    args = launch.parse_args(["--config", "c.yaml", "--checkpoint", "a", "b", "eval.batch_size=1"])
    assert args.checkpoint == ["a", "b"] and args.overrides == ["eval.batch_size=1"]
    assert "| step_000010 (fixed checkpoint) | \u00d7 | \u2713 | \u2713 |" in (out / "summary.md").read_text()
    assert launch.main(["--checkpoint", str(tmp_path), "--config", str(config), "--out", str(out)]) == 2
    assert "not a checkpoint" in capsys.readouterr().err
    assert launch.main(["--checkpoint", str(setup.ckpts[0]), "--config", str(config), "--benchmarks", "sims",
                        "--out", str(out), "--no-probe"]) == 2  # no shards for it: a message, not a traceback
    assert "matches nothing" in capsys.readouterr().err


def test_shards_from_the_real_builder_with_rejected_and_audio_less_clips(setup, tmp_path):
    """Raw fixture clips -> data_prep shard builder -> evaluator: the builder's rejects (a corrupt file, a
    missing one) are counted from its manifest and scored as empty; a clip without audio is evaluated."""
    from affectverse_ds.data.shards import build_shards
    from data_prep.make_fixtures import make_fixture

    bench = get_benchmark("cmumosi")
    raw = make_fixture("cmumosi", "unibench", tmp_path / "raw", n=4, inject=["corrupt", "nomedia", "noaudio"], seed=3)
    shards = tmp_path / "shards"
    report = build_shards("cmumosi", "unibench", raw, bench.test_split, shards, progress=False)
    assert report.rejected == 2
    cfg = tiny_eval_config(setup.cfg.backbone.path, shards, setup.reference)
    plan = ev.EvalPlan([str(setup.ckpts[0])], benchmarks=["cmumosi"], modalities=["avt"], keep_ratios=[1.0],
                       mode="rank", out_dir=str(tmp_path / "results"), probe=False)
    outcome = ev.evaluate(cfg, plan, device="cpu")
    (scored,) = outcome.scored["cmumosi"]
    assert scored.counts["evaluated"] == report.accepted == 2
    assert scored.counts["build_rejected"] == 2 and scored.counts["media_failed"] == 0
    # the decode failure keeps its label in the manifest and is scored as empty; the scanner's "no media
    # file" reject carries no label, so it is listed as unscorable
    assert scored.counts["samples"] == 3 and scored.report.missing == 1
    assert len(scored.counts["build_rejected_unlabelled"]) == 1


@pytest.mark.slow
def test_two_process_torchrun_gathers_on_rank_zero(setup, tmp_path):
    """The real launch: ``torchrun --nproc_per_node 2 launch/evaluate.py`` (gloo on CPU), results on rank 0."""
    import os
    import subprocess
    import sys

    from affectverse_ds.config import dump_config

    config = dump_config(setup.cfg, tmp_path / "eval.yaml")
    out = tmp_path / "results"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(REPO / "launch" / "evaluate.py"), "--checkpoint", str(setup.ckpts[1]), "--config", str(config),
           "--benchmarks", "meld", "--modality", "avt", "--keep-ratio", "1.0", "--mode", "rank",
           "--out", str(out), "--no-probe"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = json.loads((out / "meld.json").read_text())["runs"]
    assert sorted(p["name"] for p in run["predictions"]) == ["meld_test_00000", "meld_test_00002"]
    assert run["counts"]["media_failed_names"] == [f"meld_test_{CORRUPT:05d}"]  # it was rank 1's sample


def test_table8_and_imagination_plot_from_the_trace(setup, tmp_path, monkeypatch):
    """Table 8's wiring (probe split points, pooling over batches and ranks, rows, plot) with a stand-in
    trace: the video stream's imagination equals the pooled real future, so cosine is 1 and MSE 0."""
    calls = []

    def fake_trace(model, batch, kappa):
        calls.append(kappa)
        b, t, d = len(batch["meta"]), 8, 4
        g = torch.Generator().manual_seed(len(calls))
        z = torch.randn(b, t, d, generator=g)
        length = torch.full((b,), t)
        split = torch.full((b,), int(kappa * t))
        target = ev._pool_future(z, split, length, 2)  # N_s = 2
        imagined = target[:, None].expand(b, 3, 2, d).clone()  # S = 3 steps, all exact
        return SimpleNamespace(z=[z, z], lengths=[length, length], split=[split, split],
                               use=[torch.ones(b, dtype=torch.bool), torch.zeros(b, dtype=torch.bool)],
                               imagined=[imagined, imagined])

    monkeypatch.setattr(inference, "imagination_trace", fake_trace)  # where the inference loop looks it up
    plan = ev.EvalPlan([str(setup.ckpts[0])], benchmarks=["cmumosi"], modalities=["avt"], keep_ratios=[1.0, 0.5],
                       mode="rank", out_dir=str(tmp_path / "results"))
    outcome = ev.evaluate(setup.cfg, plan, device="cpu")
    assert calls and set(calls) == {0.85, 0.7, 0.5}  # inside the training range and the sweep's 0.5; none at 1
    rows = {(r.stream, r.predictor): r for r in outcome.imagination if r.keep_ratio == 0.5}
    assert set(rows) == {("v", "ewm"), ("v", "repeat_last"), ("v", "mean_observed")}  # audio unused
    ewm = rows[("v", "ewm")]
    assert ewm.n == 2 and ewm.cos == pytest.approx([1.0] * 3) and ewm.mse == pytest.approx([0.0] * 3, abs=1e-6)
    assert rows[("v", "repeat_last")].cos[0] < 1.0
    summary = (tmp_path / "results" / "summary.md").read_text()
    table8 = _summary_section(summary, "Table 8")
    assert "| step_000010 | avt | 0.5 | video | EWM imagination | 1.000 | 1.000 | 1.000 |" in table8
    assert (tmp_path / "results" / "plots" / "imagination.png").stat().st_size > 1000
