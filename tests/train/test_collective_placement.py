"""Collectives on CUDA: NCCL takes tensors on the rank's CUDA device only, and refuses host tensors with
"No backend type associated with device type cpu". Every multi-rank test here runs gloo on CPU, where host
tensors are right, so none of them can see a CPU tensor handed to NCCL; this file emulates NCCL's rule.

That nothing but ``affectverse_ds/distributed.py`` touches torch.distributed is checked by
tests/foundation/test_import_graph.py. The emulation: the backend's device is a device that is not the CPU (``meta``, the only other one a CPU
build of torch has), and the emulated ``all_reduce`` refuses any tensor that is not on it, exactly as NCCL
refuses host tensors. The first optimizer step of a CUDA run reaches both reductions tested below.
"""
from __future__ import annotations


import pytest
import torch

from affectverse_ds import distributed as dist
from affectverse_ds.train import loop


@pytest.fixture
def emulated_nccl(monkeypatch):
    """A live process group whose backend takes ``meta`` tensors only; returns the tensors it was given."""
    seen: list[torch.Tensor] = []

    def all_reduce(tensor, op=None, group=None, async_op=False):
        if tensor.device != torch.device("meta"):
            raise RuntimeError(f"No backend type associated with device type {tensor.device.type}")
        seen.append(tensor)

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "backend_device", lambda: torch.device("meta"))
    # a meta tensor holds no values to read back: the host copy of a reduction over one rank is its input's shape
    monkeypatch.setattr(dist, "_to_host", lambda t: torch.zeros(t.shape, dtype=t.dtype))
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 1)
    return seen


def test_stop_flag_reduction_runs_on_the_backend_device(emulated_nccl):
    assert dist.all_reduce_max(1.0) == 0.0  # the emulated host copy (zeros): the call went through
    assert len(emulated_nccl) == 1 and emulated_nccl[0].dtype == torch.float64


def test_step_metrics_reduction_runs_on_the_backend_device(emulated_nccl):
    """``_StepAccumulator.finish``: the per-step loss and token sums all-reduced at every optimizer step."""

    class Engine:
        def get_global_grad_norm(self):
            return None

    class Trainer:
        info = dist.DistInfo(0, 1, 0, "127.0.0.1", 0, "single")
        cfg = type("Cfg", (), {"train": type("T", (), {"micro_batch": 2})()})()
        engine = Engine()
        flops = type("F", (), {"step_flops": staticmethod(lambda *a: 1.0)})()
        peak = None
        device = torch.device("cpu")

    acc = loop._StepAccumulator()
    out = type("Out", (), {"loss": torch.tensor(2.0), "lm_loss": torch.tensor(1.5), "img_loss": torch.tensor(0.5),
                           "metrics": {}})()
    acc.add(out, {"tokens": 10, "video": 4, "audio": 3, "text": 3, "patches": 8, "mel": 20})
    scalars = acc.finish(Trainer())
    assert len(emulated_nccl) == 1 and emulated_nccl[0].numel() == 3 + 6  # 3 losses + 6 token counts, one call
    assert set(scalars) >= {"loss/total", "loss/lm", "loss/imagine", "tokens_per_s/video"}


def test_backend_device_follows_the_backend(monkeypatch):
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert dist.backend_device() == torch.device("cuda", 3)
    monkeypatch.setattr(torch.distributed, "get_backend", lambda group=None: "gloo")
    assert dist.backend_device() == torch.device("cpu")


def test_rng_state_touches_only_this_ranks_gpu(monkeypatch):
    """Saving every visible GPU's RNG state opens a CUDA context on each from every rank (8 ranks x 8 GPUs);
    a checkpoint keeps the rank's own device, and restores onto it, older all-device lists included."""
    from affectverse_ds.train import checkpoint as ckpt

    mine, restored = torch.ByteTensor([1, 2, 3]), []

    def every_device():
        raise AssertionError("get_rng_state_all: a CUDA context on every visible GPU")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": mine)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", every_device)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", every_device)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(state))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    state = ckpt.rng_state()
    assert state["cuda"] == [mine]
    ckpt.set_rng_state(state)
    old = dict(state, cuda=[torch.ByteTensor([i]) for i in range(4)])  # a checkpoint that listed 4 devices
    ckpt.set_rng_state(old)
    assert restored[0] is mine and int(restored[1][0]) == 2


@pytest.mark.parametrize("visible,local,expected", [(8, 5, 5), (1, 5, 0), (4, 6, None)])
def test_each_rank_takes_its_own_gpu(monkeypatch, visible, local, expected):
    """All GPUs visible (deepspeed, torchrun): the local rank's; one visible (srun binding a GPU per task):
    that one; fewer than the local ranks: a one-line error, not a CUDA 'invalid device ordinal' later."""
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    info = dist.DistInfo(local, 8, local, "127.0.0.1", 0, "slurm")
    if expected is None:
        with pytest.raises(RuntimeError, match="local rank 6 but this process sees 4 CUDA devices"):
            dist.pick_device(info)
    else:
        assert dist.pick_device(info) == torch.device("cuda", expected) and current == [expected]


def test_deepspeed_is_told_the_device_the_rank_took(monkeypatch):
    """DeepSpeed's engine places itself on LOCAL_RANK: under srun binding one GPU per task that must be 0."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    info = dist.DistInfo(13, 16, 5, "gpu07", 29500, "slurm")
    dist.pick_device(info)
    assert dist.launcher_env(info) == {"RANK": "13", "WORLD_SIZE": "16", "LOCAL_RANK": "0",
                                       "MASTER_ADDR": "gpu07", "MASTER_PORT": "29500"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dist.launcher_env(info)["LOCAL_RANK"] == "5"  # CPU ranks: the launcher's local id
