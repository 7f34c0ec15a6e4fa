"""The shipped presets, package data so an installed package has them: the run configs (``launch/configs`` in a
clone is a link to ``launch/`` here) and the DeepSpeed engine policies (``ds_configs`` links to ``deepspeed/``)."""
from __future__ import annotations

from pathlib import Path

LAUNCH = Path(__file__).resolve().parent / "launch"
DEEPSPEED = Path(__file__).resolve().parent / "deepspeed"
