"""The 7B-shaped thinker (real widths, vocabulary, M-RoPE sections and special tokens; 1 decoder layer, 2 vision
blocks of which one is full-attention, 2 audio layers; random) through the real entry points, in two variants.

Each variant: one DeepSpeed ZeRO-2 step (``deepspeed --num_gpus 1 launch/train.py`` with the 7B preset: 224 px,
3 FPS, max sequence 1024, micro batch 2), one rank-mode and one generate batch through ``launch/evaluate.py``,
the export -> ``PeftModel.from_pretrained`` round trip, gradients of LoRA and the EWM, M-RoPE ids on the
real-width sequence against ``get_rope_index`` and what 25 ids per second implies for them, and the memory
planner against the peak measured in this process.

- **fp32** (``backbone.dtype=float32``, ``train.precision=fp32``) runs on any x86 CPU: fp32 gemms are fast
  everywhere, so real widths execute in every CI run.
- **bf16** (the paper's precision) runs where bf16 is fast: a CPU with AVX512-BF16 or AMX, or a CUDA device
  (``tests/sevenb/conftest.py``: ``fast_bf16``; ``AFFECTVERSE_FAST_BF16=1|0`` forces it). Elsewhere torch's bf16
  backward matmuls take a scalar fallback gemm (a DeepSpeed step at these widths took 48 min) and the variant
  skips with that reason. ``tests/model/test_bf16.py`` covers the bf16 dtype boundaries at tiny width on any CPU.

Both read one backbone written in bf16, as the released checkpoint is; the fp32 variant casts it on load, as a
CPU user of the real weights does.

What is reduced, and why: depth (the task) and the clip length (1.4 s instead of the paper's 6-8 s: 4 frames,
i.e. two temporal patches, so the time ids of M-RoPE have a step to check). One token through one 7B decoder
layer costs ~0.5 GFLOP per pass; this module makes ~10 decoder passes per variant. Widths, frame size, FPS,
sequence budget and micro batch are the paper's. The 6-8 s clip at these widths is measured by
``bench/step_overhead.py --7b-shapes`` (and on a GPU by ``bench/gpu_check.sh``).

Dtypes (the stated choice): under DeepSpeed with ``bf16.enabled`` the engine casts the whole module, so the EWM
and LoRA run in bf16 like the thinker, with fp32 master weights in DeepSpeed's optimizer. Outside DeepSpeed
(``build_model``) the EWM stays fp32: it casts the thinker's bf16 states in (``EmotionWorldModule.project``)
and its belief tokens out to the embedding dtype (``injection.gather_embeddings``); PEFT upcasts the LoRA
adapters of a bf16 thinker to fp32 as well (``autocast_adapter_dtype``, its default). Both are run here.
"""
from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from affectverse_ds.data.batch import AUDIO_TOKEN_ID, VIDEO_TOKEN_ID
from affectverse_ds.distributed import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SECONDS = 1.4  # 224 px at 3 FPS: 4 frames = two temporal patches of 64 video tokens each; 35 audio tokens
LAYERS = 1  # decoder layers here; bench/step_overhead.py --7b-shapes runs 2
VARIANTS = {
    # backbone.dtype, train.precision, the thinker's torch dtype
    "fp32": ("float32", "fp32", torch.float32),
    "bf16": ("bfloat16", "bf16", torch.bfloat16),
}
# Peak RSS of any one process of a variant (the DeepSpeed rank, an evaluation, this pytest process); the
# 24 GB machines are shared. fp32: 5.4 GiB of weights, and loading casts them from the memory-mapped 2.7 GiB
# bf16 file, both resident at once: measured 8.7 GB (rank, evaluations) to 9.1 GB (this process). bf16: the
# weights stay memory-mapped, paged in as they are read: measured 3.2 GB (rank) and 3.7 GB (this process).
MAX_RSS_GB = {"fp32": 12.0, "bf16": 6.0}


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def _run(cmd: list[str], log: Path, timeout: float = 1800) -> tuple[float, float]:
    """Run ``cmd`` to completion, failing the test with the log's tail; returns (wall seconds, peak RSS in GB).

    The peak is the child's own (``wait4``: the largest of the child and the descendants it waited for, so
    the DeepSpeed rank under the launcher counts), not the maximum over every child this process had. Linux
    starts a spawned child's peak at its parent's peak (exec records the old address space's high-water mark),
    so this process's peak is reset first: the floor is then what this process holds now, ~1 GB."""
    _reset_peak(torch.device("cpu"))
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > timeout:
                proc.kill()
                proc.wait()
                pytest.fail(f"{' '.join(cmd[:4])} ... ran past {timeout:.0f} s; log: {log}")
            time.sleep(0.5)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-40:])
        pytest.fail(f"{' '.join(cmd[:4])} ... exited {proc.returncode}:\n{tail}")
    return time.perf_counter() - start, usage.ru_maxrss / 2**20


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    """The depth-reduced 7B thinker in bf16, once for both variants."""
    from affectverse_ds.tools.make_shaped_backbone import make_shaped_backbone

    out = make_shaped_backbone(tmp_path_factory.mktemp("shaped7b_backbone"), layers=LAYERS, vision_depth=2,
                               audio_layers=2)
    gc.collect()
    return out


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request, bf16_speed, backbone, tmp_path_factory):
    """Shards (train + MELD test), reference wheels and the 7B preset's overrides of one precision."""
    from affectverse_ds.benchmarks import get_benchmark

    name = request.param
    fast, why = bf16_speed
    if name == "bf16" and not fast:
        pytest.skip(f"bf16 at 7B widths: {why}")
    dtype, precision, torch_dtype = VARIANTS[name]
    root = tmp_path_factory.mktemp(f"shaped7b_{name}")
    from affectverse_ds.tools import fixture_shards as data

    shards = root / "shards"
    data.write_test_shards(shards, 2, benchmark="meld", split="train", seconds=SECONDS, frame_size=224)
    data.write_test_shards(shards, 2, benchmark="meld", split=get_benchmark("meld").test_split, seconds=SECONDS,
                           frame_size=224, first_sample=2)
    reference = root / "reference"
    from tests.support.wheels import write_tiny_wheels

    write_tiny_wheels(reference / "emotion_wheel")
    overrides = [
        f"backbone.path={backbone}", f"backbone.dtype={dtype}", "backbone.attn_implementation=sdpa",
        f"data.shard_dir={shards}", "data.train_benchmarks={meld: 1.0}", "data.eval_benchmarks=[meld]",
        "data.num_workers=0", f"eval.wheel_dir={reference / 'emotion_wheel'}",
        "train.micro_batch=2", "train.grad_accum=1", "train.global_batch=null", "train.max_steps=1",
        "train.save_every=1", "train.log_every=1", f"train.precision={precision}",
        "train.warmup_ratio=0.0",  # one step: with warm-up its learning rate would be 0 and nothing would move
    ]
    start = time.perf_counter()
    peaks = {}  # GB: the peak RSS of each process (or in-process test) of this variant
    yield dict(name=name, root=root, backbone=backbone, overrides=overrides, dtype=torch_dtype, peaks=peaks)
    print(f"\n7B-shaped {name}: {time.perf_counter() - start:.0f} s in this variant's tests; peak RSS (GB): "
          + ", ".join(f"{k} {v:.2f}" for k, v in peaks.items()))


