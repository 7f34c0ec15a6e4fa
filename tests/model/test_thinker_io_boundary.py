"""Only model/thinker_io.py reaches into transformers internals: the composition and its components go through it.

A transformers upgrade that renames ``language_model`` or changes ``DynamicCache`` should break one file; this
scans the code (not comments or docstrings) of the model's composition modules for the internals' names.
"""
from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

MODEL_DIR = Path(__file__).resolve().parents[2] / "affectverse_ds" / "model"
# the composition and its components; backbone.py (loading) and lora.py (PEFT) are the thinker's own builders
THROUGH_THINKER_IO = ["affect_model.py", "records.py", "step_plan.py", "ewm_context.py", "shared_prefix.py",
                      "objective.py", "decoding.py"]
INTERNALS = [r"\blanguage_model\b", r"DynamicCache", r"get_input_embeddings", r"get_(video|audio)_features",
             r"(?<!thinker_io)\.lm_head\b", r"\.core\.", r"text_config", r"spatial_merge_size",
             r"position_id_per_seconds", r"register_forward_hook", r"batch_repeat_interleave",
             r"gradient_checkpointing_enable", r"get_base_model", r"\.layers\b"]
ALLOWED_IMPORTS = {"from transformers.utils import ModelOutput"}  # a public base class (ZeRO-3 finds its tensors)


def _code(path: Path) -> str:
    """The module without comments and string literals (docstrings may name the internals)."""
    kept = [t for t in tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
            if t.type not in (tokenize.COMMENT, tokenize.STRING)]
    return tokenize.untokenize(kept)


@pytest.mark.parametrize("name", THROUGH_THINKER_IO)
def test_no_transformers_internals_outside_thinker_io(name):
    path = MODEL_DIR / name
    code = _code(path)
    hits = [p for p in INTERNALS if re.search(p, code)]
    assert hits == [], f"{name} reaches into transformers ({hits}): go through model/thinker_io.py"
    lines = path.read_text().splitlines()
    imports = {line.strip() for line in lines if re.match(r"\s*(from|import) transformers", line)}
    assert imports <= ALLOWED_IMPORTS, f"{name} imports transformers: {imports - ALLOWED_IMPORTS}"


def test_the_scan_bites_on_the_old_hub():
    """The pre-split affect_model.py touched every internal this test names."""
    old = "lm = self.core.model.language_model\nreturn DynamicCache()\nx = self.core.lm_head(h)\n"
    assert sum(bool(re.search(p, old)) for p in INTERNALS) >= 4
