"""Write a small raw benchmark tree in a real release's on-disk shape (CLI; the library is
:mod:`affectverse_ds.benchmarks.fixtures`).

    python -m data_prep.make_fixtures --benchmark meld --layout official --out /tmp/meld-fx \\
        [--labels tests/reference/merbench/meld-process/label.npz] [--n 4] [--seed 0] [--inject dup,nomedia] \\
        [--shape flat]
"""
from __future__ import annotations

from affectverse_ds.benchmarks.fixtures import *  # noqa: F401,F403  (``from data_prep.make_fixtures import make_fixture``)
from affectverse_ds.benchmarks.fixtures import main

if __name__ == "__main__":
    main()
