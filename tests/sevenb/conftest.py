"""Whether bf16 is fast here: the one detection the bf16-speed gates of the tests read, with one override.

Without AVX512-BF16 or AMX, torch's bf16 backward matmuls on CPU take the scalar fallback gemm
(``cpublas_gemm_impl``, measured ~0.08 GFLOP/s per core): a DeepSpeed step at 7B widths took 48 min; with
them (or on a CUDA device) the same step takes about a minute.

    AFFECTVERSE_FAST_BF16=1   treat bf16 as fast (run the bf16 branches, however long they take here)
    AFFECTVERSE_FAST_BF16=0   treat bf16 as slow (skip them, as a CPU without AVX512-BF16/AMX does)
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

FORCE_VAR = "AFFECTVERSE_FAST_BF16"
CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo names of the instructions torch's bf16 gemm uses


def fast_bf16(environ: dict[str, str] | None = None, cpuinfo: str | None = None,
              cuda: bool | None = None) -> tuple[bool, str]:
    """(fast, why). ``AFFECTVERSE_FAST_BF16`` decides when set; else a CUDA device or a CPU flag in CPU_FLAGS.

    The arguments replace the process environment, ``/proc/cpuinfo`` and ``torch.cuda.is_available()``
    (for the tests of this function)."""
    environ = os.environ if environ is None else environ
    forced = environ.get(FORCE_VAR)
    if forced is not None:
        if forced not in ("0", "1"):
            raise pytest.UsageError(f"{FORCE_VAR}={forced!r}: use 1 (bf16 is fast) or 0 (bf16 is slow)")
        return forced == "1", f"{FORCE_VAR}={forced}"
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if cuda:
        return True, "a CUDA device"
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    found = [f for f in CPU_FLAGS if f in flags]
    if found:
        return True, f"the CPU has {found[0]}"
    return False, (f"no CUDA device and a CPU without {'/'.join(CPU_FLAGS)}: torch's bf16 backward matmuls take "
                   f"the scalar fallback gemm (a 7B-width step took 48 min); {FORCE_VAR}=1 runs it anyway")


@pytest.fixture(scope="session")
def bf16_speed() -> tuple[bool, str]:
    """``fast_bf16()`` of this machine, read once per session."""
    return fast_bf16()


@pytest.fixture(scope="session")
def detect_fast_bf16():
    """The detection itself, for the tests that feed it other environments and CPUs."""
    return fast_bf16
