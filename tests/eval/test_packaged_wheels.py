"""The MER-UniBench emotion wheels ship with the package and are the default of every scorer."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from affectverse_ds.config import load_config
from affectverse_ds.eval.wheel import PACKAGED_WHEEL_DIR, WHEEL_FILES, load_wheels, wheel_dir_for

REPO = Path(__file__).resolve().parents[2]


def test_packaged_wheels_are_complete_licensed_and_readable():
    for name in (*WHEEL_FILES, "LICENSE", "README.md"):
        assert (PACKAGED_WHEEL_DIR / name).is_file(), name
    assert "Apache License" in (PACKAGED_WHEEL_DIR / "LICENSE").read_text()
    wheels = load_wheels(PACKAGED_WHEEL_DIR)
    assert wheels.n_wheels == 5
    assert len(set().union(*wheels.surface_to_base.values())) == 1255  # base words of format.csv


def test_config_default_and_the_options_resolve_as_documented(tmp_path):
    assert wheel_dir_for(load_config(None).eval) == PACKAGED_WHEEL_DIR
    for preset in ("demo", "affectverse_7b", "tiny"):
        assert wheel_dir_for(load_config(REPO / "launch" / "configs" / f"{preset}.yaml").eval) == PACKAGED_WHEEL_DIR
    assert wheel_dir_for(load_config(None, [f"eval.wheel_dir={tmp_path}"]).eval) == tmp_path


def test_scorer_cli_needs_no_wheel_option(reference):
    labels = reference("merbench/mer2023-dataset-process/label-6way.npz")
    preds = reference("affectgpt_outputs/mer2023")
    proc = subprocess.run([sys.executable, "-m", "affectverse_ds.eval.unibench", "score", "--benchmark", "mer2023",
                           "--labels", str(labels), "--predictions", str(preds), "--json"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    best = max(json.loads(line)["main"] for line in proc.stdout.splitlines())
    assert round(best, 2) == 78.54  # AffectGPT's published MER2023 HIT rate (docs/evaluation.md)
