"""The fast-bf16 detection (tests/sevenb/conftest.py): the override wins, then CUDA, then the CPU's flags."""
from __future__ import annotations

import pytest

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f\n"  # avx512f without avx512_bf16
WITH_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
WITH_AMX = "processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n"


@pytest.mark.parametrize("cpuinfo, fast", [(AVX2_ONLY, False), (WITH_BF16, True), (WITH_AMX, True), ("", False)],
                         ids=["avx2", "avx512_bf16", "amx", "no_cpuinfo"])
def test_cpu_flags_decide_without_cuda_or_override(detect_fast_bf16, cpuinfo, fast):
    got, why = detect_fast_bf16(environ={}, cpuinfo=cpuinfo, cuda=False)
    assert got is fast
    assert ("AFFECTVERSE_FAST_BF16=1 runs it anyway" in why) is not fast  # a skip says how to run it


def test_override_wins_both_ways_and_cuda_counts(detect_fast_bf16):
    assert detect_fast_bf16(environ={"AFFECTVERSE_FAST_BF16": "1"}, cpuinfo=AVX2_ONLY, cuda=False)[0] is True
    assert detect_fast_bf16(environ={"AFFECTVERSE_FAST_BF16": "0"}, cpuinfo=WITH_BF16, cuda=True)[0] is False
    assert detect_fast_bf16(environ={}, cpuinfo=AVX2_ONLY, cuda=True) == (True, "a CUDA device")
    with pytest.raises(pytest.UsageError, match="use 1"):
        detect_fast_bf16(environ={"AFFECTVERSE_FAST_BF16": "yes"}, cpuinfo=WITH_BF16, cuda=False)
