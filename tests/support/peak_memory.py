"""Peak memory of a reader over hostile inputs, measured in a fresh process (issue #26's "within ~100 MB of an
ordinary input").

:func:`peaks` runs ``setup`` (Python that defines ``measure(arg) -> str``, the outcome as text) on each argument
in order, in one new interpreter, and returns the process's peak RSS after each. Pass the ordinary input first:
the peak only rises, so the figure after an attack is the most the process held until then, imports included.
VmHWM, not ``ru_maxrss``: Linux carries ``ru_maxrss`` across fork and exec, so a child of a large pytest process
would report its parent's size; VmHWM is the new process's own high-water mark.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_PREAMBLE = """
import json, re, sys

def _peak_mb():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024
"""
_LOOP = """
_rows = []
for _arg in sys.argv[1:]:
    _outcome = measure(_arg)
    _rows.append({"peak_mb": _peak_mb(), "outcome": _outcome})
print(json.dumps(_rows))
"""


@dataclass(frozen=True)
class Peak:
    """Peak RSS (MB) of the measuring process after one input, and what the reader made of it."""

    peak_mb: float
    outcome: str


def peaks(setup: str, args: list[str], timeout: float = 120) -> list[Peak]:
    """One :class:`Peak` per argument, in order; the process must exit 0 (its stderr tail is the message)."""
    script = _PREAMBLE + textwrap.dedent(setup) + _LOOP
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [Peak(**row) for row in json.loads(proc.stdout.strip().splitlines()[-1])]
