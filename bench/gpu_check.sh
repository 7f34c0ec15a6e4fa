#!/usr/bin/env bash
# The lent GPU in one device call (at most ~9 min): the kit installed, then four phases, each under its own
# `timeout -k`, each writing its rows to $OUT/summary.json the moment it has them (logs: $OUT/<phase>.log).
#
#   here, once:   bash bench/gpu/build_kit.sh && .venv/bin/python bench/gpu/make_kit_data.py   (fills .gpukit/)
#   on the GPU:   bash bench/gpu_check.sh             (carry .gpukit; OUT=dir keeps the results)
#   rehearsal:    bash bench/gpu/rehearse.sh          (here, on the CPU: every phase, tiny backbone, gloo)
#
# (a) env: the wheels of .gpukit/whl installed with the device README's no-index command into $KIT_SITE,
#     first on PYTHONPATH; every version printed; the kit's versions checked; every package module imported;
#     the bf16 matmul peak measured. (b) train: `deepspeed --num_gpus 1 launch/train.py` on NCCL, bf16 ZeRO-2,
#     the 2-layer 7B-shaped backbone written there, the carried shards: 2 steps (accumulation 2), a checkpoint,
#     `--resume auto` to step 4, the export. (c) bench/train_7b.py: the full-depth random 7B step with SDPA at
#     the paper's budget (micro 4 x ~1024 tokens, LoRA dropout 0.05): peak allocated/reserved against the
#     planner, tokens/s, MFU against the datasheet and the measured peak, which SDPA kernel ran (math refused).
#     (d) bench/step_overhead.py --7b-shapes: AffectVerse / LoRA-only step time at 7B shapes.
# Exit: 0 when every phase passed, or when torch sees no CUDA device (said so, nothing measured);
# non-zero with the reason on anything else (a missing kit, an import error, a failed phase).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
KIT=${KIT:-.gpukit}
SITE=${KIT_SITE:-/tmp/site}
WORK=${WORK:-$(mktemp -d)}
REHEARSAL=${REHEARSAL:-0}
export KIT
mkdir -p "$OUT" "$WORK"
scale=1 flag=()
if [ "$REHEARSAL" = 1 ]; then scale=5 flag=(--rehearsal); export OMP_NUM_THREADS=1; fi

summary() { "$PY" bench/gpu/phases.py summary --out "$OUT"; }
die() { echo "gpu_check: FAILED: $*" >&2; summary; exit 1; }

command -v "$PY" >/dev/null || die "no $PY on PATH"
ls "$KIT"/whl/*.whl >/dev/null 2>&1 || die "no wheels in $KIT/whl: run bash bench/gpu/build_kit.sh here and carry $KIT"
[ -f "$KIT/shards/sizes.json" ] || die "no shards in $KIT/shards: run bench/gpu/make_kit_data.py here"
echo "gpu_check: installing $(ls "$KIT"/whl/*.whl | wc -l) wheels into $SITE"
timeout -k 5 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$KIT"/whl/*.whl >"$OUT/a_env.log" 2>&1 || die "kit install: $(tail -n 3 "$OUT/a_env.log")"
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH"

status=0
phase() {  # name limit_s command...: output appended to $OUT/name.log as it comes, the exit code kept
    local name=$1 limit=$(( $2 * scale ))
    shift 2
    echo "gpu_check: $name (limit ${limit} s) ..."
    local t0=$SECONDS
    timeout -k 10 "$limit" "$@" >>"$OUT/$name.log" 2>&1
    local rc=$?
    echo "gpu_check: $name exit $rc after $(( SECONDS - t0 )) s"
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && echo "gpu_check: $name ran past its ${limit} s limit"
    if [ $rc -ne 0 ]; then tail -n 20 "$OUT/$name.log"; fi
    return $rc
}

phase a_env 60 "$PY" bench/gpu/phases.py env --out "$OUT" "${flag[@]}"
rc=$?
if [ $rc -eq 3 ]; then summary; echo "gpu_check: no CUDA device visible to torch via $PY; nothing measured"; exit 0; fi
[ $rc -eq 0 ] || die "environment phase (exit $rc): see a_env.log"

if [ "$REHEARSAL" = 1 ]; then
    c_args=(--cpu --config launch/configs/tiny.yaml --batch 2 --seconds 2 --steps 2 --warmup 1
            "backbone.arch_config=$WORK/backbone/config.json")
    d_args=(--config launch/configs/tiny.yaml --steps 2 --warmup 1 --seconds 2 --no-plain)
else
    c_args=(--steps 3 --warmup 1)
    d_args=(--config launch/configs/affectverse_7b.yaml --7b-shapes --steps 3 --warmup 1 --seconds 7.5 --no-plain)
fi
phase b_train 220 "$PY" bench/gpu/phases.py train --out "$OUT" --work "$WORK" "${flag[@]}" || status=1
phase c_step_7b 130 "$PY" bench/train_7b.py --summary "$OUT" "${c_args[@]}" || status=1
phase d_overhead 100 "$PY" bench/step_overhead.py --summary "$OUT" "${d_args[@]}" || status=1
summary
[ $status -eq 0 ] && echo "gpu_check: every phase passed" || echo "gpu_check: a phase FAILED (see above)" >&2
exit $status
