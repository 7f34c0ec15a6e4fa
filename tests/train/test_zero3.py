"""ZeRO-3 export: the partitioned trainable weights are gathered before they are written.

In one child process (world size 1, so this pytest process never holds a process group): a ZeRO-3 engine with
``ds_configs/zero3.json`` (persistence threshold 0, so every weight is partitioned: with 100000 small tensors stay
whole and an export that forgot to gather would pass) trains two steps; the export written by
``checkpoint.export_gathered`` must equal DeepSpeed's own consolidation of the fp32 partitions (``zero_to_fp32``).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_SCRIPT = textwrap.dedent("""
    import json, os, sys, torch
    from affectverse_ds.distributed import free_port
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    import deepspeed
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    from affectverse_ds.config import load_config
    from affectverse_ds.train import checkpoint as ckpt
    from affectverse_ds.distributed import DistInfo
    from affectverse_ds.train.engine import fill_ds_config, load_ds_config

    out = sys.argv[1]

    class Model(torch.nn.Module):  # the two methods the export reads, on an EWM-like stack
        def __init__(self):
            super().__init__()
            self.ewm = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
        def forward(self, x):
            return self.ewm(x)
        def trainable_parameters(self):
            return [(f"ewm.{n}", p) for n, p in self.ewm.named_parameters()]
        def ewm_state_dict(self):
            return self.ewm.state_dict()

    cfg = load_config("launch/configs/tiny.yaml", ["lora.enabled=false", "train.precision=fp32"])
    ds = fill_ds_config(load_ds_config("ds_configs/zero3.json"), cfg, 1)
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    torch.manual_seed(0)
    model = Model()
    engine, *_ = deepspeed.initialize(model=model, model_parameters=list(model.parameters()), config=ds)
    for _ in range(2):
        loss = engine(torch.ones(cfg.train.micro_batch, 16)).pow(2).sum()
        engine.backward(loss)
        engine.step()
    sizes = {n: p.data.numel() for n, p in model.trainable_parameters()}
    assert all(v == 0 for v in sizes.values()), sizes  # partitioned: nothing whole outside a forward
    ckpt.export_gathered(model, cfg, os.path.join(out, "export"), DistInfo(0, 1, 0, "127.0.0.1", 0, "single"))
    engine.save_checkpoint(os.path.join(out, "ck"), tag="t")
    reference = get_fp32_state_dict_from_zero_checkpoint(os.path.join(out, "ck"), tag="t")
    exported = load_file(os.path.join(out, "export", "ewm.safetensors"))
    assert {f"ewm.{k}" for k in exported} == set(reference), (sorted(exported), sorted(reference))
    for k, v in exported.items():
        assert v.shape == reference[f"ewm.{k}"].shape and v.numel() > 0, k
        assert torch.equal(v, reference[f"ewm.{k}"]), k
    assert all(p.data.numel() == 0 for _, p in model.trainable_parameters())  # partitioned again afterwards
    print("ZERO3_EXPORT_OK", {k: tuple(v.shape) for k, v in exported.items()})
""")


def test_zero3_export_gathers_the_partitioned_weights(tmp_path):
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1", "HOME": str(Path.home())}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "ZERO3_EXPORT_OK" in proc.stdout, (proc.stdout + proc.stderr)[-3000:]
