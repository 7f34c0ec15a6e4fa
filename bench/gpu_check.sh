#!/usr/bin/env bash
# The day a GPU is lent: everything the CPU could not measure, in one run of under 10 minutes on one H100/H200.
#
#   bash bench/gpu_check.sh            (from a clone with requirements.txt installed; OUT=dir to keep the JSON)
#
# 1. bench/train_7b.py --layers 2: the 7B-shaped model (real widths, 2 decoder layers), paper budget, bf16
# 2. bench/train_7b.py: the full-depth random 7B thinker, same step (SDPA; flash-attn too if a wheel installs)
# 3. the planner's predicted peak beside each measured peak (printed by train_7b.py)
# 4. bench/step_overhead.py --7b-shapes: AffectVerse / LoRA-only step time and saved activations at 7B
# then one table. On a machine without CUDA it prints "no GPU" and exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no GPU (no CUDA device visible to torch via $PY); nothing measured"
    exit 0
fi
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
"$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'gpu_check: {p.name}, {p.total_memory / 2**30:.0f} GiB')"

# flash-attn only from a prebuilt wheel (a source build takes longer than this whole check)
if ! "$PY" -c "import flash_attn" 2>/dev/null; then
    timeout 120 "$PY" -m pip install -q --only-binary=:all: flash-attn >"$OUT/flash_attn_install.txt" 2>&1 \
        && echo "gpu_check: flash-attn installed from a wheel" \
        || echo "gpu_check: no flash-attn wheel for this torch/CUDA; SDPA only (see $OUT/flash_attn_install.txt)"
fi

status=0
run() {  # name, timeout seconds, command...
    local name=$1 limit=$2
    shift 2
    echo "gpu_check: $name ..."
    if ! timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1; then
        echo "gpu_check: $name FAILED (exit $?); last lines:"
        tail -n 15 "$OUT/$name.txt"
        status=1
    fi
}
run shaped_7b 150 "$PY" bench/train_7b.py --layers 2 --steps 3 --warmup 1 --json "$OUT/shaped_7b.json"
run full_7b 240 "$PY" bench/train_7b.py --steps 3 --warmup 1 --json "$OUT/full_7b.json"
run step_overhead 150 "$PY" bench/step_overhead.py --config launch/configs/affectverse_7b.yaml --7b-shapes \
    --steps 3 --warmup 1 --seconds 7.5 --json "$OUT/step_overhead.json"

"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"\n{'run':<26}{'attn':<20}{'tokens/s':>10}{'MFU':>8}{'peak GiB':>10}{'planner GiB':>13}{'step s':>9}")
for name in ("shaped_7b", "full_7b"):
    path = out / f"{name}.json"
    for r in json.loads(path.read_text()) if path.is_file() else []:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "n/a"
        print(f"{name + ' (' + str(r['layers']) + ' layers)':<26}{r['attn']:<20}{r['tokens_per_s']:>10.0f}{mfu:>8}"
              f"{r['peak_gb']:>10.1f}{r['predicted_gb']:>13.1f}{r['step_s']:>9.3f}")
path = out / "step_overhead.json"
if path.is_file():
    r = json.loads(path.read_text())
    print(f"\nAffectVerse / LoRA-only at 7B shapes: step time {r['step_time_ratio']}x "
          f"(target <= 1.2x), saved activations {r['saved_activation_ratio']}x, "
          f"peak memory {r.get('peak_memory_ratio', 'n/a')}x")
print(f"\nraw outputs: {out}")
EOF
exit $status
