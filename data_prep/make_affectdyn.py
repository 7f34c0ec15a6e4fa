"""CLI for the synthetic ``affectdyn`` benchmark; the generator lives in ``affectverse_ds.benchmarks.affectdyn_gen``.

    python -m data_prep.make_affectdyn --out DIR --n-train 300 --n-test 90 --seed 0 [--workers 2]
        [--variant base|precursor]

Re-exports the generator's names (``make_affectdyn``, ``split_specs``, ...) for existing imports.
"""
from __future__ import annotations

import sys

from affectverse_ds.benchmarks import affectdyn_gen as _gen
from affectverse_ds.benchmarks.affectdyn_gen import *  # noqa: F401,F403  (the public generator API)
from affectverse_ds.benchmarks.affectdyn_gen import main, make_affectdyn  # noqa: F401

if __name__ == "__main__":
    sys.exit(_gen.main())
