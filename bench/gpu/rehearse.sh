#!/usr/bin/env bash
# The GPU kit rehearsed here, on the CPU, before any device minute is spent:
#   a venv that mirrors the lent machine (bench/gpu/image_mirror.txt: transformers 5.17, none of what the kit
#   carries), the kit built for its Python and installed with the very command the device runs, then
#   bench/gpu_check.sh with REHEARSAL=1 (every phase, tiny backbone, gloo) writing the same summary.json.
#
#   bash bench/gpu/rehearse.sh [OUT_DIR]
#
# What it cannot show: CUDA, NCCL, the cp312 wheels (no Python 3.12 build of torch reaches this machine, so the
# mirror is Python 3.11 with the kit rebuilt for it: the same names and versions) and torch 2.11.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-$(mktemp -d)}
MIRROR=${MIRROR:-/tmp/affectverse_gpu_mirror}
if [ ! -x "$MIRROR/bin/python" ]; then
    python3.11 -m venv "$MIRROR"
    "$MIRROR/bin/pip" install -q --upgrade pip
    "$MIRROR/bin/pip" install -q torch==2.13.0
    PIP_CONSTRAINT= "$MIRROR/bin/pip" install -q -r bench/gpu/image_mirror.txt
    # typer pulls pydantic here; the image's typer does not, and the image has none of these
    "$MIRROR/bin/pip" uninstall -q -y pydantic pydantic_core annotated-types typing-inspection
fi
for absent in deepspeed webdataset soundfile hjson pydantic av; do  # what the lent machine lacks must be absent
    if "$MIRROR/bin/python" -c "import $absent" 2>/dev/null; then
        echo "rehearse: $absent is in $MIRROR: it does not mirror the lent machine" >&2
        exit 1
    fi
done
KIT_DIR=.gpukit-py311 KIT_PYTHON_VERSION=3.11 bash bench/gpu/build_kit.sh
rm -rf .gpukit-py311/shards
[ -f .gpukit/shards/sizes.json ] || .venv/bin/python bench/gpu/make_kit_data.py
cp -r .gpukit/shards .gpukit-py311/shards
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
time env -u PYTHONPATH REHEARSAL=1 PYTHON="$MIRROR/bin/python" KIT=.gpukit-py311 KIT_SITE="$site" OUT="$OUT" \
    bash bench/gpu_check.sh
echo "rehearse: results in $OUT"