@pytest.fixture(scope="module")
def trained(variant):
    """One DeepSpeed ZeRO-2 step through the launcher; its run folder and its peak RSS (the rank's)."""
    run = variant["root"] / "run"
    cmd = [str(VENV_BIN / "deepspeed"), "--num_gpus", "1", "--master_port", str(free_port()), "launch/train.py",
           "--ds", "ds_configs/zero2.json", "--config", "launch/configs/affectverse_7b.yaml",
           *variant["overrides"], f"train.out_dir={run}"]
    seconds, peak_gb = _run(cmd, variant["root"] / "train_log.txt")
    variant["peaks"]["train"] = peak_gb
    print(f"\n7B-shaped {variant['name']} DeepSpeed step: {seconds:.0f} s, peak RSS {peak_gb:.2f} GB")
    return dict(run=run, last=run / "checkpoints" / "step_000001", peak_gb=peak_gb)


def test_deepspeed_step_has_finite_losses_and_fits(variant, trained):
    rows = [json.loads(line) for line in (trained["run"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]
    for key in ("loss/total", "loss/lm", "loss/imagine"):
        assert math.isfinite(rows[0][key]), (key, rows[0][key])
    assert rows[0]["loss/imagine"] > 0  # the EWM ran (imagination loss over real A/V states)
    assert rows[0]["belief_tokens"] > 0
    assert trained["peak_gb"] < MAX_RSS_GB[variant["name"]], trained["peak_gb"]


def test_export_round_trip_through_peft(variant, trained):
    """The exported adapter, loaded by PeftModel.from_pretrained on the thinker, holds the trained weights; the
    engine trained LoRA and the EWM in the variant's dtype (bf16: DeepSpeed cast the whole module)."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from affectverse_ds.config import load_config
    from affectverse_ds.model.backbone import load_thinker

    last = trained["last"]
    cpu = torch.device("cpu")
    _reset_peak(cpu)
    module = torch.load(last / "mp_rank_00_model_states.pt", weights_only=True)["module"]
    lora_trained = {k: v for k, v in module.items() if "lora_" in k}
    assert lora_trained and any(v.abs().sum() > 0 for k, v in lora_trained.items() if "lora_B" in k)
    ewm_trained = {k: v for k, v in module.items() if k.startswith("ewm.")}
    assert {v.dtype for v in [*lora_trained.values(), *ewm_trained.values()]} == {variant["dtype"]}
    cfg = load_config(last / "export" / "config.yaml", [f"backbone.path={variant['backbone']}"])
    assert cfg.backbone.dtype == VARIANTS[variant["name"]][0]
    peft_thinker = PeftModel.from_pretrained(load_thinker(cfg.backbone), last / "export" / "lora")
    loaded = {f"thinker.{k}": p for k, p in peft_thinker.named_parameters() if "lora_" in k}
    assert set(loaded) == set(lora_trained)
    for k, v in lora_trained.items():
        assert torch.equal(loaded[k].to(v.dtype), v), k
    assert next(peft_thinker.parameters()).dtype == variant["dtype"]
    ewm = load_file(str(last / "export" / "ewm.safetensors"))
    assert set(f"ewm.{k}" for k in ewm) == set(ewm_trained)
    for k, v in ewm.items():
        assert torch.equal(v.to(ewm_trained[f"ewm.{k}"].dtype), ewm_trained[f"ewm.{k}"]), k
    variant["peaks"]["export round trip"] = _peak_bytes(cpu) / 2**30
    del peft_thinker, module, loaded
    gc.collect()
    assert variant["peaks"]["export round trip"] < MAX_RSS_GB[variant["name"]]


@pytest.mark.parametrize("mode", ["rank", "generate"])
def test_evaluate_cli_one_batch(variant, trained, mode):
    """launch/evaluate.py on the DeepSpeed step's checkpoint: one batch of 2 MELD test clips."""
    out = variant["root"] / f"results_{mode}"
    config = trained["last"] / "export" / "config.yaml"
    cmd = [sys.executable, "launch/evaluate.py", "--checkpoint", str(trained["last"]),
           "--config", str(config), "--benchmarks", "meld", "--modality", "avt", "--keep-ratio", "1.0",
           "--mode", mode, "--out", str(out), "--no-probe", "--max-batches", "1", *variant["overrides"],
           "eval.batch_size=2", "eval.max_new_tokens=3"]
    seconds, peak_gb = _run(cmd, variant["root"] / f"eval_{mode}.txt")
    variant["peaks"][f"evaluate {mode}"] = peak_gb
    print(f"\n7B-shaped {variant['name']} evaluate --mode {mode}: {seconds:.0f} s, peak RSS {peak_gb:.2f} GB")
    (run,) = json.loads((out / "meld.json").read_text())["runs"]
    assert run["mode"] == mode and len(run["predictions"]) == 2
    assert peak_gb < MAX_RSS_GB[variant["name"]], peak_gb


def _check_time_scale(pos: torch.Tensor, batch: dict, per_second: int, fps: float) -> None:
    """What ``position_id_per_seconds`` (25) implies for each sample's 3D ids (3, B, L).

    Video: every token of temporal patch k has the time id start + int(k x seconds_per_grid x 25) (2 frames at
    3 FPS: 2/3 s, so the two patches are 16 ids apart), and height/width ids start + row/column of the merged
    grid; the token after the video continues after the largest of these, the time id. Audio: one token per
    40 ms, ids advancing by one per token on all three axes: 25 ids per second of clip, the video's time scale.
    """
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    assert int(batch["video_grid_thw"].shape[0]) == ids.shape[0]  # every sample has its video (and audio)
    for i in range(ids.shape[0]):
        row, p = ids[i][mask[i]], pos[:, i][:, mask[i]]  # (L_i,), (3, L_i)
        t, h, w = (int(x) for x in batch["video_grid_thw"][i])
        second_per_grid = float(batch["video_second_per_grid"][i])
        assert t == 2 and math.isclose(second_per_grid, 2 / fps, rel_tol=1e-6)
        cols = torch.nonzero(row == VIDEO_TOKEN_ID).squeeze(1)
        video = p[:, cols].view(3, t, h // 2, w // 2)
        start = int(video[0, 0, 0, 0])
        steps = [int(k * second_per_grid * per_second) for k in range(t)]  # [0, 16]
        assert steps[1] == 16
        for k in range(t):
            assert (video[0, k] == start + steps[k]).all(), (i, k)
        assert torch.equal(video[1], start + torch.arange(h // 2)[None, :, None].expand(t, -1, w // 2))
        assert torch.equal(video[2], start + torch.arange(w // 2)[None, None, :].expand(t, h // 2, -1))
        after = int(cols[-1]) + 1  # <|vision_eos|>
        assert (p[:, after] == start + steps[-1] + 1).all()  # after the time ids, not after the 8 x 8 grid
        audio = p[:, row == AUDIO_TOKEN_ID]
        n = audio.shape[1]
        assert n == round(SECONDS * per_second)  # 35 tokens for 1.4 s
        assert torch.equal(audio, (int(audio[0, 0]) + torch.arange(n)).expand(3, -1))


def _proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _held_bytes(device: torch.device) -> int:
    """What this process holds now: the CUDA allocator's bytes, or on CPU the resident set."""
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else _proc_status_kb("VmRSS") * 1024


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM starts again from the current RSS


def _peak_bytes(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _proc_status_kb("VmHWM") * 1024


def _page_in(model: torch.nn.Module) -> None:
    """Read every weight once. A bf16 thinker stays memory-mapped from its safetensors file, and a page no
    forward reads (most rows of the 152064 x 3584 embedding) would never count in RSS, while on a GPU every
    weight is resident: the planner's weight term is checked against what is really held."""
    with torch.no_grad():
        for p in model.parameters():
            p.sum()


# The planner's bytes (weights + gradients + activations of one forward/backward, no optimizer; read from
# affectverse_ds/memory_plan.py and plan_coeffs.json at run time) against the peak measured in this process above
# what it held before the model was built. The planner counts bf16 (2 bytes per element); the fp32 variant holds
# every weight, gradient and activation at 4, so its prediction is doubled. Measured on an AVX512-BF16 CPU (batch
# 2 x 227 columns, LoRA dropout 0.05, weights paged in, plan_coeffs.json of 8759a9d): bf16 2.792 GiB against
# 2.986 predicted (ratio 1.069), fp32 5.622 against 5.972 (1.062). The planner must not predict less than was
# held, and at most 15% more.
PLAN_TOLERANCE = 0.15


def test_gradients_dtypes_positions_and_planner_in_process(variant):
    """build_model (the EWM fp32 beside the thinker): LoRA and EWM get finite gradients; the unmodified
    real-width sequence's 3D M-RoPE ids equal the thinker's get_rope_index and follow 25 ids per second;
    the planner predicts the peak measured here."""
    from affectverse_ds import memory_plan
    from affectverse_ds.config import load_config
    from affectverse_ds.data.batch import to_device
    from affectverse_ds.data.loader import build_train_loader
    from affectverse_ds.model import injection as inj
    from affectverse_ds.model.affect_model import build_model
    from affectverse_ds.model.backbone import load_tokenizer, read_thinker_config

    dtype = variant["dtype"]
    # the preset's LoRA dropout (0.05), under which the planner's coefficients were measured
    cfg = load_config(REPO / "launch" / "configs" / "affectverse_7b.yaml", variant["overrides"])
    tok = load_tokenizer(cfg.backbone.path)
    batch = next(iter(build_train_loader(cfg, tok, rank=0, world=1, epoch=0)))
    batch = {k: v for k, v in batch.items() if k != "meta"}
    assert batch["pixel_values_videos"].shape[-1] == 3 * 2 * 14 * 14
    assert int(batch["video_grid_thw"][0, 1]) == 224 // 14  # 224 px frames: 16 x 16 patches
    # where bf16 is fast because of a CUDA device, the bf16 work runs there (this CPU may lack AVX512-BF16)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gc.collect()
    base = _held_bytes(device)
    _reset_peak(device)
    model = build_model(cfg, device).train()
    _page_in(model)
    load_peak = _peak_bytes(device)
    _reset_peak(device)  # the planner predicts the step, not the loading
    core = model.core
    assert core.dtype == dtype and next(model.ewm.parameters()).dtype == torch.float32
    assert core.config.text_config.hidden_size == 3584 and core.config.text_config.vocab_size == 152064
    assert core.config.text_config.rope_parameters["mrope_section"] == [16, 24, 24]
    assert core.config.position_id_per_seconds == 25

    fam = batch["feature_attention_mask"]
    ref, _ = core.model.get_rope_index(batch["input_ids"], None, batch["video_grid_thw"], batch["attention_mask"],
                                       False, fam.sum(1), batch["video_second_per_grid"])
    regions = inj.find_regions(batch["input_ids"], batch["attention_mask"], batch["video_grid_thw"],
                               batch["video_second_per_grid"], core.model.spatial_merge_size,
                               core.config.position_id_per_seconds)
    b = batch["input_ids"].shape[0]
    sequence = inj.build_plan(regions, batch["attention_mask"], batch["labels"], batch["answer_start"], None,
                              torch.zeros(b, dtype=torch.long))
    assert torch.equal(sequence.position_ids, ref)
    assert cfg.data.fps == 3.0  # the preset's: 2/3 s per temporal patch
    _check_time_scale(ref, batch, core.config.position_id_per_seconds, cfg.data.fps)

    torch.manual_seed(0)  # LoRA dropout
    out = model(to_device(batch, device), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and out.img_loss > 0
    out.loss.backward()
    named = dict(model.trainable_parameters())
    lora_b = [p for n, p in named.items() if "lora_B" in n]
    assert lora_b and all(p.grad is not None and torch.isfinite(p.grad).all() for p in lora_b)
    assert all(p.grad.abs().sum() > 0 for p in lora_b)
    assert all(p.grad.dtype == torch.float32 for p in lora_b)  # PEFT keeps adapters fp32 outside DeepSpeed
    ewm = [(n, p) for n, p in named.items() if n.startswith("ewm.")]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in ewm)
    reached = [n for n, p in ewm if p.grad.abs().sum() > 0]
    assert any(n.startswith("ewm.down") for n in reached), reached  # through the belief tokens to the input side

    step_peak = _peak_bytes(device)
    measured = step_peak - base
    if device.type == "cpu":
        variant["peaks"]["in-process"] = max(load_peak, step_peak) / 2**30
        assert variant["peaks"]["in-process"] < MAX_RSS_GB[variant["name"]]
    counts = memory_plan.count_parameters(cfg, read_thinker_config(cfg.backbone.path))
    width = batch["input_ids"].shape[1]
    plan = memory_plan.memory_plan(counts, memory_plan.load_coeffs(), world=1, micro=b, tokens=width,
                                   checkpointing=False, zero=2, reserve_gb=0.0, optimizer=False)
    predicted = plan.peak * dtype.itemsize / 2
    ratio = predicted / measured
    print(f"\n7B-shaped {variant['name']} in-process step on {device.type} ({b} x {width} columns): peak above start "
          f"{measured / 2**30:.3f} GiB, planner {predicted / 2**30:.3f} GiB (weights {plan.weights / 2**30:.3f}, "
          f"activations {plan.activations / 2**30:.3f} GiB at bf16), predicted/measured {ratio:.3f}")
    assert 1.0 <= ratio < 1 + PLAN_TOLERANCE, ratio  # an upper bound on CPU, within the tolerance
    del model, out, named, lora_b, ewm
    gc.collect()
