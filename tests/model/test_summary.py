"""The summary CLI's counts for the 7B preset: LoRA exactly as PEFT makes it, the EWM at the paper's ~25M."""
from __future__ import annotations

import json
from pathlib import Path

from affectverse_ds.model.summary import main

REPO = Path(__file__).resolve().parents[2]


def test_7b_preset_counts(capsys):
    main(["--config", str(REPO / "launch/configs/affectverse_7b.yaml"),
          f"backbone.arch_config={REPO / 'launch/configs/qwen2_5_omni_7b_thinker.json'}"])
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    print(counts)
    assert counts["lora_params"] == 10_092_544
    assert 24_000_000 <= counts["ewm_params"] <= 26_500_000
    assert counts["ewm_params"] == 25_248_257  # the arithmetic in ewm.py's docstring
    assert counts["trainable_params"] == counts["lora_params"] + counts["ewm_params"]
    assert counts["backbone_params"] > 8_000_000_000
